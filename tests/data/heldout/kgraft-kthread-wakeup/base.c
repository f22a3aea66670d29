/*
 * A kthread that calls the patched scan(), then sleeps 30 s, then passes a
 * safe point (try_to_freeze()). Key 1: scan()'s version; key 2: the ticks
 * its sleep had left when it ended (0: it slept the whole 30 s).
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

long napper(long t)
{
	for (;;) {
		scan(10);
		lpemu_observe(2, lpemu_sleep(t));
		lpemu_safe_point();
	}
}
