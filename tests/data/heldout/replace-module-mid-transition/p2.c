/* The atomic replace: slow() version 2 only; drv_fn is left out (a nop). */
#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long slow(long t)
{
	lpemu_observe(3, 2 + zero);
	lpemu_sleep(t);
	return t;
}
