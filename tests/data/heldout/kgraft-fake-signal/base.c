/*
 * A user task asleep (interruptibly) for 10 s inside the patched nap(),
 * which then calls the patched tally(): one system call that runs both.
 * Key 1: nap()'s version; key 2: tally()'s version (the same system call);
 * key 3: the ticks nap()'s sleep had left when it ended (0: the whole 10 s).
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long tally(long n)
{
	lpemu_observe(2, 0 + zero);
	return n + zero;
}

__attribute__((noinline)) long nap(long ticks)
{
	long left = lpemu_sleep(ticks);

	lpemu_observe(1, 0 + zero);
	lpemu_observe(3, left);
	return tally(left);
}

long user_entry(long ticks)
{
	nap(ticks);
	return 0;
}
