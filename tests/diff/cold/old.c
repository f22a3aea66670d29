/* gcc moves the unlikely path of check() into check.cold; a change there
 * changes check(), which jumps into it. */
#include "lpemu.h"

__attribute__((noinline, cold)) void report(long x)
{
	lpemu_observe(99, x);
}

long check(long x)
{
	if (__builtin_expect(x > 100, 0)) {
		report(x);
		report(x + 1);
		return -1;
	}
	return x * 2;
}
