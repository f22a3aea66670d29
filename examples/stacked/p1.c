/* p1: a new record format; f() and g() change together. */
#include "lpemu.h"

extern volatile long zero;
extern long sink;

__attribute__((noinline)) long f(void)
{
	lpemu_observe(1, 1 + zero);          /* key 1: f() version 1 ran */
	return 1 + zero;
}

__attribute__((noinline)) long g(long record)
{
	lpemu_observe(11, record);           /* key 11: p1's g() got a record of f() version `record` */
	sink += record;
	return 0;
}
