/*
 * f() is patched by p1, then by p2 on top of it. Until the virtual clock
 * reaches LATE, the tasks sleep outside f(); from then on they sleep
 * inside it (in p2's version, by then). Key 1: f()'s version.
 */
#include "lpemu.h"

#define LATE 500000

volatile long zero;

__attribute__((noinline)) long f(long t)
{
	lpemu_observe(1, 0 + zero);
	if (t)
		lpemu_sleep(t);
	return 0;
}

long user_entry(long t)
{
	if (__builtin_ia32_rdtsc() < LATE) {
		f(0);
		lpemu_sleep(t);
	} else {
		f(t);
	}
	return 0;
}
