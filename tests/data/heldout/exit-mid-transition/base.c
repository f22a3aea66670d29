/*
 * Tasks that die during a transition. nap() is patched. "quitter" (a user
 * task) and "kquitter" (a kthread) sleep 2.5 s inside nap() and then exit
 * from inside it (do_exit() with nap() still on the stack: a fatal error,
 * an oops); "busy" calls nap() without sleeping in it,
 * then sleeps 0.1 s outside it, forever.
 * Key 1: version of nap(); key 2: ticks the sleep in nap() had left.
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long nap(long ticks, long die)
{
	long left = ticks ? lpemu_sleep(ticks) : 0;

	lpemu_observe(1, 0 + zero);
	lpemu_observe(2, left);
	if (die)
		lpemu_exit(1);
	return left;
}

long busy_entry(long ticks)
{
	nap(0, 0);
	lpemu_sleep(ticks);
	return 0;
}

long quitter_entry(long ticks)
{
	nap(ticks, 1);
	return 0;
}
