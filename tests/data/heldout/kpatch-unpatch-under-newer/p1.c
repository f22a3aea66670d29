#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long f(long t)
{
	lpemu_observe(1, 1 + zero);
	if (t)
		lpemu_sleep(t);
	return 0;
}
