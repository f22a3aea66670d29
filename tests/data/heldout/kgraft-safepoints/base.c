/*
 * Two kthreads loop over the patched scan() and sleep outside it: one
 * passes a safe point (try_to_freeze()) every round, the other never does;
 * a third sleeps freezably (wait_event_freezable()). Key 1: scan()'s
 * version, observed by every task.
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long scan(long n)
{
	long i, s = 0;

	for (i = 0; i < n; i++)
		s += i ^ zero;
	lpemu_observe(1, 0 + zero);
	return s;
}

long safe_kthread(long t)
{
	for (;;) {
		scan(10);
		lpemu_sleep(t);
		lpemu_safe_point();
	}
}

long plain_kthread(long t)
{
	for (;;) {
		scan(10);
		lpemu_sleep(t);
	}
}

long freezable_kthread(long t)
{
	for (;;) {
		scan(10);
		lpemu_sleep_freezable(t);
	}
}
