/* The history grows from 4 to 8 entries. */
#include "lpemu.h"

long history[8];
long pos;

__attribute__((noinline)) void record(long v)
{
	history[pos++ & 7] = v;
}
