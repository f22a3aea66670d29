/* A one-line fix: get() let i == 8 read past the table. */
#include "lpemu.h"

long table[8];

__attribute__((noinline)) long get(long i)
{
	if (i < 0 || i > 8)
		return -1;
	return table[i];
}

__attribute__((noinline)) long put(long i, long v)
{
	if (i < 0 || i >= 8)
		return -1;
	table[i] = v;
	return 0;
}

long sum(void)
{
	long s = 0;

	for (long i = 0; i < 8; i++)
		s += get(i);
	return s;
}
