/*
 * A driver that serializes its device operations with a lock word
 * per device: dev_lock() takes it, dev_unlock() releases it, and dev_ioctl()
 * sleeps (waits for the hardware) while it holds it; each task drives a
 * device of its own, so every unlock finds one holder. The fix splits the
 * lock: configuration now goes under cfg_lock, a new lock of the patch
 * module; dev_lock()/dev_unlock() take and release cfg_lock instead.
 *
 * A task that took the old lock in dev_lock() v0 and wakes up to run
 * dev_unlock() v1 releases a lock it never took (cfg_lock) and leaves
 * dev_lock_word held forever: what a lock that changes in a live patch
 * must never do. Each unlock observes the count of the lock it releases
 * (key 1 old, key 2 new): 1 is right, anything else is an unlock of a
 * lock not held.
 */
#include "lpemu.h"

volatile long zero;
long dev_lock_word[4];            /* the old lock of each device: holders */
long ioctls;

__attribute__((noinline)) void dev_lock(long dev)
{
	dev_lock_word[dev & 3] += 1 + zero;
}

__attribute__((noinline)) void dev_unlock(long dev)
{
	lpemu_observe(1, dev_lock_word[dev & 3]);
	dev_lock_word[dev & 3] -= 1 + zero;
}

__attribute__((noinline)) void wait_hw(void)
{
	lpemu_sleep(2);
}

__attribute__((noinline)) long dev_ioctl(long dev, long cmd)
{
	dev_lock(dev);
	wait_hw();
	ioctls += cmd;
	dev_unlock(dev);
	return 0;
}

long user_entry(long id)
{
	dev_ioctl(id, id + 1);
	lpemu_sleep(1);
	return 0;
}

/* The device's watchdog kthread: the same operation from a freezable loop. */
long watchdog(long id)
{
	for (;;) {
		dev_ioctl(id, 1);
		lpemu_sleep_freezable(3);
	}
}
