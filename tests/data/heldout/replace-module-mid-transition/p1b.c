/* A second patch of the module's drv_fn only: version 3. */
#include "lpemu.h"

__attribute__((noinline)) long drv_fn(long x)
{
	lpemu_observe(2, 3);
	return x + 1;
}
