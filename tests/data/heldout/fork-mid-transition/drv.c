/* A module whose init calls the patched probe() once, in its loader task
 * insmod-drv: a process forked while the transition is under way. */
#include "lpemu.h"

long probe(void);

int drv_init(void)
{
	probe();
	return 0;
}
