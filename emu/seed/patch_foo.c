/* The same patch, carrying foo() too: a task inside the old foo() now
 * blocks stop_machine's check and livepatch's switch. */
#include "lpemu.h"

extern volatile long zero;
extern long total;
void something_else(void);

__attribute__((noinline)) long bar(void)
{
	return 5000 + zero;
}

__attribute__((noinline)) long baz(long f)
{
	lpemu_observe(2, f);
	total += f / 1000;
	return 0;
}

__attribute__((noinline)) long foo(void)
{
	long f = bar();
	something_else();
	return baz(f);
}
