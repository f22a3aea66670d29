/*
 * Two user tasks asleep (interruptibly) in their system calls for 25 s at
 * a time: "blocker" inside the patched wait_io(), "bystander" inside nap(),
 * which no patch touches.
 * Key 1: version of wait_io(); key 3: ticks the blocker's sleep had left
 * when it ended (0: the whole sleep passed); key 5: the same for the
 * bystander's sleep.
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long wait_io(long ticks)
{
	long left = lpemu_sleep(ticks);

	lpemu_observe(1, 0 + zero);
	lpemu_observe(3, left);
	return left;
}

__attribute__((noinline)) long nap(long ticks)
{
	long left = lpemu_sleep(ticks);

	lpemu_observe(5, left);
	return left;
}

long blocker_entry(long ticks)
{
	wait_io(ticks);
	return 0;
}

long bystander_entry(long ticks)
{
	nap(ticks);
	return 0;
}
