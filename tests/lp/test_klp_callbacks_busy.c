/*
 * test_klp_callbacks_busy: its work function waits as long as
 * block_transition is set, so a task sleeps inside a to-be-patched
 * function. Messages go out through hypercall 32 (the test prints them).
 */
#include "lpemu.h"

#define SAY(n) __lpemu_hypercall(32, (n), 0, 0)

volatile long block_transition;

__attribute__((noinline)) void busymod_work_func(void)
{
	SAY(1);                 /* busymod_work_func enter */
	while (block_transition)
		lpemu_sleep(2);     /* msleep(20) */
	SAY(2);                 /* busymod_work_func exit */
}
