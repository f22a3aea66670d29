/*
 * A kthread that lives in the patched poll_loop(): it sleeps until
 * something wakes it (10,000 s: longer than any run, since a task that
 * sleeps with no timeout and nothing left to wake it is reported as a hang),
 * records the wake-up and sleeps again, never leaving poll_loop().
 * Key 2: version of poll_loop() at each wake-up.
 */
#include "lpemu.h"

volatile long zero;

__attribute__((noinline)) long poll_loop(void)
{
	for (;;) {
		lpemu_sleep(1000000);
		lpemu_observe(2, 0 + zero);
	}
	return 0;
}

long kthread_entry(void)
{
	poll_loop();
	return 0;
}
