/* New data is allowed: it has no old state; the patch module carries it. */
#include "lpemu.h"

long seen;

__attribute__((noinline)) long see(long v)
{
	seen += v;
	return seen;
}
