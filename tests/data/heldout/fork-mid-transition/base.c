/* A sleeper holds the transition open asleep in the patched nap(); a busy
 * task calls the patched probe() in every system call. Key 1: the version
 * of probe() that ran (in whichever task called it). */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long probe(void)
{
	lpemu_observe(1, 0 + zero);
	return 0;
}

__attribute__((noinline)) long nap(long ticks)
{
	lpemu_sleep(ticks);
	return 0;
}

long sleeper(long ticks)
{
	nap(ticks);
	probe();
	return 0;
}

long busy(long ticks)
{
	probe();
	lpemu_sleep(ticks);
	return 0;
}
