/*
 * Four connections, one per task; account(i) is called once per system
 * call. Key 1: account()'s version.
 */
#include "lpemu.h"

long conns[4];
volatile long zero;

__attribute__((noinline)) long account(long i)
{
	lpemu_observe(1, 0 + zero);
	return 0;
}

long user_entry(long i)
{
	account(i);
	lpemu_sleep(5);
	return 0;
}
