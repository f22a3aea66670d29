#include "lpemu.h"

extern volatile long zero;
long helper(long);

__attribute__((noinline)) long mod_fn(long x)
{
	return helper(x) * 10 + 5;
}

__attribute__((noinline)) long slow(long t)
{
	lpemu_observe(3, 1 + zero);
	lpemu_sleep(t);
	return t;
}
