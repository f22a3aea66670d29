#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long wait_io(long ticks)
{
	long left = lpemu_sleep_uninterruptible(ticks);

	lpemu_observe(1, 1 + zero);
	lpemu_observe(3, left);
	return left;
}

__attribute__((noinline)) long poll_once(long ticks)
{
	long left = lpemu_sleep_uninterruptible(ticks);

	lpemu_observe(2, 1 + zero);
	lpemu_observe(4, left);
	return left;
}
