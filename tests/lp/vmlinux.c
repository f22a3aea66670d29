/*
 * The "kernel" of the selftest scenarios: /proc/cmdline and /proc/meminfo
 * (test_klp_livepatch and test_klp_atomic_replace patch them), a reader
 * that keeps looking at both, and a workqueue worker that runs whatever
 * function a module's init hands it (test_klp_callbacks_busy's work).
 */
#include "lpemu.h"

volatile long zero;

/* 0: the original text, which never matches grep 'live patched' */
__attribute__((noinline)) long cmdline_proc_show(void) { return 0 + zero; }
__attribute__((noinline)) long meminfo_proc_show(void) { return 0 + zero; }

long cat_entry(long x)
{
	lpemu_observe(1, cmdline_proc_show());
	lpemu_observe(2, meminfo_proc_show());
	lpemu_sleep(1);
	return 0;
}

void (*volatile pending_work)(void);

long kworker(long x)
{
	for (;;) {
		void (*fn)(void) = pending_work;
		if (fn) {
			pending_work = 0;
			fn();
		} else {
			lpemu_sleep(1);
		}
	}
}
