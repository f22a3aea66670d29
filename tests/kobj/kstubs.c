/* The kernel functions a test implements itself, and the tasks that run the
 * kernel object's code (built with build_c, lpemu.h on the include path). */
#include "lpemu.h"

extern long counter_next(void);

long counter_source(void)
{
	return 1;
}

long user_entry(long i)
{
	lpemu_observe(1, counter_next());
	lpemu_sleep(1);
	return 0;
}
