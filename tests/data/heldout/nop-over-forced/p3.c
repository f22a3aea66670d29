#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long g(void)
{
	lpemu_observe(2, 3 + zero);
	return 0;
}
