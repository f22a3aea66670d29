/* p2 (replace = true): only g(); f() goes back to the original. */
#include "lpemu.h"

extern volatile long zero;

__attribute__((noinline)) long g(void)
{
	lpemu_observe(2, 2 + zero);          /* key 2: g() version 2 */
	return 0;
}
