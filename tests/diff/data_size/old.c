/* The history grows from 4 to 8 entries. */
#include "lpemu.h"

long history[4];
long pos;

__attribute__((noinline)) void record(long v)
{
	history[pos++ & 3] = v;
}
