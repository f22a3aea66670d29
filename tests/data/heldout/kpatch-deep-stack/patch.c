#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long g(void)
{
	lpemu_observe(1, 1 + zero);
	return 0;
}
