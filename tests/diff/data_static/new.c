/* A file-scope static with a new initial value. */
#include "lpemu.h"

static long threshold = 4;

__attribute__((noinline)) long above(long v)
{
	threshold += v & 1;
	return v > threshold;
}
