/* account() v1: counts the calls per connection in a shadow variable
 * (id 0x1234) attached to the connection. Key 2: the count after this call. */
#include "lpemu.h"

extern long conns[4];
extern volatile long zero;

__attribute__((noinline)) long account(long i)
{
	long *n = lpemu_shadow_get_or_alloc(&conns[i], 0x1234, sizeof(long));

	lpemu_observe(1, 1 + zero);
	lpemu_observe(2, ++*n);
	return 0;
}
