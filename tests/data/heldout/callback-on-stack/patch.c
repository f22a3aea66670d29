#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long handler(long x)
{
	lpemu_observe(1, 1 + zero);
	return x + zero;
}
