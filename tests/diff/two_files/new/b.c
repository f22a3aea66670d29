/* Two files, each with its own static helper(). */
#include "lpemu.h"

static __attribute__((noinline)) long helper(long x)
{
	return x - 1;
}

long b_entry(long x)
{
	return helper(x) * 3;
}
