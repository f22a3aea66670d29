#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long f(void) { lpemu_observe(1, 1 + zero); return 0; }
__attribute__((noinline)) long g(long nap)
{
	if (nap)
		lpemu_sleep(nap);
	lpemu_observe(2, 1 + zero);
	return 0;
}
