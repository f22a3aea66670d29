/* New data is allowed: it has no old state; the patch module carries it. */
#include "lpemu.h"

long seen;
long largest = -1;

__attribute__((noinline)) long see(long v)
{
	static long calls;

	calls++;
	if (v > largest)
		largest = v;
	seen += v;
	return seen + calls;
}
