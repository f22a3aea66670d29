/* The new slow(): the same sleep, reported as version 1. */
#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long slow(long ticks)
{
	lpemu_observe(1, 1 + zero);          /* key 1: version 1 ran */
	return lpemu_sleep(ticks);
}
