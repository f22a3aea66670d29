/* Functions that only move: a switch (jump table), strings, a static local,
 * static helpers (one becomes peek.isra.0) and calls between them. */
#include "lpemu.h"

long hits;

long classify(long x);
long count(void);
static long peek(const long *p);

__attribute__((noinline)) long tally(long x)
{
	hits += classify(x) + count() + peek(&x);
	lpemu_observe(12, (long)"tally");
	return hits;
}

__attribute__((noinline)) long count(void)
{
	static long calls;

	lpemu_observe(11, (long)"count");
	return ++calls;
}

static __attribute__((noinline)) long weigh(long x)
{
	return x * 7 + hits;
}

__attribute__((noinline)) long classify(long x)
{
	switch (x) {
	case 0: lpemu_observe(1, 10); return weigh(1);
	case 1: lpemu_observe(2, 20); return weigh(2);
	case 2: lpemu_observe(3, 30); return 5;
	case 3: lpemu_observe(4, 40); return 9;
	case 4: lpemu_observe(5, 50); return weigh(x);
	case 5: lpemu_observe(6, 60); return 2;
	}
	return -1;
}

static __attribute__((noinline)) long peek(const long *p)
{
	return *p * 3 + hits;
}
