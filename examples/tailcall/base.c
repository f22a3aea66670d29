/*
 * The seed's question in another shape. handler() { v = compute();
 * wait_a_bit(); return finish(v); }: at -O2 the call of finish() is a tail
 * call (a jmp: handler()'s frame is gone when finish() runs). The patch
 * makes compute() return microseconds instead of milliseconds and patches
 * finish() to expect them; handler() is left out. A task that got v from the
 * old compute() and sleeps in wait_a_bit() must not get the new finish().
 */
#include "lpemu.h"

volatile long zero;          /* keeps gcc from treating compute() as const */
long elapsed_ms;
static long calls[16];

__attribute__((noinline)) long compute(void)
{
	return 7 + zero;                     /* milliseconds */
}

__attribute__((noinline)) void wait_a_bit(void)
{
	lpemu_sleep(2);
}

__attribute__((noinline)) long finish(long v)
{
	lpemu_observe(1, v);                 /* key 1: the old finish() got v (milliseconds) */
	elapsed_ms += v;
	return v;
}

__attribute__((noinline)) long handler(void)
{
	long v = compute();
	wait_a_bit();
	return finish(v);                    /* a tail call at -O2 */
}

__attribute__((noinline)) void idle_a_bit(void)
{
	lpemu_sleep(3);
}

/* A user task: every other system call goes through handler(). */
long user_entry(long i)
{
	if (calls[i & 15]++ & 1) {
		idle_a_bit();
		return 0;
	}
	return handler();
}

/* A kthread: handler(), a safe point, cond_resched, a nap. */
long kthread_entry(long i)
{
	for (;;) {
		handler();
		lpemu_safe_point();
		lpemu_yield();
		idle_a_bit();
	}
}
