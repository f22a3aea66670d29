/*
 * A kthread sleeps 2 s at a time inside the patched io_wait(); two user
 * tasks call the patched account() every system call. Key 1: version of
 * account(); key 2: version of io_wait().
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long account(long x)
{
	lpemu_observe(1, 0 + zero);
	return x;
}

__attribute__((noinline)) long io_wait(long t)
{
	lpemu_observe(2, 0 + zero);
	return lpemu_sleep(t);
}

long user_entry(long x)
{
	account(x);
	lpemu_sleep(3);
	return 0;
}

long kthread_entry(long t)
{
	for (;;) {
		io_wait(t);
		lpemu_safe_point();
	}
}
