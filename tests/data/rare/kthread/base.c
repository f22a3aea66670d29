/*
 * The rare path in a kthread: every 50th batch of the writeback kthread
 * waits for the device between bar() and baz() (two functions down:
 * writeback_loop -> do_batch -> wait_device). User tasks call bar() and
 * baz() back to back and never sleep between them.
 */
#include "lpemu.h"

volatile long zero;
long total;
long batches;

__attribute__((noinline)) long bar(void)
{
	return 7 + zero;
}

__attribute__((noinline)) long baz(long f)
{
	lpemu_observe(1, f);
	total += f;
	return 0;
}

__attribute__((noinline)) void wait_device(void)
{
	lpemu_sleep(4);
}

__attribute__((noinline)) void do_batch(void)
{
	long f = bar();
	if (++batches % 50 == 0)
		wait_device();
	baz(f);
}

long writeback_loop(long unused)
{
	for (;;) {
		do_batch();
		lpemu_safe_point();
		lpemu_yield();
		lpemu_sleep(1);
	}
}

long user_entry(long pause)
{
	baz(bar());
	lpemu_sleep(pause);
	return 0;
}
