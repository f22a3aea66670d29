/*
 * A patch for seed.c, given as a whole copy of the file: bar returns 2, baz
 * expects it, foo reads state directly and uses a new helper and new data.
 * Built with keep={"foo", "bar", "baz"}: something_else, helper, entry, counter
 * and hits must all bind to the base image.
 */
#include "lpemu.h"

long counter;
static long hits;
static const char patched_tag[] = "patched";

__attribute__((noinline)) long bar(void) { counter++; return 2; }
__attribute__((noinline)) void something_else(void) { hits++; lpemu_yield(); }
__attribute__((noinline)) long baz(long f) { return f / 2 + counter; }

static __attribute__((noinline)) long helper(long x) { return x * 3 + hits; }

static __attribute__((noinline)) long new_helper(long x) { return x + patched_tag[x & 7]; }

long foo(void)
{
	long f = bar();
	something_else();
	return baz(f) + counter + hits + helper(f) + new_helper(f);
}

long entry(long x) { return helper(x) + foo(); }
