/*
 * Atomic replace. p1 patches f() and g(); p2, a cumulative patch with
 * `replace = true`, carries only g(): it no longer wants p1's f(). Each
 * version observes itself: key 1 for f(), key 2 for g() (0 = original,
 * 1 = p1's, 2 = p2's).
 */
#include "lpemu.h"

volatile long zero;          /* keeps gcc from treating f() and g() as pure */

__attribute__((noinline)) long f(void)
{
	lpemu_observe(1, 0 + zero);          /* key 1: f() version 0 */
	return 0;
}

__attribute__((noinline)) long g(void)
{
	lpemu_observe(2, 0 + zero);          /* key 2: g() version 0 */
	return 0;
}

__attribute__((noinline)) void nap(void)
{
	lpemu_sleep(2);
}

long user_entry(long i)
{
	f();
	g();
	nap();
	return 0;
}
