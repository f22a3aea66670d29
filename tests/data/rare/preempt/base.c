/*
 * No sleep on the rare path: one request in 40 of each task rehashes a
 * table, a few thousand instructions of plain computation between bar()
 * and baz(), inline in handle(). Under full preemption a task is preempted
 * there (its slice ends in the loop); asleep it never is.
 */
#include "lpemu.h"

volatile long zero;
long total;
static long reqs[8];
static long table[64];

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

__attribute__((noinline)) long handle(long i)
{
	long f = bar();
	if (++reqs[i & 7] % 40 == 0) {
		for (long k = 0; k < 600; k++)
			table[k & 63] += k ^ zero;
	}
	return baz(f);
}

long user_entry(long i, long phase)
{
	if (reqs[i & 7] == 0)
		reqs[i & 7] = phase;
	handle(i);
	lpemu_sleep(1);
	return 0;
}
