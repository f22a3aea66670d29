/* An atomic replace reversed mid-transition. Key 1: f()'s version, key 2:
 * g()'s. g() may sleep (the sleeper's does, for 3 s). */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long f(void) { lpemu_observe(1, 0 + zero); return 0; }

__attribute__((noinline)) long g(long nap)
{
	if (nap)
		lpemu_sleep(nap);
	lpemu_observe(2, 0 + zero);
	return 0;
}

long user_entry(long nap)
{
	f();
	g(nap);
	lpemu_sleep(nap ? 50 : 2);
	return 0;
}
