/*
 * A request reads a count with bar() and hands it to baz(); one request in
 * PERIOD (a cflag: 50, 64, 100, 150) first writes a checkpoint, sleeping
 * CKPT ticks (a cflag, 3 unless given) in checkpoint() between the two.
 * The period is counted by one counter all
 * the tasks share, so which task takes the rare path moves from task to
 * task as their requests interleave.
 */
#include "lpemu.h"

#ifndef CKPT
#define CKPT 3
#endif

volatile long zero;
long total;
long served;                   /* every task's requests */

__attribute__((noinline)) long bar(void)
{
	return 7 + zero;           /* a count */
}

__attribute__((noinline)) long baz(long f)
{
	lpemu_observe(1, f);
	total += f;
	return 0;
}

__attribute__((noinline)) void checkpoint(void)
{
	lpemu_sleep(CKPT);
}

__attribute__((noinline)) long serve(void)
{
	long f = bar();
	if (++served % PERIOD == 0)
		checkpoint();
	return baz(f);
}

long user_entry(long skew)
{
	serve();
	lpemu_sleep(1 + skew);
	return 0;
}

long kthread_entry(long skew)
{
	for (;;) {
		serve();
		lpemu_safe_point();
		lpemu_sleep(1 + skew);
	}
}
