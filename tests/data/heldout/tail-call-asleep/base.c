/* foo() ends in a tail call: gcc -O2 compiles `return nap(ticks, v)` as
 * `jmp nap`, so while the task sleeps in nap() no frame of foo() is left on
 * its stack. Key 1: tally()'s version; key 2: the value foo() computed. */
#include "lpemu.h"

volatile long zero;
volatile long level = 5;

__attribute__((noinline)) long nap(long ticks, long v)
{
	lpemu_sleep(ticks);
	lpemu_observe(2, v);
	return v;
}

__attribute__((noinline)) long foo(long ticks)
{
	long v = level * 2 + zero;
	return nap(ticks, v);
}

__attribute__((noinline)) long tally(long v)
{
	lpemu_observe(1, 0 + zero);
	return v + zero;
}

long user_entry(long ticks)
{
	tally(foo(ticks));
	return 0;
}
