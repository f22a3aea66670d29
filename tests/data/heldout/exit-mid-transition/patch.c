#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long nap(long ticks, long die)
{
	long left = ticks ? lpemu_sleep(ticks) : 0;

	lpemu_observe(1, 1 + zero);
	lpemu_observe(2, left);
	if (die)
		lpemu_exit(1);
	return left;
}
