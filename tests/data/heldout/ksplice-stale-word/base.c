/*
 * A stale return address. Each system call runs g(), whose call of leaf()
 * leaves a return address into g() on the stack, then sleeps in nap(),
 * whose frame covers that word without writing it: pad[] is written only
 * after the sleep. g() is long gone from the call chain while the task
 * sleeps; its address is still a word of the live stack.
 * Key 1: g()'s version; key 3: what nap() read from its pad.
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long leaf(long x)
{
	return x + zero;
}

__attribute__((noinline)) long g(long x)
{
	long r = leaf(x) + 1;

	lpemu_observe(1, 0 + zero);
	return r;
}

__attribute__((noinline)) long nap(long ticks)
{
	volatile long pad[8];

	lpemu_sleep(ticks);
	pad[0] = ticks;
	lpemu_observe(3, pad[0]);
	return pad[0];
}

long user_entry(long ticks)
{
	g(ticks);
	nap(ticks);
	return 0;
}
