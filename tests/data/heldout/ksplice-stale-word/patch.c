#include "lpemu.h"

extern volatile long zero;
extern long leaf(long x);

__attribute__((noinline)) long g(long x)
{
	long r = leaf(x) + 1;

	lpemu_observe(1, 1 + zero);
	return r;
}
