/*
 * Two callers of bar() and baz(): foo(), on every request, calls them back
 * to back; audit(), on one request in 60, sleeps between them. The patch
 * carries foo() (its callers stay consistent with it) but not audit().
 */
#include "lpemu.h"

volatile long zero;
long total;
static long reqs[8];

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

__attribute__((noinline)) long foo(void)
{
	return baz(bar()) + zero;
}

__attribute__((noinline)) void log_wait(void)
{
	lpemu_sleep(2);
}

__attribute__((noinline)) long audit(void)
{
	long f = bar();
	log_wait();
	baz(f);
	return zero;
}

long user_entry(long i, long phase)
{
	if (reqs[i & 7] == 0)
		reqs[i & 7] = phase;
	if (++reqs[i & 7] % 60 == 0)
		audit();
	else
		foo();
	lpemu_sleep(1);
	return 0;
}
