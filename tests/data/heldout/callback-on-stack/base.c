/*
 * A task that sleeps with the address of a patched function in a local
 * variable: wait_then_call() keeps its callback, handler(), in a volatile
 * local (a word of its stack frame) while it sleeps 10 s, then calls it.
 * handler() itself is never on the call chain while the task sleeps.
 * Key 1: handler()'s version; key 2: ticks the sleep had left.
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long handler(long x)
{
	lpemu_observe(1, 0 + zero);
	return x + zero;
}

__attribute__((noinline)) long wait_then_call(long (*cb)(long), long ticks)
{
	long (*volatile saved)(long) = cb;
	long left = lpemu_sleep(ticks);

	lpemu_observe(2, left);
	return saved(left);
}

long user_entry(long ticks)
{
	return wait_then_call(handler, ticks);
}
