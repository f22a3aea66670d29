/* The new version adds helpers: one called, one inlined. */
#include "lpemu.h"

long last;

__attribute__((noinline)) long log_value(long v)
{
	lpemu_observe(3, v);
	return v;
}

static long is_valid(long v)
{
	return v > 0 && v < 1000;
}

__attribute__((noinline)) long process(long v)
{
	last = log_value(v * 3);
	return last;
}

__attribute__((noinline)) long check(long v)
{
	return is_valid(v);
}

__attribute__((noinline)) long untouched(long v)
{
	return v + last;
}
