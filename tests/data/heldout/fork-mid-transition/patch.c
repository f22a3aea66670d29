#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long probe(void)
{
	lpemu_observe(1, 1 + zero);
	return 1;
}

__attribute__((noinline)) long nap(long ticks)
{
	lpemu_sleep(ticks);
	return 1;
}
