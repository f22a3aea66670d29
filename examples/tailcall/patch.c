/* compute() now returns microseconds; finish() expects them. */
#include "lpemu.h"

extern volatile long zero;
extern long elapsed_ms;

__attribute__((noinline)) long compute(void)
{
	return 7000 + zero;                  /* microseconds */
}

__attribute__((noinline)) long finish(long v)
{
	lpemu_observe(2, v);                 /* key 2: the new finish() got v (must be microseconds) */
	elapsed_ms += v / 1000;
	return v / 1000;
}
