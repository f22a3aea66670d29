/* Version 2 of the module's encoder (key 3 says which version ran). */
#include "lpemu.h"

long checksum(long v);

__attribute__((noinline)) long codec_encode(long v)
{
	lpemu_observe(3, 2);
	return v * 100 + checksum(v) % 7;
}
