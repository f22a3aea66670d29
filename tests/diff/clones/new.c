/* a() and b() swap places: their clones swap numbers, nothing changes. */
#include "lpemu.h"
long total;
static __attribute__((noinline)) long scale(long x, long k)
{
	for (long i = 0; i < k; i++)
		total += x * i;
	return total;
}
long b(long x) { return scale(x, 5) + scale(x + 1, 5); }
long a(long x) { return scale(x, 3) + scale(x + 1, 3); }
long c(long x) { return scale(x, x); }
