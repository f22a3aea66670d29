#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long f(long nap)
{
	long v = 1007 + zero;

	if (nap)
		lpemu_sleep(nap);
	return v;
}
__attribute__((noinline)) long g(long v) { lpemu_observe(1, v); return 0; }
