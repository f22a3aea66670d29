#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long nap(long ticks)
{
	long left = lpemu_sleep(ticks);

	lpemu_observe(1, 1 + zero);
	return left;
}
