/*
 * The middle sleep two calls deep: foo() { f = bar(); maybe commit(); baz(f); }
 * with commit() -> write_journal() -> wait_disk() sleeping, on one request
 * in 45 of each task. The state a transition meets there is a deeper stack:
 * user_entry > foo > commit > write_journal > wait_disk.
 */
#include "lpemu.h"

volatile long zero;
long total;
static long seen[8];

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

__attribute__((noinline)) void wait_disk(void)
{
	lpemu_sleep(2);
}

__attribute__((noinline)) void write_journal(long n)
{
	total += zero * n;
	wait_disk();
	total += zero;
}

__attribute__((noinline)) void commit(long n)
{
	write_journal(n);
	total += zero;
}

__attribute__((noinline)) long foo(long i)
{
	long f = bar();
	long n = ++seen[i & 7];
	if (n % 45 == 0)
		commit(n);
	return baz(f);
}

long user_entry(long i, long phase)
{
	if (seen[i & 7] == 0)
		seen[i & 7] = phase;
	foo(i);
	lpemu_sleep(1);
	return 0;
}
