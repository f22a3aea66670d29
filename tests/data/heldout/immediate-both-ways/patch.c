#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long tally(long n)
{
	lpemu_observe(2, 1 + zero);
	return n + zero;
}

__attribute__((noinline)) long nap(long ticks)
{
	long left = lpemu_sleep(ticks);

	lpemu_observe(1, 1 + zero);
	return left;
}
