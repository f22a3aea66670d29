/* Atomic replace drops functions a task is asleep in. f() makes a value and
 * may sleep before returning it; g() consumes it. p1 changes both (the value
 * in a new form, >= 1000); p2 (replace) carries only k(): f() and g() get
 * nops, back to the originals. Key 1: what g() received (the original
 * accepts < 1000, p1's >= 1000); key 2: k()'s version. */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long f(long nap)
{
	long v = 7 + zero;

	if (nap)
		lpemu_sleep(nap);
	return v;
}

__attribute__((noinline)) long g(long v) { lpemu_observe(1, v); return 0; }
__attribute__((noinline)) long k(void) { lpemu_observe(2, 0 + zero); return 0; }

long user_entry(long nap)
{
	g(f(nap));
	k();
	lpemu_sleep(nap ? nap : 3);
	return 0;
}
