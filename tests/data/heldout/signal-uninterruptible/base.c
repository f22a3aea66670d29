/*
 * Two tasks asleep UNINTERRUPTIBLY inside patched functions for 50 s at a
 * time (fake-signals' base.c with TASK_UNINTERRUPTIBLE sleeps): a user
 * task in wait_io(), a kthread in poll_once(). The kthread sleeps 2 s (200 ticks)
 * between two polls, outside any patched function, after a kthread safe
 * point (kGraft's; the end of its consistency unit).
 * Key 1: version of wait_io(); key 2: version of poll_once();
 * key 3: ticks the user task's sleep had left when it ended (0: the whole
 * sleep passed); key 4: the same for the kthread's sleep in poll_once().
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long wait_io(long ticks)
{
	long left = lpemu_sleep_uninterruptible(ticks);

	lpemu_observe(1, 0 + zero);
	lpemu_observe(3, left);
	return left;
}

__attribute__((noinline)) long poll_once(long ticks)
{
	long left = lpemu_sleep_uninterruptible(ticks);

	lpemu_observe(2, 0 + zero);
	lpemu_observe(4, left);
	return left;
}

long user_entry(long ticks)
{
	wait_io(ticks);
	return 0;
}

long kthread_entry(long ticks)
{
	for (;;) {
		poll_once(ticks);
		lpemu_safe_point();	/* ends its unit; no switch point upstream */
		lpemu_sleep(200);
	}
	return 0;
}
