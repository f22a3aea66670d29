#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long f(long nap)
{
	lpemu_sleep(nap);
	lpemu_observe(1, 2 + zero);
	return 0;
}
