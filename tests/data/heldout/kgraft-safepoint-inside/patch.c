#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long part_a(long x)
{
	lpemu_observe(1, 1 + zero);
	return x + zero;
}

__attribute__((noinline)) long part_b(long x)
{
	lpemu_observe(2, 1 + zero);
	return x + zero;
}

__attribute__((noinline)) long work(long ticks)
{
	long v = part_a(ticks);

	lpemu_safe_point();
	lpemu_sleep(ticks);
	lpemu_observe(3, 1 + zero);
	return part_b(v) + 1;
}

