/*
 * lpemu.h - hypercalls for guest code run by livepatch-emu.
 *
 * Every scenario compile has this header on its include path. A hypercall is a
 * `syscall` instruction with the call number in rax and arguments in rdi, rsi,
 * rdx; the result comes back in rax. The numbers live here:
 * emu/machine/hypercall.py reads them from this file, and csrc/emu.h keeps
 * copies of the ones the C scheduler handles (tests/test_machine.py holds
 * them to these).
 */
#ifndef LPEMU_H
#define LPEMU_H

#define LPEMU_HC_EXIT            0
#define LPEMU_HC_SLEEP           1
#define LPEMU_HC_YIELD           2
#define LPEMU_HC_RETURN_TO_USER  3
#define LPEMU_HC_SAFE_POINT      4
#define LPEMU_HC_OBSERVE         5
#define LPEMU_HC_SHADOW_ALLOC    6
#define LPEMU_HC_SHADOW_GET      7
#define LPEMU_HC_SHADOW_GET_OR_ALLOC 8
#define LPEMU_HC_SHADOW_FREE     9
#define LPEMU_HC_SHADOW_FREE_ALL 10
#define LPEMU_HC_SLEEP_FREEZABLE 11
/* The runtime's own: a task born to run one function (a module's init or
 * exit in its loader task) reports the function's result. Not for guest code. */
#define LPEMU_HC_FUNCTION_DONE   12

/*
 * A hypercall is a call into the kernel (schedule(), klp_*): the stack walks
 * of a task stopped at one must find the frame of the function it is in, as
 * they find the frame of a function that called schedule(). gcc sets up a
 * function's frame only on the paths that make calls (shrink-wrapping), and
 * an asm statement is no call to it: "+r" on the stack pointer says the asm
 * uses the stack, so the frame is set up before it (the kernel's
 * ASM_CALL_CONSTRAINT, arch/x86/include/asm/asm.h, for inline asm that calls;
 * objtool rejects a call made without the frame set up).
 */
static inline __attribute__((always_inline)) long
__lpemu_hypercall(long nr, long a, long b, long c)
{
	register unsigned long sp __asm__("rsp");
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret), "+r"(sp)
			 : "a"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

/* Sleep for `ticks` ticks of virtual time (interruptible: a fake signal ends
 * it early). Returns the ticks left, 0 when the whole sleep passed. A
 * negative `ticks` sleeps until something wakes the task (a signal, a
 * kthread wake-up), as schedule() with no timeout does. */
static inline __attribute__((always_inline)) long lpemu_sleep(long ticks)
{ return __lpemu_hypercall(LPEMU_HC_SLEEP, ticks, 0, 0); }

/* An uninterruptible sleep (TASK_UNINTERRUPTIBLE: schedule_timeout_uninterruptible(),
 * an I/O wait): as lpemu_sleep(), but a fake signal does not end it, nor
 * livepatch's wake-up of a kthread (wake_up_state(TASK_INTERRUPTIBLE)); a
 * plain wake_up_process() does (kGraft's kthread wake-ups). The second
 * argument of the sleep hypercall says so. */
static inline __attribute__((always_inline)) long lpemu_sleep_uninterruptible(long ticks)
{ return __lpemu_hypercall(LPEMU_HC_SLEEP, ticks, 1, 0); }

/* A freezable sleep (wait_event_freezable()): the scheduler sees the task
 * go to a TASK_FREEZABLE sleep (from Linux 6.16 a pending livepatch task
 * tries to switch there, checking its own stack; kGraft migrates a
 * freezable kthread there), then it sleeps as lpemu_sleep(). */
static inline __attribute__((always_inline)) long lpemu_sleep_freezable(long ticks)
{
	__lpemu_hypercall(LPEMU_HC_SLEEP_FREEZABLE, 0, 0, 0);
	return __lpemu_hypercall(LPEMU_HC_SLEEP, ticks, 0, 0);
}

/* A cond_resched() point: the scheduler may switch tasks here. */
static inline __attribute__((always_inline)) void lpemu_yield(void)
{ __lpemu_hypercall(LPEMU_HC_YIELD, 0, 0, 0); }

/* A kernel exit: the task passes through user space and comes back. */
static inline __attribute__((always_inline)) void lpemu_return_to_user(void)
{ __lpemu_hypercall(LPEMU_HC_RETURN_TO_USER, 0, 0, 0); }

/* A kthread safe point (kGraft's try_to_freeze()). */
static inline __attribute__((always_inline)) void lpemu_safe_point(void)
{ __lpemu_hypercall(LPEMU_HC_SAFE_POINT, 0, 0, 0); }

/* Record (key, value) for the oracle's value assertions. */
static inline __attribute__((always_inline)) void lpemu_observe(long key, long value)
{ __lpemu_hypercall(LPEMU_HC_OBSERVE, key, value, 0); }

/* End this task with `code`. */
static inline __attribute__((always_inline, noreturn)) void lpemu_exit(long code)
{ __lpemu_hypercall(LPEMU_HC_EXIT, code, 0, 0); __builtin_unreachable(); }

/* Shadow variables (upstream klp_shadow_* semantics, without constructors). */
static inline __attribute__((always_inline)) void *
lpemu_shadow_alloc(void *obj, unsigned long id, unsigned long size)
{ return (void *)__lpemu_hypercall(LPEMU_HC_SHADOW_ALLOC, (long)obj, (long)id, (long)size); }

static inline __attribute__((always_inline)) void *
lpemu_shadow_get(void *obj, unsigned long id)
{ return (void *)__lpemu_hypercall(LPEMU_HC_SHADOW_GET, (long)obj, (long)id, 0); }

static inline __attribute__((always_inline)) void *
lpemu_shadow_get_or_alloc(void *obj, unsigned long id, unsigned long size)
{ return (void *)__lpemu_hypercall(LPEMU_HC_SHADOW_GET_OR_ALLOC, (long)obj, (long)id, (long)size); }

static inline __attribute__((always_inline)) void
lpemu_shadow_free(void *obj, unsigned long id)
{ __lpemu_hypercall(LPEMU_HC_SHADOW_FREE, (long)obj, (long)id, 0); }

static inline __attribute__((always_inline)) void
lpemu_shadow_free_all(unsigned long id)
{ __lpemu_hypercall(LPEMU_HC_SHADOW_FREE_ALL, (long)id, 0, 0); }

#endif /* LPEMU_H */
