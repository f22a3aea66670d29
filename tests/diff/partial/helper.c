/* A new helper() against ../two_files/old: which file's helper? */
#include "lpemu.h"

static __attribute__((noinline)) long helper(long x)
{
	return x + 100;
}

long a_entry(long x)
{
	return helper(x) * 2;
}
