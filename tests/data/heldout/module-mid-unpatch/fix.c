/* The patch: slow() and the module's drv_fn(), version 1 of both. */
#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long slow(long t)
{
	lpemu_observe(3, 1 + zero);
	lpemu_sleep(t);
	return t;
}

__attribute__((noinline)) long drv_fn(long x)
{
	lpemu_observe(2, 1);
	return x + 1;
}
