/* A changed string literal in a changed function: a new literal, not data. */
#include "lpemu.h"

__attribute__((noinline)) long warn(long v)
{
	lpemu_observe(7, (long)"value too large");
	return v;
}

__attribute__((noinline)) long note(long v)
{
	lpemu_observe(8, (long)"noted");
	return v;
}
