/*
 * Two patches stacked on one function.
 *
 * f() produces a record and g() consumes it. Every version of f() tags its
 * record with its own version (key 1 observes which f() ran); g() observes
 * (key 10 + its version) the version of the f() whose record it got, so the
 * scenario can check that each g() only ever sees records it understands.
 * p1 changes the record format and patches f() and g(); p2 fixes a bug in
 * p1's f() and keeps p1's format, so it patches f() only.
 */
#include "lpemu.h"

volatile long zero;          /* keeps gcc from treating f() as pure */
long sink;

__attribute__((noinline)) long f(void)
{
	lpemu_observe(1, 0 + zero);          /* key 1: f() version 0 ran */
	return 0 + zero;                     /* the record: the format of version 0 */
}

__attribute__((noinline)) long g(long record)
{
	lpemu_observe(10, record);           /* key 10: the original g() got a record of f() version `record` */
	sink += record;
	return 0;
}

__attribute__((noinline)) void nap(void)
{
	lpemu_sleep(2);
}

/* A system call: make a record, hand it on, nap outside both. */
long user_entry(long i)
{
	g(f());
	nap();
	return 0;
}
