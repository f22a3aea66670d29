/*
 * A CPU-bound kthread: it loops calling the patched work() and
 * cond_resched() (lpemu_yield()), never sleeping, never reaching a freezer.
 * Whether upstream livepatch can switch it depends on the kernel version
 * (emu/kernel/versions.py): 6.4 to 6.15 switch it at cond_resched() with a
 * check of its own stack; before 6.4 and from 6.16 cond_resched() is not a
 * switch point, and the periodic check finds it running on its CPU.
 */
#include "lpemu.h"

volatile long zero;          /* keeps gcc from treating work() as pure */
long done;

__attribute__((noinline)) long work(long n)
{
	long i, sum = 0;

	for (i = 0; i < n; i++)
		sum += i + zero;
	lpemu_observe(1, 0 + zero);          /* key 1: the version of work() that ran */
	return sum;
}

/* One round of work: two calls that must see the same work(). */
__attribute__((noinline)) long one_round(long n)
{
	return work(n) + work(n + 1);
}

/* The kthread: a round, cond_resched, again; never a safe point, never a sleep. */
long kthread_entry(long n)
{
	for (;;) {
		done += one_round(n);
		lpemu_yield();
	}
}

/* A user task that does a round now and then. */
long user_entry(long n)
{
	done += one_round(n);
	lpemu_sleep(5);
	return 0;
}
