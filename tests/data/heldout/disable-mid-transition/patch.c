#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long account(long x)
{
	lpemu_observe(1, 1 + zero);
	return x;
}

__attribute__((noinline)) long io_wait(long t)
{
	lpemu_observe(2, 1 + zero);
	return lpemu_sleep(t);
}
