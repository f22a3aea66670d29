/*
 * f() sleeps the ticks it is given; g() does not sleep. Key 1: f()'s
 * version, key 2: g()'s, each recorded when the function returns.
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long f(long nap)
{
	lpemu_sleep(nap);
	lpemu_observe(1, 0 + zero);
	return 0;
}

__attribute__((noinline)) long g(void)
{
	lpemu_observe(2, 0 + zero);
	return 0;
}

long user_entry(long before, long nap)
{
	lpemu_sleep(before);
	f(nap);
	g();
	return 0;
}
