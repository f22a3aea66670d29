/*
 * A task that sleeps for a long time inside a patched function.
 *
 * slow(ticks) is the function the patch replaces. The sleeper calls it with
 * a long sleep (its task argument, in ticks: 500 = 5 s at the default 100
 * ticks a second); the callers call it with a one-tick sleep and come back
 * out at once. While the sleeper is inside the old slow(), stop_machine's
 * activeness check fails and livepatch cannot switch it; kGraft and
 * livepatch switch it when it returns to user space.
 */
#include "lpemu.h"

volatile long zero;          /* keeps gcc from treating slow() as pure */

__attribute__((noinline)) long slow(long ticks)
{
	lpemu_observe(1, 0 + zero);          /* key 1: the version of slow() that ran (0: the original) */
	return lpemu_sleep(ticks);           /* the ticks left: more than 0 when a signal cut the sleep short */
}

__attribute__((noinline)) void think(void)
{
	lpemu_sleep(3);
}

/* The sleeper: every system call sleeps `ticks` ticks inside slow(). */
long sleeper_entry(long ticks)
{
	lpemu_observe(3, slow(ticks));       /* key 3: ticks left when slow() returned */
	return 0;
}

/* A caller: a brief slow(), then a nap outside it. */
long caller_entry(long i)
{
	slow(1);
	think();
	return 0;
}
