/* b() is gone: a()'s clone is renumbered scale.constprop.0. */
#include "lpemu.h"
long total;
static __attribute__((noinline)) long scale(long x, long k)
{
	for (long i = 0; i < k; i++)
		total += x * i;
	return total;
}
long a(long x) { return scale(x, 3) + scale(x + 1, 3); }
long c(long x) { return scale(x, x); }
