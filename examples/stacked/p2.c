/* p2, stacked on p1: a fix in f() that keeps p1's record format. */
#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long f(void)
{
	lpemu_observe(1, 2 + zero);          /* key 1: f() version 2 ran */
	return 2 + zero;
}
