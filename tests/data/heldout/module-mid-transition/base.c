/*
 * Base code reaches a module the kernel's way: the module's init registers
 * mod_fn into mod_ops, base code calls through it. slow() is patched too.
 * - fast users: each system call observes key 1 = call_ops(id);
 * - the waiter: each system call sleeps 0.5 s inside slow(), then
 *   observes key 2 = call_ops(100), then returns to user; key 3 = slow()'s
 *   version.
 * call_ops() gives -1 while no module is registered; mod_fn(x) gives
 * (x + 1) * 10 in the module's original, (x + 1) * 10 + 5 in the patch.
 */
#include "lpemu.h"

volatile long zero;
long (*mod_ops)(long);

__attribute__((noinline)) long helper(long x) { return x + 1; }

__attribute__((noinline)) long call_ops(long x)
{
	long (*f)(long) = mod_ops;

	return f ? f(x) : -1;
}

__attribute__((noinline)) long slow(long t)
{
	lpemu_observe(3, 0 + zero);
	lpemu_sleep(t);
	return t;
}

long fast_user(long id)
{
	lpemu_observe(1, call_ops(id));
	lpemu_sleep(2);
	return 0;
}

long waiter(long t)
{
	slow(t);
	lpemu_observe(2, call_ops(100));
	return 0;
}
