/*
 * f() and g() sleep the ticks they are given (0: not at all). Key 1: f()'s
 * version, key 2: g()'s, each recorded when the function returns.
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long f(long nap)
{
	if (nap)
		lpemu_sleep(nap);
	lpemu_observe(1, 0 + zero);
	return 0;
}

__attribute__((noinline)) long g(long nap)
{
	if (nap)
		lpemu_sleep(nap);
	lpemu_observe(2, 0 + zero);
	return 0;
}

long user_entry(long f_nap, long g_nap)
{
	f(f_nap);
	g(g_nap);
	lpemu_sleep(10);
	return 0;
}
