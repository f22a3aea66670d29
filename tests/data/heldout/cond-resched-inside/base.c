/*
 * A CPU-bound kthread whose whole life is inside the patched work_loop():
 * cond_resched() (lpemu_yield) is called from inside it, and it never
 * returns. Key 1: the version of work_loop() the kthread runs.
 */
#include "lpemu.h"

volatile long zero;
long total;

__attribute__((noinline)) long step(long n)
{
	long i, s = 0;

	for (i = 0; i < n; i++)
		s += i ^ zero;
	return s;
}

__attribute__((noinline)) long work_loop(long n)
{
	for (;;) {
		total += step(n);
		lpemu_observe(1, 0 + zero);
		lpemu_yield();
	}
	return 0;
}

long kthread_entry(long n)
{
	return work_loop(n);
}
