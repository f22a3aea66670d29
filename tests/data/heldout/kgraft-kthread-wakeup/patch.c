#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long scan(long n)
{
	long i, s = 0;

	for (i = 0; i < n; i++)
		s += i ^ zero;
	lpemu_observe(1, 1 + zero);
	return s;
}
