/*
 * The seed's bug with a long kernel loop instead of a sleep between bar()
 * and baz(): something_else() works in steps and calls cond_resched()
 * (lpemu_yield) between them. The task is alone on its CPU, so in a run
 * without the patch it never leaves the CPU there; it sleeps only in
 * think(), outside foo(). A transition's stopper thread or kworker waiting
 * for the CPU takes it at one of those cond_resched() calls, with bar()'s
 * old count in hand and baz() not yet called.
 */
#include "lpemu.h"

volatile long zero;
long total;

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

__attribute__((noinline)) long step(long n)
{
	long i, s = 0;

	for (i = 0; i < n; i++)
		s += i ^ zero;
	return s;
}

__attribute__((noinline)) void something_else(void)
{
	long k;

	for (k = 0; k < 40; k++) {
		total += step(40);
		lpemu_yield();
	}
}

__attribute__((noinline)) long foo(void)
{
	long f = bar();

	something_else();
	return baz(f);
}

__attribute__((noinline)) void think(void)
{
	lpemu_sleep(2);
}

static long requests;

/* Every `every`-th request takes the long path through foo(); the others
 * call bar() and baz() back to back. */
long user_entry(long every)
{
	if (++requests % every == 0)
		foo();
	else
		baz(bar());
	think();
	return 0;
}
