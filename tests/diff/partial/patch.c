/* Only the new versions of bar() and baz() (against ../seed/old.c); the
 * data they use is the base's, declared extern. */
#include "lpemu.h"

extern volatile long zero;
extern long total;

__attribute__((noinline)) long bar(void)
{
	return 5000 + zero;
}

__attribute__((noinline)) long baz(long f)
{
	lpemu_observe(2, f);
	total += f / 1000;
	return 0;
}
