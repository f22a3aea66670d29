/*
 * The seed of livepatch-emu (a 2014 kernel-list discussion between the kpatch
 * and kGraft authors): foo() { f = bar(); something_else(); baz(f); }.
 * This is the whole file after the patch: bar() returns its count in
 * thousandths and baz() expects them; foo() is the same.
 */
#include "lpemu.h"

volatile long zero;          /* keeps gcc from treating bar() as const */
long total;
static long calls[16];

__attribute__((noinline)) long bar(void)
{
	return 5000 + zero;          /* now in thousandths */
}

__attribute__((noinline)) void something_else(void)
{
	lpemu_sleep(2);
}

__attribute__((noinline)) long baz(long f)
{
	lpemu_observe(2, f);         /* key 2: the new baz received f (thousandths) */
	total += f / 1000;
	return 0;
}

__attribute__((noinline)) long foo(void)
{
	long f = bar();
	something_else();
	return baz(f);
}

__attribute__((noinline)) void think(void)
{
	lpemu_sleep(3);
}

/* A user task: every other system call goes through foo(). */
long user_entry(long i)
{
	if (calls[i & 15]++ & 1) {
		think();
		return 0;
	}
	return foo();
}

/* A kthread: foo(), a safe point, a nap. */
long kthread_entry(long i)
{
	for (;;) {
		foo();
		lpemu_safe_point();
		lpemu_yield();
		think();
	}
}
