/*
 * The seed's bug behind a rare path: handle() { f = bar(); maybe flush_log();
 * baz(f); } where only one request in 37 flushes the log (and sleeps there).
 * The patch makes bar() return thousandths and patches baz() to expect them.
 * A task that called the old bar() and sleeps in flush_log() must not get
 * the new baz(); on every other request nothing sleeps between the two.
 * Each task counts its own requests from its own phase (its second
 * argument), so the tasks flush at different times.
 */
#include "lpemu.h"

#define FLUSH_EVERY 37

volatile long zero;          /* keeps gcc from treating bar() as const */
long total;
static long requests[16];
static long started[16];

__attribute__((noinline)) long bar(void)
{
	return 5 + zero;             /* a count */
}

__attribute__((noinline)) void flush_log(void)
{
	lpemu_sleep(2);
}

__attribute__((noinline)) long baz(long f)
{
	lpemu_observe(1, f);         /* key 1: the old baz received f */
	total += f;
	return 0;
}

__attribute__((noinline)) long handle(long i)
{
	long f = bar();
	if (++requests[i & 15] % FLUSH_EVERY == 0)
		flush_log();
	return baz(f);
}

__attribute__((noinline)) void think(void)
{
	lpemu_sleep(1);
}

/* A user task: a request, then a pause. */
long user_entry(long i, long phase)
{
	if (!started[i & 15]) {
		started[i & 15] = 1;
		requests[i & 15] = phase;
	}
	handle(i);
	think();
	return 0;
}

/* A kthread: a request, a safe point, a nap. */
long kthread_entry(long i, long phase)
{
	requests[i & 15] = phase;
	for (;;) {
		handle(i);
		lpemu_safe_point();
		lpemu_yield();
		think();
	}
}
