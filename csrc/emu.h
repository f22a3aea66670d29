/*
 * emu.h - the C core's API. This file is also the cffi cdef (build_ext.py
 * strips the preprocessor lines), so it holds only plain declarations: no
 * macros with arguments, no inline functions, no includes besides stdint.
 *
 * Conventions: every function returns EMU_OK (0) or a negative EMU_E* code;
 * emu/engine/core.py maps the codes to exceptions in one place. Nothing here calls
 * back into Python, so no exception can cross C.
 */
#ifndef EMU_H
#define EMU_H

#include <stdint.h>
#include <stddef.h>

/* ---- error codes (negative) ------------------------------------------ */
#define EMU_OK       0
#define EMU_ENOMEM  -1
#define EMU_EINVAL  -2
#define EMU_EUC     -3   /* unicorn refused; see emu_last_uc_error() */
#define EMU_ENOENT  -4
#define EMU_EFULL   -5
#define EMU_ERANGE  -6

/* ---- core flags ------------------------------------------------------ */
#define EMU_FLAG_ACCEL_C     1  /* redirect, site watch and int3 hooks run in C */
#define EMU_FLAG_FAST_MEMORY 2  /* virtual TLB with a C fill hook */

/* ---- memory permissions (as unicorn's UC_PROT_*) ----------------------- */
#define EMU_PROT_READ  1
#define EMU_PROT_WRITE 2
#define EMU_PROT_EXEC  4

/* ---- stop reasons of emu_run ------------------------------------------- */
#define EMU_STOP_BUDGET      1  /* the instruction budget is spent */
#define EMU_STOP_HYPERCALL   2  /* the guest made a hypercall other than observe */
#define EMU_STOP_FAULT       3  /* the guest faulted; see fault_kind/addr */
#define EMU_STOP_EVENTS_FULL 4  /* the event ring is full: drain and go on */
#define EMU_STOP_REQUESTED   5  /* emu_request_stop() from a Python hook */

/* fault kinds */
#define EMU_FAULT_UNMAPPED_READ   1
#define EMU_FAULT_UNMAPPED_WRITE  2
#define EMU_FAULT_UNMAPPED_FETCH  3
#define EMU_FAULT_PROT_READ       4
#define EMU_FAULT_PROT_WRITE      5
#define EMU_FAULT_PROT_FETCH      6
#define EMU_FAULT_INVALID_INSN    7
#define EMU_FAULT_INTERRUPT       8  /* an exception the guest raised (#DE, int3 off a site, ...) */
#define EMU_FAULT_BAD_TRAMPOLINE  9  /* a site's trampoline not called from its site */
#define EMU_FAULT_OTHER          10
#define EMU_FAULT_PRIVILEGED     11  /* a privileged instruction (sysinsn.c); it did not run */
#define EMU_FAULT_STACK_OVERFLOW 12  /* rsp left the task's stack at rip; addr = rsp */
#define EMU_FAULT_NULL_CALL      13  /* execution reached address 0 */

/* ---- events (appended to a ring; Python drains them in bulk) ---------- */
#define EMU_EV_ENTRY   1  /* a = function id, b = version (0 original), c = rsp at entry */
#define EMU_EV_OBSERVE 2  /* a = key, b = value, c = 0 */
#define EMU_EV_TORN    3  /* a = function id, b = 0, c = rip: a site executed mid-write */

struct emu_event {
    uint64_t clock;
    int32_t kind;
    int32_t task;
    int64_t a;
    int64_t b;
    uint64_t c;
};

struct emu_stop {
    int32_t reason;      /* EMU_STOP_* */
    int32_t uc_err;      /* unicorn's error for faults, else 0 */
    int32_t fault_kind;  /* EMU_FAULT_* */
    int32_t intno;       /* interrupt number for EMU_FAULT_INTERRUPT */
    uint64_t executed;   /* instructions retired in this run */
    uint64_t rip;        /* where the task stopped (the faulting RIP for faults) */
    uint64_t addr;       /* faulting data address */
    int64_t hc_nr;       /* hypercall number (rax) */
    int64_t hc_args[3];  /* rdi, rsi, rdx */
};

/* ---- redirect tables ------------------------------------------------------
 * A site is a function's 5-byte fentry NOP. Its stack of entries is ordered
 * newest first, as the kernel's klp_ops func_stack. The choice for the current
 * task follows klp_ftrace_handler: take the newest entry; if it is in
 * transition and the task's patch state is UNPATCHED, take the next older one
 * (the original when there is none); a nop entry means the original.
 */
#define EMU_UNDEFINED -1
#define EMU_UNPATCHED  0
#define EMU_PATCHED    1

#define EMU_SITE_MAX_ENTRIES 16

struct emu_entry {
    uint64_t target;     /* where the handler sends the task */
    int32_t version;     /* reported in EMU_EV_ENTRY; 0 is the original */
    uint8_t nop;         /* atomic-replace nop: run the original */
    uint8_t transition;  /* the patch of this entry is in transition */
    uint16_t pad;
};

/* What the 5 bytes at a site are meant to be while a text_poke_bp runs. */
#define EMU_POKE_NONE    0
#define EMU_POKE_TO_CALL 1
#define EMU_POKE_TO_NOP  2

/* ---- stack walks ----------------------------------------------------------
 * Pure functions over host memory that mirrors the guest range [lo, hi).
 * They never read outside it and always terminate.
 */
#define EMU_WALK_OK              0
#define EMU_WALK_OFF_STACK       1  /* a frame or slot lies outside the stack, or is misaligned */
#define EMU_WALK_BAD_RET         2  /* a return address is zero or outside known text */
#define EMU_WALK_TOO_DEEP        3  /* more entries than the caller allowed */
#define EMU_WALK_PREEMPTED       4  /* frame pointers and a task stopped mid-function */
#define EMU_WALK_NO_END          5  /* the walk did not end at the task's entry frame */
#define EMU_WALK_NO_ORC          6  /* no ORC entry, or an undefined one, for an address */
#define EMU_WALK_NOT_PROGRESSING 7  /* a frame does not lie above the previous one */

#define EMU_ORC_REG_UNDEFINED 0
#define EMU_ORC_REG_SP        1
#define EMU_ORC_REG_BP        2

#define EMU_ORC_TYPE_CALL      0
#define EMU_ORC_TYPE_UNDEFINED 1
/* The sites' trampolines (redirect.c), one entry for the whole region, as
 * the kernel's ORC unwinder finds a dynamic ftrace trampoline's frame by
 * rule (orc_ftrace_find): at each trampoline's first instruction (every
 * EMU_STUB_SIZE bytes from the entry's ip) the frame is as the entry says;
 * anywhere else it is undefined. */
#define EMU_ORC_TYPE_TRAMPOLINES 2

struct emu_range {
    uint64_t start;  /* inclusive */
    uint64_t end;    /* exclusive */
};

/* One ORC entry covers [ip, next entry's ip). The CFA is the value of rsp
 * before the call that created the frame, so the return address is at
 * CFA - 8. bp_reg is EMU_ORC_REG_BP when the caller's rbp is saved at
 * CFA + bp_offset, EMU_ORC_REG_UNDEFINED when rbp still holds it. */
struct emu_orc_entry {
    int32_t sp_offset;
    int32_t bp_offset;
    uint8_t sp_reg;
    uint8_t bp_reg;
    uint8_t type;
    uint8_t pad;
};

/* A task's function-graph return stack, for the unwinders (see "function
 * exits" below): ret is the return trampoline (0: exits are not traced, no
 * address is translated), stack/size the task's return stack as the guest
 * holds it (NULL/0: none). */
struct emu_graph {
    uint64_t ret;
    const uint8_t *stack;
    uint64_t size;
};

struct emu_walk_in {
    uint64_t rip;
    uint64_t rsp;
    uint64_t rbp;
    int32_t preempted;   /* stopped at an arbitrary instruction, not at a switch point */
    int32_t max_entries; /* capacity of out[]; one more entry makes the walk TOO_DEEP */
    uint64_t end_ret;    /* return address of the task's entry frame */
    uint64_t end_slot;   /* stack address that must hold end_ret */
    struct emu_graph graph;  /* the task's return stack: see "function exits" below */
};

int emu_walk_fp(const uint8_t *stack, uint64_t lo, uint64_t hi,
                const struct emu_range *text, int ntext,
                const struct emu_walk_in *in, uint64_t *out, int *nout);

int emu_walk_orc(const uint8_t *stack, uint64_t lo, uint64_t hi,
                 const struct emu_range *text, int ntext,
                 const uint64_t *orc_ip, const struct emu_orc_entry *orc, int norc,
                 const struct emu_walk_in *in, uint64_t *out, int *nout);

/* Index of the first address that lies in one of the sorted, disjoint
 * ranges, or -1. */
int emu_ranges_hit(const uint64_t *addrs, int n, const struct emu_range *ranges, int nranges);

/* Ksplice-style conservative scan: the first 8-byte aligned stack word in
 * [sp, hi) whose value lies in one of the ranges; its address in *where.
 * Returns 1 on a hit, 0 on none, EMU_EINVAL on bad arguments. */
int emu_stack_scan(const uint8_t *stack, uint64_t lo, uint64_t hi, uint64_t sp,
                   const struct emu_range *ranges, int nranges, uint64_t *where,
                   uint64_t *value, const struct emu_graph *graph);

/* ---- the core: one per machine -------------------------------------------- */
struct emu_core;

const char *emu_build_stamp(void);
uintptr_t emu_uc_hook_add_address(void);
int emu_last_uc_error(struct emu_core *core);

struct emu_core *emu_core_new(uintptr_t uch, int flags, int event_capacity);
void emu_core_free(struct emu_core *core);

/* Host-backed guest memory, owned by the core (freed with it); or, with
 * emu_map_host, memory the caller owns (page aligned, size bytes, kept
 * alive until after emu_core_free: the core never frees it). Either must
 * be private anonymous memory (malloc'd or mapped so): a snapshot's
 * restore may drop its pages with MADV_DONTNEED (csrc/snapshot.c). */
int emu_map(struct emu_core *core, uint64_t addr, uint64_t size, int prot);
int emu_map_host(struct emu_core *core, uint64_t addr, uint64_t size, int prot, uint8_t *host);
uint8_t *emu_host_ptr(struct emu_core *core, uint64_t addr, uint64_t size);

/* Executable region and its instruction-start bitmap (bit i: an instruction
 * starts at base + i). Virtual time counts instructions with it. */
int emu_add_code(struct emu_core *core, uint64_t base, uint64_t size, const uint8_t *bitmap);

/* Tasks: one saved CPU context each. */
int emu_tasks_init(struct emu_core *core, int ntasks);
int emu_switch(struct emu_core *core, int tid);  /* save the loaded task, load tid */
int emu_current(struct emu_core *core);
int emu_task_set_state(struct emu_core *core, int tid, int state);

/* Sites and their stacks of replacements. */
int emu_site_add(struct emu_core *core, uint64_t addr, int func_id);
int emu_site_set_entries(struct emu_core *core, int site, const struct emu_entry *entries, int n);
int emu_site_set_poke(struct emu_core *core, int site, int poke);
/* Each site's own trampoline: site i's at base + i * EMU_STUB_SIZE, in the
 * mapped [base, base + size) (base aligned to EMU_STUB_SIZE). An enabled
 * site is `call <its trampoline>`; the core writes it, and keeps the
 * function it jumps to the one klp_ftrace_handler would choose for the
 * loaded task (csrc/redirect.c). Once; sites beyond size are refused
 * (EMU_EFULL). Without it, sites have no trampolines. */
#define EMU_STUB_SIZE 32
int emu_set_stubs(struct emu_core *core, uint64_t base, uint64_t size);

/* Writes to text also drop the translated code of that range. */
int emu_text_write(struct emu_core *core, uint64_t addr, const uint8_t *data, size_t len);

/* Instructions whose answer is not the guest's (sysinsn.c; the twin is
 * emu/engine/sysinsn.py). emu_sysinsn_add hooks the instruction of len
 * bytes at addr: rdtsc/rdtscp answer the virtual clock, rdrand/rdseed the
 * core's random state (arg = register number 0..15 | operand bytes << 8),
 * a privileged one faults, a stack check (placed after an instruction that
 * moves rsp far) faults when rsp leaves the task's stack. Without
 * EMU_FLAG_ACCEL_C it hooks nothing (the twin does). */
#define EMU_SI_RDTSC       1
#define EMU_SI_RDTSCP      2
#define EMU_SI_RDRAND      3
#define EMU_SI_RDSEED      4
#define EMU_SI_PRIVILEGED  5
#define EMU_SI_STACK_CHECK 6
int emu_sysinsn_add(struct emu_core *core, uint64_t addr, uint32_t len, int kind, int arg);
int emu_task_set_stack(struct emu_core *core, int tid, uint64_t lo, uint64_t hi);
void emu_rng_seed(struct emu_core *core, uint64_t seed);
uint64_t emu_rng_state(struct emu_core *core);
void emu_cpuid(uint32_t leaf, uint32_t sub, uint32_t cpu, uint32_t out[4]);
/* During a run: the instruction at addr retired and the task goes on at next
 * (the rest of its block is taken off the clock). */
int emu_skip_insn(struct emu_core *core, uint64_t addr, uint64_t next);
/* During a run: a fault found by a Python hook (kind EMU_FAULT_*); stops the run. */
int emu_report_fault(struct emu_core *core, int kind, uint64_t rip, uint64_t addr);

/* Running. */
uint64_t emu_clock(struct emu_core *core);
uint64_t emu_now(struct emu_core *core, uint64_t addr);  /* clock at an instruction of the current block */
void emu_set_clock(struct emu_core *core, uint64_t clock);
uint64_t emu_retired(struct emu_core *core);             /* instructions executed by every emu_run so far */
int emu_run(struct emu_core *core, uint64_t budget, int precise, struct emu_stop *stop);
void emu_request_stop(struct emu_core *core);

/* Events. */
int emu_event_push(struct emu_core *core, int kind, int task, int64_t a, int64_t b, uint64_t c,
                   uint64_t clock);
int emu_events_take(struct emu_core *core, struct emu_event *out, int max);
/* The ring itself (its first emu_events_pending records are the pending
 * events), and dropping its first n: a caller that keeps the records copies
 * them straight from the ring, once. */
const struct emu_event *emu_events_ring(struct emu_core *core);
int emu_events_drop(struct emu_core *core, int n);
int emu_events_pending(struct emu_core *core);
/* The events of ev[0..n) whose kind is kind, in order: the first
 * min(*count, cap) copied into out (NULL when cap is 0), *count = how many
 * there are. A drained trace is read for one kind without unpacking the
 * others, and the selected records unpack in one pass. */
int emu_events_of_kind(const struct emu_event *ev, size_t n, int32_t kind, struct emu_event *out, size_t cap,
                       size_t *count);

/* Only events whose kind k (0..63) has bit k set in the mask are recorded
 * (kinds from 64 on always are); the others are only counted. Every kind is
 * recorded by default. Returns the previous mask. */
uint64_t emu_set_event_mask(struct emu_core *core, uint64_t mask);
uint64_t emu_events_dropped(struct emu_core *core);

/* ---- stack checks of many tasks in one call --------------------------------
 * What a consistency model asks of each task's stack: walk it (or, for
 * Ksplice, scan it) and find the first entry that lies in the ranges being
 * checked. emu_check_stacks does it for many tasks in one call, reading each
 * task's rip/rsp/rbp from its saved context (from the engine for the loaded
 * task) and its stack from host memory, so the cost of crossing cffi is paid
 * once per batch rather than once per task. emu/engine/unwind.py check_stack() is
 * the twin of one task's check.
 */
#define EMU_UNWIND_FP   0
#define EMU_UNWIND_ORC  1
#define EMU_UNWIND_SCAN 2   /* entries: rip, then the first word at or above rsp in a checked range */

struct emu_stack_task {
    int32_t tid;
    int32_t preempted;   /* 0 or 1; negative: the scheduler's record of it (struct emu_sched_task) */
    uint64_t lo;         /* the task's stack [lo, hi): one mapped region */
    uint64_t hi;
    uint64_t end_ret;    /* the entry frame, as in struct emu_walk_in */
    uint64_t end_slot;
};

struct emu_stack_cfg {
    int32_t kind;                    /* EMU_UNWIND_* */
    int32_t max_entries;             /* entries per task (>= 1, >= 2 to scan) */
    const struct emu_range *text;    /* sorted, disjoint: known code */
    int32_t ntext;
    int32_t norc;
    const uint64_t *orc_ip;
    const struct emu_orc_entry *orc;
    uint64_t empty_lo;               /* a walk whose rip lies in [empty_lo, empty_hi) */
    uint64_t empty_hi;               /* has no kernel frame: (WALK_OK, rip) */
    const struct emu_range *check;   /* sorted, disjoint: what must not be on the stack */
    int32_t ncheck;
    int32_t reliable;                /* an unreliable walk fails the check too */
    uint64_t regs_lo;                /* a rip in [regs_lo, regs_hi) is at a register frame */
    uint64_t regs_hi;                /* (the sites' trampolines): fp walks are PREEMPTED there */
};

struct emu_stack_result {
    int32_t code;    /* EMU_WALK_*, or a negative EMU_E* for this task alone */
    int32_t off;     /* this task's entries are entries[off .. off + n) */
    int32_t n;
    int32_t hit;     /* index of the first entry in a checked range, or -1 */
    uint64_t rip;
    uint64_t rsp;
    uint64_t rbp;
    uint64_t where;  /* scan: stack address of the word that hit, else 0 */
};

/* Check tasks[0..n). entries has room for n * cfg->max_entries words; the
 * tasks' entries are packed one after the other in task order. A task fails
 * the check when an entry lies in a checked range, when its walk was too
 * deep, when (cfg->reliable) its code is not EMU_WALK_OK, or when it got a
 * negative code (a bad tid, or a preempted flag to read from the scheduler
 * before emu_sched_init: EMU_EINVAL; a stack that is not one mapped
 * region: EMU_ENOENT). Returns how many tasks failed, or EMU_EINVAL for a
 * bad cfg (nothing is written then). */
int emu_check_stacks(struct emu_core *core, const struct emu_stack_cfg *cfg,
                     const struct emu_stack_task *tasks, int n,
                     uint64_t *entries, struct emu_stack_result *out);

/* ---- the scheduler (sched.c; its Python twin is emu/engine/sched.py) -------
 * The scheduling state is shared with Python as the structs below: the
 * globals, one record per task and per CPU's idle task (the idle task of
 * CPU i is record ntasks + i), one record per CPU, and each CPU's run queue
 * (ntasks slots of task ids). They live in one block the caller provides
 * (emu_sched_bytes() long, 8-byte aligned; it must outlive the core, which
 * never frees it); emu/engine/core.py reads them by field name. Python
 * changes them only through emu_sched_set_*, which check every value
 * (index ranges, states, CPU numbers) and return EMU_EINVAL for a bad one,
 * so the loop never follows a bad index. emu_sched_run runs slices until
 * Python has something to do and says what (EMU_SR_*). */
#define EMU_EV_KERNEL_EXIT  16   /* task returned to user */
#define EMU_EV_SAFE_POINT   17   /* kthread safe point */
#define EMU_EV_SLEEP        18   /* a = wake time or -1 */
#define EMU_EV_WAKE         19   /* a = 1 if woken early (signal) */
#define EMU_EV_PATCH_STATE  20   /* a = new patch state */
#define EMU_EV_YIELD        21
#define EMU_EV_EXIT         22   /* a = exit code */
#define EMU_EV_SCHED_IN     23   /* a = cpu */
#define EMU_EV_TRANSITION   24   /* a = transition event code, b = patch index */
#define EMU_EV_STOP_MACHINE 25   /* a = 1 when every CPU stopped, 0 when released */
#define EMU_EV_SCHED_OUT    26   /* a = cpu, b = 1 if preempted: the task left the CPU */
#define EMU_EV_MODULE       27   /* a = what became of a module (emu/machine/machine.py MODULE_*), b = its image index */

/* The hypercalls the C core handles. Their one home is the guest's
 * header emu/include/lpemu.h (LPEMU_HC_*); tests/test_machine.py holds
 * these copies to it. */
#define EMU_HC_EXIT           0
#define EMU_HC_SLEEP          1
#define EMU_HC_YIELD          2
#define EMU_HC_RETURN_TO_USER 3
#define EMU_HC_SAFE_POINT     4
#define EMU_HC_OBSERVE        5   /* handled in the slicer (csrc/slicer.c): an EMU_EV_OBSERVE */

struct emu_sched_globals {
    int64_t ntasks;       /* fixed by emu_sched_init */
    int64_t ncpus;        /* fixed by emu_sched_init */
    int64_t quantum;      /* > 0 */
    int64_t preempt;      /* 0 none, 1 voluntary, 2 full */
    int64_t tick;         /* > 0 */
    int64_t lockup;       /* >= 0 */
    int64_t policy_rr;    /* 1: pick the first runnable task here; 0: ask (EMU_SR_PICK) */
    int64_t notify_all;   /* every switch point and idle slice goes to Python */
    int64_t each_slice;   /* come back after every slice */
    int64_t sm;           /* stop_machine in progress: Python's scheduler runs */
    int64_t rr;           /* the CPU whose slice comes next */
    int64_t round_ran;    /* guest code ran in this round */
    int64_t slice_left;   /* budget of a slice cut by `until` */
    int64_t inslice;      /* a slice is in progress on CPU rr ... */
    int64_t stask;        /* ... for this task ... */
    int64_t remain;       /* ... with this much budget left */
    int64_t pick;         /* the task Python picked (EMU_SR_PICK), or -1 */
    int64_t next_wake;    /* no sleeper wakes before this (-1: none) */
    int64_t check_sm;     /* resuming after timers: leave the slice if stop_machine began */
    int64_t after;        /* a slice ended: the round step is due */
    int64_t preemptions;
    int64_t rtask;        /* what a return is about (-1: none) */
    int64_t rcpu;
    int64_t live;         /* tasks not exited */
    int64_t jitter;       /* 1: a slice's length is drawn from jstate in 1..quantum */
    int64_t jstate;       /* the draw's generator (64-bit LCG), seeded by the run */
    int64_t watch_hit;    /* a watched task left its CPU in this call: come back at the round step */
    int64_t quiet;        /* the watchers' hooks would do nothing now: notify flags are not acted on */
    int64_t notify_yield; /* every cond_resched goes to Python (the probe hears where tasks pass one) */
};

struct emu_sched_task {
    int64_t state;          /* EMU_TS_* */
    int64_t kind;           /* EMU_TK_* */
    int64_t cpu;
    int64_t wake_at;        /* -1: until woken */
    int64_t interruptible;
    int64_t preempted;
    int64_t need_resched;
    int64_t notify;         /* TIF_PATCH_PENDING: its switch points go to Python */
    int64_t kernel_entries;
    int64_t since;          /* instructions since the last scheduling point */
    int64_t exit_code;
    int64_t exited;         /* exit code set */
    int64_t watch;          /* its leaving a CPU brings the loop back (EMU_SR_SLICE) */
};

struct emu_sched_cpu {
    int64_t current;        /* -1: idle */
    int64_t slices;
    int64_t rqlen;          /* set with the queue (emu_sched_set_queue) */
    int64_t work;           /* a kernel thread waits for this CPU (EMU_SR_WORK when it gets it) */
    int64_t goal;           /* > 0: come back once slices reaches it on every CPU with a goal */
};

/* Where the parts of the block lie. */
struct emu_sched {
    struct emu_sched_globals *g;
    struct emu_sched_task *tasks;   /* ntasks + ncpus */
    struct emu_sched_cpu *cpus;     /* ncpus */
    int64_t *rq;                    /* CPU i's queue is rq[i * ntasks ...] */
};

/* Field numbers for emu_sched_set_global / emu_sched_set_task / emu_sched_set_cpu. */
#define EMU_SG_QUANTUM      2
#define EMU_SG_PREEMPT      3
#define EMU_SG_TICK         4
#define EMU_SG_LOCKUP       5
#define EMU_SG_POLICY_RR    6
#define EMU_SG_NOTIFY_ALL   7
#define EMU_SG_EACH_SLICE   8
#define EMU_SG_SM           9
#define EMU_SG_RR          10
#define EMU_SG_ROUND_RAN   11
#define EMU_SG_SLICE_LEFT  12
#define EMU_SG_INSLICE     13
#define EMU_SG_STASK       14
#define EMU_SG_REMAIN      15
#define EMU_SG_PICK        16
#define EMU_SG_NEXT_WAKE   17
#define EMU_SG_CHECK_SM    18
#define EMU_SG_AFTER       19
#define EMU_SG_PREEMPTIONS 20
#define EMU_SG_RTASK       21
#define EMU_SG_RCPU        22
#define EMU_SG_LIVE        23
#define EMU_SG_JITTER      24
#define EMU_SG_JSTATE      25
#define EMU_SG_WATCH_HIT   26
#define EMU_SG_QUIET       27
#define EMU_SG_NOTIFY_YIELD 28

#define EMU_TF_STATE          0
#define EMU_TF_KIND           1
#define EMU_TF_CPU            2
#define EMU_TF_WAKE_AT        3
#define EMU_TF_INTERRUPTIBLE  4
#define EMU_TF_PREEMPTED      5
#define EMU_TF_NEED_RESCHED   6
#define EMU_TF_NOTIFY         7
#define EMU_TF_KERNEL_ENTRIES 8
#define EMU_TF_SINCE          9
#define EMU_TF_EXIT_CODE     10
#define EMU_TF_EXITED        11
#define EMU_TF_WATCH         12

#define EMU_CF_CURRENT 0
#define EMU_CF_SLICES  1
#define EMU_CF_WORK    2
#define EMU_CF_GOAL    3

#define EMU_TS_RUNNABLE 0
#define EMU_TS_SLEEPING 1
#define EMU_TS_EXITED   2
#define EMU_TK_USER     0
#define EMU_TK_KTHREAD  1

#define EMU_SR_TIMER         1   /* a Python timer is due */
#define EMU_SR_UNTIL         2   /* the clock reached `until` */
#define EMU_SR_DONE          3   /* every task has exited */
#define EMU_SR_KERNEL_EXIT   4   /* rtask returned to user: hooks, then the switch tail */
#define EMU_SR_COND_RESCHED  5   /* rtask yielded: hooks, then the switch tail */
#define EMU_SR_SAFE_POINT    6   /* rtask passed a safe point: hooks */
#define EMU_SR_IDLE          7   /* rcpu ran an idle slice: hooks */
#define EMU_SR_HYPERCALL     8   /* rtask made a hypercall the scheduler does not know */
#define EMU_SR_FAULT         9   /* rtask faulted (the stop says how) */
#define EMU_SR_KTHREAD_RET  10   /* kthread rtask returned to user */
#define EMU_SR_LOCKUP       11   /* rtask ran too long without a scheduling point */
#define EMU_SR_EVENTS       12   /* the event ring is full */
#define EMU_SR_PICK         13   /* choose among rcpu's runnable tasks (not rtask) */
#define EMU_SR_SLICE        14   /* a slice ended (each_slice), a watched task left its CPU, or every goal was reached */
#define EMU_SR_IDLE_ROUND   15   /* a round ran no guest code (each_slice or a goal): Python moves time */
#define EMU_SR_HANG         16   /* every task asleep with nothing to wake it */
#define EMU_SR_END          17   /* nothing can happen any more */
#define EMU_SR_SM           18   /* stop_machine: Python's scheduler must run */
#define EMU_SR_WORK         19   /* rcpu is free for the kernel thread waiting for it */

/* The most tasks and CPUs a scheduler state holds (emu_sched_bytes). */
#define EMU_SCHED_MAX_TASKS 1048576
#define EMU_SCHED_MAX_CPUS  4096
size_t emu_sched_bytes(int ntasks, int ncpus);   /* 0 for bad counts */
/* Records the event ring must hold beyond one per task and CPU: the loop
 * keeps room for a round of every task (EMU_ERANGE from emu_sched_init
 * otherwise: a ring without it would be full before anything ran). */
#define EMU_SCHED_RING_ROOM 128
int emu_sched_init(struct emu_core *core, int ntasks, int ncpus, void *mem, size_t size);
int emu_sched_layout(struct emu_core *core, struct emu_sched *out);
int emu_sched_set_global(struct emu_core *core, int field, int64_t value);
int emu_sched_set_task(struct emu_core *core, int tid, int field, int64_t value);
int emu_sched_set_cpu(struct emu_core *core, int cpu, int field, int64_t value);
/* CPU cpu's run queue: n distinct task ids (not idle tasks) in order. */
int emu_sched_set_queue(struct emu_core *core, int cpu, const int64_t *tids, int n);
int emu_sched_run(struct emu_core *core, int64_t until, int64_t deadline, struct emu_stop *stop);
/* Between runs: wake the sleepers whose time has come, as a round's top
 * does (EMU_EFULL, nothing done, when the ring may not hold them). */
int emu_sched_fire_wakes(struct emu_core *core);

/* ---- snapshots (snapshot.c) ------------------------------------------------
 * Memory, task contexts, patch states, scheduler state, clock and site
 * entries. Restore refuses (EMU_ERANGE) a snapshot of another layout:
 * other regions (address, size, permissions), tasks or scheduler counts;
 * sites added since are removed. Pending events are dropped. */
struct emu_snapshot;
struct emu_snapshot *emu_snapshot_take(struct emu_core *core);
int emu_snapshot_restore(struct emu_core *core, const struct emu_snapshot *snap);
void emu_snapshot_free(struct emu_snapshot *snap);

/* ---- function exits (the function-graph tracer; redirect.c, unwind.c) ------
 * Every traced entry (an EMU_EV_ENTRY with its rsp) also diverts the
 * function's return address, at rsp, to the return trampoline and keeps the
 * real one on the task's return stack, as the kernel's function-graph tracer
 * does with return_to_handler and current->ret_stack. The return trampoline
 * records EMU_EV_RETURN and goes on at the real address; it takes no virtual
 * time (the slicer counts its block as no instruction and never stops
 * there), so a run's entries, clocks and schedule are the same with exits
 * traced or not. Unwinders translate a diverted slot back with the return
 * stack (emu_graph_ret_addr, as ftrace_graph_ret_addr), and an address they
 * cannot translate is no return address at all (unreliable).
 *
 * A task's return stack lives in guest memory (so snapshots keep it), at
 * base + tid * stride: a header of EMU_GRAPH_HEADER bytes (word 0: depth,
 * word 1: calls left untraced because it was full), then depth records of
 * EMU_GRAPH_RECORD bytes: slot (stack address of the diverted return
 * address), ret (the real one), function id, version. Everything read from
 * it is checked: a depth beyond what the stride holds is treated as full
 * and translates nothing.
 */
/* EMU_EV_RETURN: the function returned (a = function id, b = version, c = rax).
 * EMU_EV_UNWOUND: its frame was left without a return, by a longjmp-like
 * stack switch past it (a, b as above, c = its slot).
 * EMU_EV_RET_UNTRACED: the return stack was full, this call's return is not
 * traced; its entry is (a, b as above, c = rsp at entry).
 * EMU_FAULT_BAD_RETURN: the return trampoline was reached with no return
 * stack record for the slot it returned from. */
#define EMU_EV_RETURN       4
#define EMU_EV_UNWOUND      5
#define EMU_EV_RET_UNTRACED 6
/* EMU_EV_ARGS, EMU_EV_ARGS_HI: right after every EMU_EV_ENTRY (same task,
 * same clock), the six argument registers at the function's entry: rdi, rsi,
 * rdx (a, b, c) then rcx, r8, r9 (a, b, c; a and b as int64 bit patterns). */
#define EMU_EV_ARGS         7
#define EMU_EV_ARGS_HI      8
#define EMU_FAULT_BAD_RETURN 11

#define EMU_GRAPH_HEADER 16
#define EMU_GRAPH_RECORD 32

/* Turn exits on: ret is the return trampoline (its instruction must be a
 * `jmp qword ptr [rip + d]`, its slot mapped: EMU_EINVAL otherwise, with
 * accel C), the return stacks
 * are at base + tid * stride for every task of emu_tasks_init (mapped
 * already). Call once, after emu_tasks_init. */
int emu_graph_init(struct emu_core *core, uint64_t ret, uint64_t base, uint64_t stride);

/* ftrace_graph_ret_addr: the real return address for the word value read at
 * stack address slot: value itself unless it is graph->ret; else the newest
 * record for slot whose ret is not the trampoline (a tail call leaves one
 * that is), or 0 when there is none. */
uint64_t emu_graph_ret_addr(const struct emu_graph *graph, uint64_t value, uint64_t slot);


/* ---- a digest of bytes (digest.c) --------------------------------------- */
/* A 64-bit digest of data[0..n) (a run's trace hash is made of it); the
 * twin is emu/engine/digest.py. NULL data digests as no bytes. */
uint64_t emu_digest(const void *data, size_t n, uint64_t seed);


/* ---- judging a finished trace (handover.c, units.c) -------------------- */
/* Passes over a run's events (struct emu_event, as drained) that judge it;
 * each is the fast path of a module of emu/runs with the same results,
 * whatever the events hold (a damaged trace included). */

/* A value handover (emu/runs/handover.py): the consumer's entry (task,
 * clock, fid, version) received `value` in argument register `arg`,
 * returned by (pfid, pversion) at produced_at in the same task and unit. */
struct emu_handover {
    uint64_t clock;
    uint64_t produced_at;
    uint64_t value;
    int64_t fid;
    int64_t version;
    int64_t pfid;
    int64_t pversion;
    int32_t task;
    int32_t arg;
};

/* The argument registers a version of a function takes (bit k: register
 * k of rdi, rsi, rdx, rcx, r8, r9; emu/images/argregs.py). */
struct emu_hregs {
    int64_t fid;
    int64_t version;
    int64_t mask;
};

/* Every handover of ev[0..n): carriers are the pairs (cfid[i], cidx[i]),
 * function id and the index of a patch that carries it, sorted; regs
 * (sorted by fid, version) the registers each version takes, all six for
 * a version it does not name; stack[0..nstack) the indexes of the patches
 * that stack on older ones (a version of theirs ran with every older patch
 * that carries it applied). Writes the first min(*found, cap) into out,
 * *found = how many there are. */
int emu_handover_find(const struct emu_event *ev, size_t n, const int64_t *cfid, const int64_t *cidx,
                      size_t ncar, const struct emu_hregs *regs, size_t nregs, const int64_t *stack,
                      size_t nstack, struct emu_handover *out, size_t cap, size_t *found);

/* A unit of a task (emu/runs/oracle.py, "syscall" units) that no
 * configuration explains: its number among the task's units, whether the
 * trace ended inside it, the clocks of its first entry and of its end, and
 * its entries: idx[first .. first + count) are their event indexes. */
struct emu_unit {
    uint64_t start;
    uint64_t end;
    int64_t number;
    uint64_t first;
    uint64_t count;
    int32_t task;
    int32_t unfinished;
};

/* The inconsistent system-call units of ev[0..n): entries of the functions
 * fids[0..nfids) (sorted) between a task's unit ends, judged against the
 * configurations: configuration k maps conf_fid[i] to conf_ver[i] for i in
 * [conf_off[k], conf_off[k + 1]) (fids sorted within one), other functions
 * to 0. Writes the first min(*found, cap) units into out and their entries'
 * indexes into idx (room for n), *found = how many, *units = how many units
 * the trace has. */
int emu_units_check(const struct emu_event *ev, size_t n, const int64_t *fids, size_t nfids,
                    const int64_t *conf_fid, const int64_t *conf_ver, const size_t *conf_off, size_t nconfs,
                    struct emu_unit *out, size_t cap, uint64_t *idx, size_t *found, uint64_t *units);

/* The promise oracle (emu/runs/promise.py, whose docstring has the rules).
 * Models (EMU_PM_*), the flags of a route (the b of EMU_EV_PATCH_STATE,
 * an index into emu/machine/task.py's ROUTES: routes[b]) and a breach, as
 * a record (clock, code, task, fid, version, x, y) whose codes and fields
 * promise.py's B_* describe. */
#define EMU_PM_IMMEDIATE 1
#define EMU_PM_STOP      2      /* stop_machine, Ksplice */
#define EMU_PM_LIVEPATCH 3
#define EMU_PM_KGRAFT    4
#define EMU_PR_INIT        1    /* init or complete: no switch */
#define EMU_PR_FORCE       2
#define EMU_PR_ALLOWED     4    /* the model allows it */
#define EMU_PR_CHECKED     8    /* the stack holds no checked function after it */
#define EMU_PR_IDLE       16
#define EMU_PR_KERNEL_EXIT 32
#define EMU_PR_SAFE_POINT 64
#define EMU_PR_STACK     128
/* breach codes: x, y say what each names (promise.py's describe()) */
#define EMU_PB_TOGETHER      1   /* x = patch */
#define EMU_PB_LEFT_BEHIND   2   /* x = the version the enabled patches give */
#define EMU_PB_EARLY         3   /* x = patch, y = the task's patch state */
#define EMU_PB_UNIVERSE      4   /* x = patch */
#define EMU_PB_STOPPED       5   /* x = patch */
#define EMU_PB_SWITCHED_WITH 6   /* x = patch; fid, version: the frame found */
#define EMU_PB_NO_SWITCHES   7   /* x = route */
#define EMU_PB_ROUTE         8   /* x = route */
#define EMU_PB_KIND          9   /* x = route */
#define EMU_PB_STACK        10   /* x = route; fid, version: the frame found */
#define EMU_PB_RUNNING      11   /* x = cpu */

struct emu_breach {
    uint64_t clock;
    int64_t fid;
    int64_t version;
    int64_t x;
    int64_t y;
    int32_t code;
    int32_t task;
};

/* What the oracle knows besides the trace: the model, the transition
 * event codes (emu/models/base.py's T_*), the functions each patch carries
 * (idx, fid, force; sorted by idx then fid), each patch's replace flag
 * (sorted by idx), the routes' flags, each task's kind (0 user, 1 kthread,
 * other: idle), and which versions of functions can leave by a tail call
 * (fid, version, tail; sorted). */
struct emu_pcarry {
    int64_t idx;
    int64_t fid;
    int64_t force;
};
struct emu_ppatch {
    int64_t idx;
    int64_t replace;
};
struct emu_ptail {
    int64_t fid;
    int64_t version;
    int64_t tail;
};
struct emu_promise {
    int32_t model;
    int32_t t_start;
    int32_t t_complete;
    int32_t t_switch;
    int32_t bp_blind;       /* kpatch's frame-pointer check: a preempted task's innermost two frames unseen */
    int32_t unpatch_active; /* unpatching checks the active version of each function too (kpatch) */
    const struct emu_pcarry *carry;
    size_t ncarry;
    const struct emu_ppatch *patch;
    size_t npatch;
    const uint8_t *routes;
    size_t nroutes;
    const uint8_t *kinds;
    size_t ntasks;
    const struct emu_ptail *tail;
    size_t ntail;
};

/* Every breach of ev[0..n): the first min(*found, cap) into out, *found =
 * how many. EMU_ENOENT when a check needs a tail flag the table lacks:
 * need[0], need[1] = its fid and version (run again with it). */
int emu_promise_scan(const struct emu_event *ev, size_t n, const struct emu_promise *p, struct emu_breach *out,
                     size_t cap, size_t *found, int64_t *need);

#endif /* EMU_H */
