#include "lpemu.h"

extern long lock_a, lock_b;

__attribute__((noinline)) void take(void)
{
	lpemu_observe(1, lock_b);
	lock_b++;
}

__attribute__((noinline)) void drop(void)
{
	lock_b--;
}

__attribute__((noinline)) void critical(long t)
{
	take();
	lpemu_sleep(t);
	drop();
}
