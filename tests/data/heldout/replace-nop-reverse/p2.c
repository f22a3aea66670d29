#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long g(long nap)
{
	if (nap)
		lpemu_sleep(nap);
	lpemu_observe(2, 2 + zero);
	return 0;
}
