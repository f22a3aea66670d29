/*
 * "sleeper" spends almost all of its time asleep inside f(): 3 s in f()
 * each system call, 10 ms outside it. k() is called by every system call.
 * Key 1: f()'s version; key 2: k()'s version.
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long f(long nap)
{
	lpemu_observe(1, 0 + zero);
	lpemu_sleep(nap);
	return 0;
}

__attribute__((noinline)) long k(void)
{
	lpemu_observe(2, 0 + zero);
	return 0;
}

long user_entry(long nap)
{
	k();
	f(nap);
	lpemu_sleep(1);
	return 0;
}
