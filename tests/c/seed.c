/* The seed example: foo() { f = bar(); something_else(); baz(f); } */
#include "lpemu.h"

long counter;
static long hits;

__attribute__((noinline)) long bar(void) { counter++; return 1; }
__attribute__((noinline)) void something_else(void) { hits++; lpemu_yield(); }
__attribute__((noinline)) long baz(long f) { return f + counter; }

/* gcc -O2 turns the last call into a tail `jmp baz`. */
long foo(void)
{
	long f = bar();
	something_else();
	return baz(f);
}

static __attribute__((noinline)) long helper(long x) { return x * 3 + hits; }

long entry(long x) { return helper(x) + foo(); }
