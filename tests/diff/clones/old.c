/* Built with -O3 (IPA-CP clones per calling context): scale.constprop.0 and
 * .1, numbered in the order gcc makes them. */
#include "lpemu.h"
long total;
static __attribute__((noinline)) long scale(long x, long k)
{
	for (long i = 0; i < k; i++)
		total += x * i;
	return total;
}
long a(long x) { return scale(x, 3) + scale(x + 1, 3); }
long b(long x) { return scale(x, 5) + scale(x + 1, 5); }
long c(long x) { return scale(x, x); }
