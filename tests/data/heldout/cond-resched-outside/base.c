/*
 * A CPU-bound kthread whose cond_resched() (lpemu_yield) is outside the
 * patched function: crunch() returns before every cond_resched(). It never
 * sleeps and has no safe point. Key 1: the version of crunch() that ran.
 */
#include "lpemu.h"

volatile long zero;
long total;

__attribute__((noinline)) long crunch(long n)
{
	long i, s = 0;

	for (i = 0; i < n; i++)
		s += i ^ zero;
	lpemu_observe(1, 0 + zero);
	return s;
}

long kthread_entry(long n)
{
	for (;;) {
		total += crunch(n);
		lpemu_yield();
	}
}

/* the same loop with a freezable sleep (wait_event_freezable) instead */
long kthread_freezable(long n)
{
	for (;;) {
		total += crunch(n);
		lpemu_sleep_freezable(1);
	}
}
