/* A static local whose initial value changes: the running counter keeps its value. */
#include "lpemu.h"

__attribute__((noinline)) long ticket(void)
{
	static long next = 1000;

	return next++;
}

__attribute__((noinline)) long other(void)
{
	static long next = 7;

	return next--;
}
