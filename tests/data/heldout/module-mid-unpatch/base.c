/*
 * A driver interface a module fills in (drv_ops, as an ops table), and a
 * patched base function slow() in which the waiter sleeps half its time.
 * - clients: each system call observes key 1 = call_ops(id) (-1 while no
 *   module is registered);
 * - the waiter: 1.5 s asleep in slow() (key 3: slow()'s version), then
 *   1.5 s asleep in waiter() itself, then back to user.
 */
#include "lpemu.h"

volatile long zero;
long (*drv_ops)(long);

__attribute__((noinline)) long call_ops(long x)
{
	long (*f)(long) = drv_ops;

	return f ? f(x) : -1;
}

__attribute__((noinline)) long slow(long t)
{
	lpemu_observe(3, 0 + zero);
	lpemu_sleep(t);
	return t;
}

long client(long id)
{
	lpemu_observe(1, call_ops(id));
	lpemu_sleep(2);
	return 0;
}

long waiter(long t)
{
	slow(t);
	lpemu_sleep(t);
	return 0;
}
