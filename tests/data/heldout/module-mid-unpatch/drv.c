/* The module: its init registers drv_fn (key 2: the version that ran). */
#include "lpemu.h"

extern long (*drv_ops)(long);

__attribute__((noinline)) long drv_fn(long x)
{
	lpemu_observe(2, 0);
	return x + 1;
}

long drv_init(void)
{
	drv_ops = drv_fn;
	return 0;
}

long drv_exit(void)
{
	drv_ops = 0;
	return 0;
}
