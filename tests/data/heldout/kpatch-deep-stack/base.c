/*
 * "deep" recurses through dive() and sleeps at the bottom for 20 s, far
 * from g(), the only patched function. Its stack then holds the sleeping
 * dive()'s address, one return address per frame of dive() above it, one
 * into its entry function and one into the kernel entry: depth + 2 entries
 * (deep_entry: 61 frames of dive(), 63 entries; shallow_entry: 60 frames,
 * 62 entries). Key 1: g()'s version.
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long g(void)
{
	lpemu_observe(1, 0 + zero);
	return 0;
}

__attribute__((noinline)) long dive(long n)
{
	long r;

	if (n <= 1) {
		lpemu_sleep(2000);
		return zero;
	}
	r = dive(n - 1);
	return r + zero;	/* a call, not a tail call: one frame per level */
}

long deep_entry(long t)
{
	g();
	dive(61);
	return 0;
}

long shallow_entry(long t)
{
	g();
	dive(60);
	return 0;
}
