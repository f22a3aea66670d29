/* Defines total again, with another initial value: refused. */
#include "lpemu.h"

extern volatile long zero;
long total = 1;

__attribute__((noinline)) long bar(void)
{
	return 5000 + zero;
}
