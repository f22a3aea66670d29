/* A task that spends nearly all its time asleep inside the patched f().
 * Key 1: f()'s version. */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long f(long ticks)
{
	lpemu_sleep(ticks);
	lpemu_observe(1, 0 + zero);
	return 0;
}

long user_entry(long ticks)
{
	f(ticks);
	return 0;
}
