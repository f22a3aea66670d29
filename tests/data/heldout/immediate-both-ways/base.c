/*
 * One system call that runs two patched functions: nap() sleeps 1 s, then
 * user_entry() (not patched) calls tally(). Key 1: nap()'s version; key 2:
 * tally()'s version (the same system call).
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
	return left;
}

long user_entry(long ticks)
{
	tally(nap(ticks));
	return 0;
}
