/* p1: new f() and g(). */
#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long f(void)
{
	lpemu_observe(1, 1 + zero);          /* key 1: f() version 1 */
	return 0;
}

__attribute__((noinline)) long g(void)
{
	lpemu_observe(2, 1 + zero);          /* key 2: g() version 1 */
	return 0;
}
