/* The new version adds helpers: one called, one inlined. */
#include "lpemu.h"

long last;

__attribute__((noinline)) long process(long v)
{
	last = v * 3;
	return last;
}

__attribute__((noinline)) long check(long v)
{
	return v != 0;
}

__attribute__((noinline)) long untouched(long v)
{
	return v + last;
}
