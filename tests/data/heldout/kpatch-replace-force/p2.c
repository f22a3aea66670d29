#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long k(void)
{
	lpemu_observe(2, 2 + zero);
	return 0;
}
