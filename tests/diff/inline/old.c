/* A static helper that gcc inlines into both of its callers. */
#include "lpemu.h"

long speed, power;

static long clamp(long v)
{
	return v > 100 ? 100 : v;
}

__attribute__((noinline)) long set_speed(long v)
{
	speed = clamp(v);
	return speed;
}

__attribute__((noinline)) long set_power(long v)
{
	power = clamp(v) * 2;
	return power;
}

__attribute__((noinline)) long idle(void)
{
	return speed + power;
}
