/*
 * sysinsn.c - instructions whose answer does not come from the guest.
 *
 * Unicorn answers rdtsc and rdtscp from the host's clock, rdrand and rdseed
 * from the host's random source and cpuid from its CPU model, so the same
 * (scenario, model, seed) would not be the same run twice. It also runs
 * privileged instructions (mov to cr0/cr3/cr4, wrmsr, lgdt, hlt, in/out,
 * ...) at CPL 0 as if the guest owned the machine, while the machine's
 * state is the emulator's. Here the emulator answers the first kind from
 * the run itself and refuses the second with a fault that names it:
 *
 *   rdtsc, rdtscp  the virtual clock at the instruction (retired
 *                  instructions before it); rdtscp's TSC_AUX (ecx) is the
 *                  task's CPU, as Linux sets it (node 0);
 *   rdrand, rdseed splitmix64 over a state kept in the core (snapshots
 *                  restore it), seeded by the run (emu_rng_seed); CF = 1;
 *   cpuid          a fixed model (emu_cpuid below; docs/guest.md);
 *   privileged     EMU_FAULT_PRIVILEGED at the instruction, which does not run;
 *   stack check    after an instruction that moves rsp further than the
 *                  guard page below every stack (a big frame, alloca, a
 *                  stack switch): rsp must lie in the task's own stack, or
 *                  EMU_FAULT_STACK_OVERFLOW names that instruction. A frame
 *                  bigger than the guard would otherwise write into the
 *                  stack below it, another task's, and the victim would
 *                  fault later for the culprit.
 *
 * Unicorn 2.1.4 hooks only cpuid of these (UC_HOOK_INSN refuses RDTSC and
 * RDTSCP), so the others are found when an image is loaded (emu/engine/
 * sysinsn.py classifies its instructions with capstone) and each gets a
 * code hook on its own address. The hook writes the results, then RIP past
 * the instruction; the rest of the block, counted when it was entered, is
 * taken back off the clock (the block after the instruction is counted when
 * it runs). emu/engine/sysinsn.py is the pure-Python twin of the hooks.
 */
#include <stdlib.h>
#include "core.h"

#define EMU_MAX_SYSINSN 65536

struct emu_sysinsn {
    struct emu_core *core;
    uint64_t addr;
    uint32_t len;
    int32_t kind;
    int32_t arg;
    uc_hook h;
};

/* ---- the random source ------------------------------------------------ */

uint64_t __emu_rng_next(struct emu_core *c)
{
    uint64_t z = (c->rng += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void emu_rng_seed(struct emu_core *c, uint64_t seed)
{
    if (c)
        c->rng = seed;
}

uint64_t emu_rng_state(struct emu_core *c)
{
    return c ? c->rng : 0;
}

/* ---- cpuid: the fixed model ---------------------------------------------- */

/* Leaf 1 edx: fpu tsc msr cx8 cmov mmx fxsr sse sse2; ecx: sse3 cx16 rdrand
 * and the hypervisor bit. Leaf 7 ebx: rdseed. 0x80000001 edx: syscall nx lm
 * rdtscp; ecx: lahf_lm. Only what the emulator runs (and answers itself). */
void emu_cpuid(uint32_t leaf, uint32_t sub, uint32_t cpu, uint32_t out[4])
{
    out[0] = out[1] = out[2] = out[3] = 0;
    switch (leaf) {
    case 0:
        out[0] = 7;
        out[1] = 0x6d65706c;    /* "lpem" */
        out[3] = 0x38782d75;    /* "u-x8" */
        out[2] = 0x34362d36;    /* "6-64" */
        break;
    case 1:
        out[0] = 0x000806f1;    /* family 6, model 0x8f, stepping 1 */
        out[1] = (cpu & 0xff) << 24 | 1 << 16 | 8 << 8;
        out[2] = 1u << 0 | 1u << 13 | 1u << 30 | 1u << 31;
        out[3] = 1u << 0 | 1u << 4 | 1u << 5 | 1u << 8 | 1u << 15 | 1u << 23 | 1u << 24 | 1u << 25
                 | 1u << 26;
        break;
    case 7:
        if (sub == 0)
            out[1] = 1u << 18;
        break;
    case 0x80000000:
        out[0] = 0x80000001;
        break;
    case 0x80000001:
        out[2] = 1u << 0;
        out[3] = 1u << 11 | 1u << 20 | 1u << 27 | 1u << 29;
        break;
    }
}

/* The CPU of the loaded task, from the scheduler's state (0 before it). */
static uint32_t cur_cpu(struct emu_core *c)
{
    int64_t v;

    if (!c->sched_mem || c->cur < 0 || c->cur >= c->sched.g->ntasks)
        return 0;
    v = c->sched.tasks[c->cur].cpu;
    return v >= 0 && v < 256 ? (uint32_t)v : 0;
}

static int hook_cpuid(uc_engine *uc, void *ud)
{
    struct emu_core *c = ud;
    uint64_t rax = 0, rcx = 0, r[4];
    uint32_t out[4];

    uc_reg_read(uc, UC_X86_REG_RAX, &rax);
    uc_reg_read(uc, UC_X86_REG_RCX, &rcx);
    emu_cpuid((uint32_t)rax, (uint32_t)rcx, cur_cpu(c), out);
    r[0] = out[0]; r[1] = out[1]; r[2] = out[2]; r[3] = out[3];
    uc_reg_write(uc, UC_X86_REG_RAX, &r[0]);
    uc_reg_write(uc, UC_X86_REG_RBX, &r[1]);
    uc_reg_write(uc, UC_X86_REG_RCX, &r[2]);
    uc_reg_write(uc, UC_X86_REG_RDX, &r[3]);
    return 1;   /* answered: Unicorn's own cpuid does not run */
}

/* ---- skipping an instruction the emulator answered -------------------------- */

int emu_skip_insn(struct emu_core *c, uint64_t addr, uint64_t next)
{
    uint64_t before;

    if (!c || !c->stop)
        return EMU_EINVAL;
    /* The block holding addr was counted whole when it was entered; what
     * follows addr in it will not run in this block. */
    if (c->blk_n && addr >= c->blk_addr && addr - c->blk_addr < c->blk_size) {
        before = addr == c->blk_addr ? 0 : __emu_icount(c, c->blk_addr, addr - c->blk_addr);
        if (before + 1 < c->blk_n) {
            c->executed -= c->blk_n - (before + 1);
            c->blk_n = before + 1;
        }
    }
    uc_reg_write(c->uc, UC_X86_REG_RIP, &next);
    return EMU_OK;
}

/* x86 register numbers (ModRM order) to Unicorn's. */
static const int gpr[16] = {
    UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RBX,
    UC_X86_REG_RSP, UC_X86_REG_RBP, UC_X86_REG_RSI, UC_X86_REG_RDI,
    UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R11,
    UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15,
};

#define EFLAGS_ARITH 0x8d5ULL   /* CF PF AF ZF SF OF */

static void hook_insn(uc_engine *uc, uint64_t addr, uint32_t size, void *ud)
{
    struct emu_sysinsn *s = ud;
    struct emu_core *c = s->core;
    uint64_t v, rsp = 0, fl = 0, old = 0;
    int reg, width;

    if (!c->stop)
        return;
    switch (s->kind) {
    case EMU_SI_RDTSCP:
        v = cur_cpu(c);
        uc_reg_write(uc, UC_X86_REG_RCX, &v);
        /* fall through */
    case EMU_SI_RDTSC:
        v = emu_now(c, s->addr);
        rsp = v & 0xffffffffULL;
        uc_reg_write(uc, UC_X86_REG_RAX, &rsp);
        rsp = v >> 32;
        uc_reg_write(uc, UC_X86_REG_RDX, &rsp);
        emu_skip_insn(c, s->addr, s->addr + s->len);
        break;
    case EMU_SI_RDRAND:
    case EMU_SI_RDSEED:
        reg = s->arg & 15;
        width = s->arg >> 8;
        v = __emu_rng_next(c);
        if (width == 2) {
            uc_reg_read(uc, gpr[reg], &old);
            v = (old & ~0xffffULL) | (v & 0xffff);
        } else if (width == 4) {
            v &= 0xffffffffULL;
        }
        uc_reg_write(uc, gpr[reg], &v);
        uc_reg_read(uc, UC_X86_REG_EFLAGS, &fl);
        fl = (fl & ~EFLAGS_ARITH) | 1;
        uc_reg_write(uc, UC_X86_REG_EFLAGS, &fl);
        emu_skip_insn(c, s->addr, s->addr + s->len);
        break;
    case EMU_SI_PRIVILEGED:
        __emu_fault(c, EMU_FAULT_PRIVILEGED, s->addr, 0, 0);
        uc_emu_stop(uc);
        break;
    case EMU_SI_STACK_CHECK:
        if (c->cur < 0 || c->cur >= c->ntasks || !c->stk_hi || !c->stk_hi[c->cur])
            break;
        uc_reg_read(uc, UC_X86_REG_RSP, &rsp);
        if (rsp < c->stk_lo[c->cur] || rsp > c->stk_hi[c->cur]) {
            __emu_fault(c, EMU_FAULT_STACK_OVERFLOW, s->addr, rsp, 0);
            uc_emu_stop(uc);
        }
        break;
    }
}

int emu_sysinsn_add(struct emu_core *c, uint64_t addr, uint32_t len, int kind, int arg)
{
    struct emu_sysinsn *s, **grown;
    uint64_t at;
    uc_err err;

    if (!c || !len || len > 15 || addr + len < addr || kind < EMU_SI_RDTSC || kind > EMU_SI_STACK_CHECK)
        return EMU_EINVAL;
    if ((kind == EMU_SI_RDRAND || kind == EMU_SI_RDSEED)
        && (arg < 0 || (arg & 0xf0) || ((arg >> 8) != 2 && (arg >> 8) != 4 && (arg >> 8) != 8)))
        return EMU_EINVAL;
    if (!(c->flags & EMU_FLAG_ACCEL_C))
        return EMU_OK;      /* the Python twin hooks it */
    if (c->nsysinsn == EMU_MAX_SYSINSN)
        return EMU_EFULL;
    if (c->nsysinsn == c->cap_sysinsn) {
        int cap = c->cap_sysinsn ? 2 * c->cap_sysinsn : 16;
        grown = realloc(c->sysinsn, (size_t)cap * sizeof(*grown));
        if (!grown)
            return EMU_ENOMEM;
        c->sysinsn = grown;
        c->cap_sysinsn = cap;
    }
    s = calloc(1, sizeof(*s));
    if (!s)
        return EMU_ENOMEM;
    s->core = c;
    s->addr = addr;
    s->len = len;
    s->kind = kind;
    s->arg = arg;
    /* a stack check runs once the instruction that moved rsp has run */
    at = kind == EMU_SI_STACK_CHECK ? addr + len : addr;
    err = uc_hook_add(c->uc, &s->h, UC_HOOK_CODE, (void *)hook_insn, s, at, at);
    if (!err)
        err = uc_ctl_remove_cache(c->uc, at, at + 1);
    if (err) {
        if (s->h)
            uc_hook_del(c->uc, s->h);
        free(s);
        c->last_err = err;
        return EMU_EUC;
    }
    c->sysinsn[c->nsysinsn++] = s;
    return EMU_OK;
}

int emu_task_set_stack(struct emu_core *c, int tid, uint64_t lo, uint64_t hi)
{
    if (!c || tid < 0 || tid >= c->ntasks || lo >= hi)
        return EMU_EINVAL;
    if (!c->stk_lo) {
        c->stk_lo = calloc((size_t)c->ntasks, sizeof(uint64_t));
        c->stk_hi = calloc((size_t)c->ntasks, sizeof(uint64_t));
        if (!c->stk_lo || !c->stk_hi) {
            free(c->stk_lo);
            free(c->stk_hi);
            c->stk_lo = c->stk_hi = NULL;
            return EMU_ENOMEM;
        }
    }
    c->stk_lo[tid] = lo;
    c->stk_hi[tid] = hi;
    return EMU_OK;
}

int __emu_sysinsn_install(struct emu_core *c)
{
    uc_err err;

    if (!(c->flags & EMU_FLAG_ACCEL_C))
        return EMU_OK;
    err = uc_hook_add(c->uc, &c->h_cpuid, UC_HOOK_INSN, (void *)hook_cpuid, c, 1, 0, UC_X86_INS_CPUID);
    if (err) {
        c->last_err = err;
        return EMU_EUC;
    }
    return EMU_OK;
}

void __emu_sysinsn_free(struct emu_core *c)
{
    int i;

    if (c->h_cpuid)
        uc_hook_del(c->uc, c->h_cpuid);
    for (i = 0; i < c->nsysinsn; i++) {
        uc_hook_del(c->uc, c->sysinsn[i]->h);
        free(c->sysinsn[i]);
    }
    free(c->sysinsn);
    free(c->stk_lo);
    free(c->stk_hi);
}

int emu_report_fault(struct emu_core *c, int kind, uint64_t rip, uint64_t addr)
{
    if (!c || !c->stop || kind < EMU_FAULT_UNMAPPED_READ || kind > EMU_FAULT_NULL_CALL)
        return EMU_EINVAL;
    __emu_fault(c, kind, rip, addr, 0);
    uc_emu_stop(c->uc);
    return EMU_OK;
}
