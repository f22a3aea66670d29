/*
 * The "kernel" of the selftest scenarios: /proc/cmdline and /proc/meminfo
 * (test_klp_livepatch and test_klp_atomic_replace patch them), a reader
 * that keeps looking at both, a workqueue worker that runs whatever
 * function a module's init hands it (test_klp_callbacks_busy's work), and
 * getpid(2) (test_klp_syscall patches it) with the processes of
 * test_klp-call_getpid that call it in a tight loop.
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

/*
 * current: the task_struct stand-in behind %gs:current_task (offset 0x40 of
 * the per-CPU area, emu/images/percpu.py CURRENT); its first word is the pid
 * the test gave the task when it started it (fork).
 */
struct task_struct {
	long pid;
};

static inline __attribute__((always_inline)) struct task_struct *get_current(void)
{
	struct task_struct *t;

	__asm__ volatile("movq %%gs:0x40, %0" : "=r"(t));
	return t;
}

/* getpid(): task_tgid_vnr(current) */
__attribute__((noinline)) long __x64_sys_getpid(void)
{
	return get_current()->pid;
}

/* A pending fatal signal per test_klp-call_getpid process (kill $pid). */
volatile long killed[64];

/*
 * One pass of test_klp-call_getpid's loop, `while (!stop) syscall(SYS_getpid)`:
 * the system call, then the way back to user space, where a fatal signal
 * ends the process (exit_to_user_mode -> get_signal -> do_exit).
 */
long call_getpid(long slot)
{
	long pid = __x64_sys_getpid();

	if (killed[slot])
		lpemu_exit(0);
	return pid;
}
