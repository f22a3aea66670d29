/* The patch: a new version of the module's encoder (the decoder and the
 * results are unchanged; key 3 says which version ran). */
#include "lpemu.h"

long checksum(long v);

__attribute__((noinline)) long codec_encode(long v)
{
	lpemu_observe(3, 1);                    /* version 1 ran */
	return v * 100 + checksum(v) % 7;
}
