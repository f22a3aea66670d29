/* The new work(): the same loop, reported as version 1. */
#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long work(long n)
{
	long i, sum = 0;

	for (i = 0; i < n; i++)
		sum += i + zero;
	lpemu_observe(1, 1 + zero);          /* key 1: version 1 ran */
	return sum;
}
