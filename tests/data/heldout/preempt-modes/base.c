/*
 * A kthread: a long patched crunch() (no scheduling point inside), then
 * cond_resched() outside it. One CPU, so kernel work must take the
 * kthread's CPU. Key 1: crunch()'s version.
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
