#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long flush(long first)
{
	if (first)
		lpemu_sleep(300);
	lpemu_observe(1, 1 + zero);
	return 0;
}
