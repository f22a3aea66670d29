/* The fix: codec_len() now counts bits, codec_put() expects bits. */
#include "lpemu.h"

extern volatile long zero;
extern long total;

__attribute__((noinline)) long codec_len(void)
{
	return 72 + zero;           /* bits */
}

__attribute__((noinline)) long codec_put(long bits)
{
	lpemu_observe(2, bits);     /* must be bits: a multiple of 8 */
	total += bits / 8;
	return 0;
}
