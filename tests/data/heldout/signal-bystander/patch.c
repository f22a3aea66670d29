#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long wait_io(long ticks)
{
	long left = lpemu_sleep(ticks);

	lpemu_observe(1, 1 + zero);
	lpemu_observe(3, left);
	return left;
}
