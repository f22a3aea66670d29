/* The second patch: slow() and the module's drv_fn(), version 2 of both. */
#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long slow(long t)
{
	lpemu_observe(3, 2 + zero);
	lpemu_sleep(t);
	return t;
}

__attribute__((noinline)) long drv_fn(long x)
{
	lpemu_observe(2, 2);
	return x + 1;
}
