/* The new form of the value: foo() adds 1000, tally() expects it. */
#include "lpemu.h"

extern volatile long zero;
extern volatile long level;
long nap(long ticks, long v);

__attribute__((noinline)) long foo(long ticks)
{
	long v = level * 2 + 1000 + zero;
	return nap(ticks, v);
}

__attribute__((noinline)) long tally(long v)
{
	lpemu_observe(1, 1 + zero);
	return v + zero;
}
