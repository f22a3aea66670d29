/* The fix raises the limit: but limit is existing state. */
#include "lpemu.h"

long limit = 20;

__attribute__((noinline)) long over(long v)
{
	return v > limit;
}
