/*
 * Tasks that sleep inside a patched function. wait_io() is patched; a user
 * task sleeps in it for 50 s at a time (interruptibly), a kthread loops in
 * poll_loop() (patched) sleeping 0.2 s at a time and never leaves it.
 * Key 1: version of wait_io(), key 2: version of poll_loop().
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long wait_io(long ticks)
{
	long left = lpemu_sleep(ticks);

	lpemu_observe(1, 0 + zero);
	return left;
}

__attribute__((noinline)) long poll_loop(long ticks)
{
	for (;;) {
		lpemu_observe(2, 0 + zero);
		lpemu_sleep(ticks);
	}
	return 0;
}

long user_entry(long ticks)
{
	wait_io(ticks);
	return 0;
}

long kthread_entry(long ticks)
{
	return poll_loop(ticks);
}
