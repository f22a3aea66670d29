/* The fix raises the limit: but limit is existing state. */
#include "lpemu.h"

long limit = 10;

__attribute__((noinline)) long over(long v)
{
	return v > limit;
}
