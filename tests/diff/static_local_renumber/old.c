/* gcc numbers static locals (calls.0, calls.1) across the file: adding one
 * renumbers the others, which must not make their users differ. */
#include "lpemu.h"

__attribute__((noinline)) long first(void)
{
	static long calls;

	return ++calls;
}
