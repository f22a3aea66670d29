/* Code for which gcc -O2 makes .cold and .constprop clones. */
#include "lpemu.h"

long total;

__attribute__((noinline, cold)) void report(long x) { lpemu_observe(99, x); }

long check(long x)
{
	if (__builtin_expect(x > 100, 0)) {
		report(x);
		report(x + 1);
		return -1;
	}
	return x * 2;
}

static __attribute__((noinline)) long scale(long x, long k) { total += k; return x * k + total; }

long use_scale(long x) { return scale(x, 3) + scale(x + 1, 3); }
