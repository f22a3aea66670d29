/*
 * A lock protocol change: the patch moves the lock word (lock_a -> lock_b)
 * in both take() and drop(). critical() takes, sleeps, drops; a task that
 * takes with one version and drops with the other leaves a word unbalanced.
 * Key 1: the balance take() saw (0: free, else the lock is held twice).
 */
#include "lpemu.h"

long lock_a, lock_b;

__attribute__((noinline)) void take(void)
{
	lpemu_observe(1, lock_a);
	lock_a++;
}

__attribute__((noinline)) void drop(void)
{
	lock_a--;
}

__attribute__((noinline)) void critical(long t)
{
	take();
	lpemu_sleep(t);
	drop();
}

long user_entry(long t)
{
	critical(t);
	lpemu_sleep(1);
	return 0;
}
