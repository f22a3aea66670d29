/*
 * Two user tasks sleep 20 s inside f() on every system call.
 * Key 1: f()'s version.
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long f(long nap)
{
	lpemu_observe(1, 0 + zero);
	lpemu_sleep(nap);
	return 0;
}

long user_entry(long nap)
{
	f(nap);
	return 0;
}
