#include "lpemu.h"

extern volatile long zero;
extern long total;
long step(long n);

__attribute__((noinline)) long work_loop(long n)
{
	for (;;) {
		total += step(n);
		lpemu_observe(1, 1 + zero);
		lpemu_yield();
	}
	return 0;
}
