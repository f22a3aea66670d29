/* The same patch carrying the caller handler() too: a task inside the old
 * handler() now blocks stop_machine's check and livepatch's switch. */
#include "lpemu.h"

extern volatile long zero;
extern long elapsed_ms;
void wait_a_bit(void);

__attribute__((noinline)) long compute(void)
{
	return 7000 + zero;
}

__attribute__((noinline)) long finish(long v)
{
	lpemu_observe(2, v);
	elapsed_ms += v / 1000;
	return v / 1000;
}

__attribute__((noinline)) long handler(void)
{
	long v = compute();
	wait_a_bit();
	return finish(v);
}
