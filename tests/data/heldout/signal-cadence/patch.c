#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long poll_loop(void)
{
	for (;;) {
		lpemu_sleep(1000000);
		lpemu_observe(2, 1 + zero);
	}
	return 0;
}
