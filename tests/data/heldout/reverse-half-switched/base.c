/*
 * A transition reversed when one task has switched and one has not.
 * nap() is patched; both user tasks sleep inside it, "early" 0.8 s per
 * system call, "late" 5 s. Key 1: version of nap().
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long nap(long ticks)
{
	long left = lpemu_sleep(ticks);

	lpemu_observe(1, 0 + zero);
	return left;
}

long user_entry(long ticks)
{
	nap(ticks);
	return 0;
}
