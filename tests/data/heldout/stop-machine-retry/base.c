/*
 * One user task sleeps 3 s inside the patched flush() on its first system
 * call only; afterwards it never sleeps inside a patched function.
 * Key 1: version of flush().
 */
#include "lpemu.h"

volatile long zero;
long calls;

__attribute__((noinline)) long flush(long first)
{
	if (first)
		lpemu_sleep(300);
	lpemu_observe(1, 0 + zero);
	return 0;
}

long user_entry(long n)
{
	flush(calls++ == 0);
	lpemu_sleep(2);
	return 0;
}
