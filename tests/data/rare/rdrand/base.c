/*
 * The rare path chosen by the machine's randomness: a request re-keys its
 * cache (and sleeps in rekey()) between bar() and baz() when rdrand says
 * so, about one request in 40. The probability is the same for every
 * request; nothing periodic tells when it comes.
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

static unsigned long draw(void)
{
	unsigned long r;
	__asm__ volatile("rdrand %0" : "=r"(r) : : "cc");
	return r;
}

__attribute__((noinline)) void rekey(void)
{
	lpemu_sleep(2);
}

__attribute__((noinline)) long lookup(void)
{
	long f = bar();
	if (draw() % 40 == 0)
		rekey();
	return baz(f);
}

long user_entry(long pause)
{
	lookup();
	lpemu_sleep(pause);
	return 0;
}
