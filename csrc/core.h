/*
 * core.h - the C core's internal state, shared by core.c, slicer.c,
 * redirect.c, sysinsn.c, text.c and tlb.c. Not part of the cffi API (that is emu.h).
 */
#ifndef EMU_CORE_H
#define EMU_CORE_H

#include <stdbool.h>
#include <unicorn/unicorn.h>
#include "emu.h"

/* Guest memory regions: every task stack is one, so a machine with many
 * tasks has many. They are kept sorted by address in a growing array and
 * looked up by binary search (with a one-entry cache for the hooks, which
 * tend to hit the same region again). */
#define EMU_MAX_REGIONS 65536
#define EMU_MAX_CODE    64
#define EMU_MAX_SITES   4096
#define EMU_TCG_BUFFER  (4u << 20)   /* bytes of translated code before Unicorn flushes it */
#define EMU_ICACHE_BITS 10
#define EMU_ICACHE      (1 << EMU_ICACHE_BITS)  /* blocks whose instruction count is remembered */

/* Guest memory backed by host memory the core owns (uc_mem_map_ptr). */
struct emu_region {
    uint64_t addr;
    uint64_t size;
    uint8_t *host;      /* page aligned */
    void *alloc;        /* what to free */
    int prot;
};

/* An executable range with one bit per byte: set where an instruction starts. */
struct emu_code {
    uint64_t base;
    uint64_t size;
    uint64_t *bits;
};

struct emu_core;
struct sched;           /* sched.c's loop */

struct emu_site {
    struct emu_core *core;  /* hooks get the site as user data */
    uint64_t addr;
    int32_t func_id;
    int32_t idx;            /* its index: its own trampoline is stubs + idx * EMU_STUB_SIZE */
    int32_t trans;          /* its index in core->trans, or -1 */
    int32_t n;              /* entries in use */
    int32_t poke;           /* EMU_POKE_*: the instruction a text_poke_bp is writing */
    const uint8_t *code;    /* host address of the site's 5 bytes (NULL: look it up) */
    uc_hook watch;
    struct emu_entry entries[EMU_SITE_MAX_ENTRIES];
};

struct emu_core {
    uc_engine *uc;
    int flags;
    uc_err last_err;

    struct emu_region *regions;     /* sorted by addr, disjoint */
    int nregions;
    int cap_regions;
    int last_region;                /* index of the last lookup's hit */
    struct emu_code code[EMU_MAX_CODE];
    int ncode;
    int last_code;          /* index of the last code_of hit */
    struct emu_icache {     /* instructions per block, for the block hook */
        uint64_t addr;
        uint32_t size;
        uint32_t n;
    } icache[EMU_ICACHE];

    /* tasks */
    uc_context **ctx;
    int8_t *state;          /* per-task patch state, EMU_UNDEFINED/UNPATCHED/PATCHED */
    int ntasks;
    int cur;                /* loaded task, -1 for none */

    /* sites, and the same pointers sorted by address for lookups */
    struct emu_site *sites[EMU_MAX_SITES];
    struct emu_site *by_addr[EMU_MAX_SITES];
    int nsites;
    /* each site's own trampoline (redirect.c): site i's at stubs + i *
     * EMU_STUB_SIZE, in [stubs, stubs + stubs_size) (0: no trampolines);
     * the sites whose choice depends on the loaded task (in transition),
     * whose slots follow it */
    uint64_t stubs, stubs_size;
    uint8_t *stubs_host;
    struct emu_site *trans[EMU_MAX_SITES];
    int ntrans;

    uc_hook h_block, h_syscall, h_intr, h_invalid, h_tlb;

    /* function exits (redirect.c): the return trampoline, its jump slot,
     * and each task's return stack (host address, stride bytes) */
    uint64_t graph_ret;
    uint8_t *graph_slot;
    uint64_t graph_bad;
    uint64_t graph_stride;
    uint8_t **graph_host;

    /* events */
    struct emu_event *ev;
    int ev_cap;
    int ev_n;
    uint64_t ev_mask;       /* bit k set: events of kind k are recorded */
    uint64_t ev_dropped;    /* events left out by the mask */

    /* run state: the clock counts retired instructions; during emu_run it
     * is clock + executed, and the current block is [blk_addr, +blk_size)
     * with blk_n instructions, counted when it was entered. */
    uint64_t clock;
    uint64_t retired;       /* instructions every emu_run of this engine executed (idle jumps and
                             * clock settings left out); snapshots do not restore it */
    uint64_t budget;
    uint64_t executed;
    uint64_t base;          /* executed when the scheduler last took a hypercall inline: the
                             * run goes on from there as a new run would (its first block runs) */
    int precise;
    uint64_t blk_addr;
    uint32_t blk_size;
    uint64_t blk_n;
    int cut;                /* the budget ran out at the entry of block blk_* */
    int stepping;           /* re-running a cut block under the trap flag (slicer.c) */
    struct emu_stop *stop;  /* where the stop reason goes during emu_run */

    /* scheduler state (sched.c), shared with Python: the block the caller
     * gave emu_sched_init (NULL before), and where its parts lie */
    void *sched_mem;
    size_t sched_bytes;
    struct emu_sched sched;
    struct sched *in_sched; /* during emu_sched_run: its loop, for the hypercalls it takes inline */

    /* instructions the emulator answers or refuses (sysinsn.c) */
    uint64_t rng;                   /* rdrand/rdseed: splitmix64 state */
    struct emu_sysinsn **sysinsn;
    int nsysinsn;
    int cap_sysinsn;
    uint64_t *stk_lo, *stk_hi;      /* each task's stack, for the stack checks */
    uc_hook h_cpuid;
};

/* core.c */
struct emu_region *__emu_region_of(struct emu_core *c, uint64_t addr, uint64_t size);
uint8_t *__emu_ptr(struct emu_core *c, uint64_t addr, uint64_t size);
uint64_t __emu_icount(struct emu_core *c, uint64_t addr, uint64_t size);
uint64_t __emu_block_icount(struct emu_core *c, uint64_t addr, uint32_t size);
uint64_t __emu_nth_insn(struct emu_core *c, uint64_t addr, uint64_t size, uint64_t n);
int __emu_event(struct emu_core *c, int kind, int task, int64_t a, int64_t b, uint64_t cval, uint64_t clock);
void __emu_fault(struct emu_core *c, int kind, uint64_t rip, uint64_t addr, int intno);

/* slicer.c */
int __emu_slicer_install(struct emu_core *c);
void __emu_stepped(struct emu_core *c);

/* sched.c */
int __emu_sched_inline(struct emu_core *c, int64_t nr);

/* redirect.c */
int __emu_redirect_install(struct emu_core *c);
struct emu_site *__emu_site_at(struct emu_core *c, uint64_t addr);
void __emu_redirect_free(struct emu_core *c);
void __emu_graph_of(struct emu_core *c, int tid, struct emu_graph *g);
/* The trampolines' work, for a task about to execute a block of the sites'
 * trampolines, or the return trampoline. */
void __emu_stub_enter(struct emu_core *c, uint64_t addr);
/* The loaded task or its patch state changed: the trampolines' slots that
 * depend on it follow; after a restore, every slot. */
void __emu_slots_follow(struct emu_core *c);
void __emu_slots_reset(struct emu_core *c);
void __emu_graph_return(struct emu_core *c, uint64_t addr);
int __emu_site_rewatch(struct emu_core *c, struct emu_site *s);
int __emu_sites_written(struct emu_core *c, uint64_t addr, uint64_t len);

/* sysinsn.c */
int __emu_sysinsn_install(struct emu_core *c);
void __emu_sysinsn_free(struct emu_core *c);
uint64_t __emu_rng_next(struct emu_core *c);

/* tlb.c */
int __emu_tlb_install(struct emu_core *c);

#endif
