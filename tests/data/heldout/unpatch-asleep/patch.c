#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long f(long ticks)
{
	lpemu_sleep(ticks);
	lpemu_observe(1, 1 + zero);
	return 0;
}
