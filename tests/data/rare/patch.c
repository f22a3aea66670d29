/* bar() now returns thousandths; baz() expects them. */
#include "lpemu.h"

extern volatile long zero;
extern long total;

__attribute__((noinline)) long bar(void)
{
	return 7000 + zero;
}

__attribute__((noinline)) long baz(long f)
{
	lpemu_observe(2, f);       /* must be thousandths */
	total += f / 1000;
	return 0;
}
