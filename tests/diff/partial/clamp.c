/* New clamp() and set_speed() (against ../inline/old.c), but not set_power(),
 * into which the base inlines clamp() too. */
#include "lpemu.h"

extern long speed;

static long clamp(long v)
{
	return v > 50 ? 50 : v;
}

__attribute__((noinline)) long set_speed(long v)
{
	speed = clamp(v);
	return speed;
}

__attribute__((noinline)) long set_limit(long v)
{
	return clamp(v) + 1;
}
