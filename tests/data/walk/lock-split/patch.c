/* The fix: configuration goes under its own lock, cfg_lock. */
#include "lpemu.h"

extern volatile long zero;

long cfg_lock[4];                    /* new data of the patch module */

__attribute__((noinline)) void dev_lock(long dev)
{
	cfg_lock[dev & 3] += 1 + zero;
}

__attribute__((noinline)) void dev_unlock(long dev)
{
	lpemu_observe(2, cfg_lock[dev & 3]);
	cfg_lock[dev & 3] -= 1 + zero;
}
