/* Stacked patches on f(); g() only in the second. Key 1: f()'s version,
 * key 2: g()'s. */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long f(void) { lpemu_observe(1, 0 + zero); return 0; }
__attribute__((noinline)) long g(void) { lpemu_observe(2, 0 + zero); return 0; }

long user_entry(long t)
{
	f();
	g();
	lpemu_sleep(t);
	return 0;
}
