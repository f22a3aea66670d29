/*
 * slicer.c - run the loaded task for a budget of instructions.
 *
 * A UC_HOOK_BLOCK hook counts each block's instructions (from the bitmaps of
 * core.c) when the block is entered and calls uc_emu_stop before a block
 * that would overrun the budget; a stopped block does not execute, so the
 * task's RIP is at its start. This is 2-3.5x cheaper than
 * uc_emu_start(count=), which hooks every instruction and flushes the whole
 * translation cache when it is switched on and off (measured on Unicorn 2.1.4).
 *
 * Precise runs end at exactly `budget` instructions: the cut block is run
 * once more under the trap flag. Unicorn then translates one instruction a
 * block and raises #DB after each (redirect.c's interrupt hook hands it to
 * __emu_stepped), so the block hook above counts and stops instruction by
 * instruction, as it does blocks. The one-instruction translations are
 * keyed by the flag: they live beside the block's own and stay, so a cut
 * translates nothing once its instructions have been stepped before.
 * Dropping the block's translation around a one-shot code hook, as this
 * did before, cost three translations a cut (about 130 a seed fuzz run
 * under kGraft), and an instruction the emulator answers (rdtsc) inside
 * the cut ended the run up to a block late. The guest never sees the flag:
 * a pushf's word loses it (__emu_stepped).
 */
#include <string.h>
#include "core.h"


static uint64_t now_at(struct emu_core *c, uint64_t addr)
{
    uint64_t t = c->clock + c->executed;

    if (c->blk_n && addr >= c->blk_addr && addr - c->blk_addr < c->blk_size) {
        uint64_t before = addr == c->blk_addr ? 0 : __emu_icount(c, c->blk_addr, addr - c->blk_addr);
        if (before < c->blk_n)
            t -= c->blk_n - before;
    }
    return t;
}

uint64_t emu_now(struct emu_core *c, uint64_t addr)
{
    return c ? now_at(c, addr) : 0;
}

uint64_t emu_clock(struct emu_core *c)
{
    return c ? c->clock + c->executed : 0;
}

uint64_t emu_retired(struct emu_core *c)
{
    return c ? c->retired + c->executed : 0;
}

void emu_set_clock(struct emu_core *c, uint64_t clock)
{
    if (c && !c->stop)
        c->clock = clock;
}

static void hook_block(uc_engine *uc, uint64_t addr, uint32_t size, void *ud)
{
    struct emu_core *c = ud;
    uint64_t n;

    if (addr == c->graph_ret && addr) {
        /* The return trampoline takes no virtual time and is no place to
         * stop (emu.h, "function exits"): runs are the same with exits
         * traced or not. */
        n = 0;
    } else {
        /* A site's trampoline is one instruction of virtual time, counted
         * at its start, so that no task stops further in (redirect.c). */
        n = addr - c->stubs < c->stubs_size ? (addr - c->stubs) % EMU_STUB_SIZE == 0
                                             : __emu_block_icount(c, addr, size);
        /* Without precision the first block of a run always executes, so
         * that every run makes progress. */
        if (c->executed + n > c->budget && (c->precise || c->executed != c->base)) {
            if (!c->stop->reason)
                c->stop->reason = EMU_STOP_BUDGET;
            c->cut = 1;
            c->blk_addr = addr;
            c->blk_size = size;
            c->blk_n = 0;
            uc_emu_stop(uc);
            return;
        }
    }
    c->executed += n;
    c->blk_addr = addr;
    c->blk_size = size;
    c->blk_n = n;
    /* The block executes: the trampolines have their work done here
     * (redirect.c), where a code hook would cost a dispatch through every
     * code hook of the engine. With accel C only (the Python twin hooks
     * them itself: the return trampoline's slot is set for C only). */
    if (addr - c->stubs < c->stubs_size) {
        if (c->flags & EMU_FLAG_ACCEL_C)
            __emu_stub_enter(c, addr);
    } else if (addr == c->graph_ret && c->graph_slot)
        __emu_graph_return(c, addr);
}

static void hook_syscall(uc_engine *uc, void *ud)
{
    struct emu_core *c = ud;
    int64_t nr, a, b, d;
    uint64_t rip;

    uc_reg_read(uc, UC_X86_REG_RAX, &nr);
    uc_reg_read(uc, UC_X86_REG_RDI, &a);
    uc_reg_read(uc, UC_X86_REG_RSI, &b);
    if (nr == EMU_HC_OBSERVE) {
        /* Observations are frequent and need no decision: record and go on. */
        int64_t zero = 0;
        uc_reg_read(uc, UC_X86_REG_RIP, &rip);
        __emu_event(c, EMU_EV_OBSERVE, c->cur, a, b, 0, now_at(c, rip));
        uc_reg_write(uc, UC_X86_REG_RAX, &zero);
        return;
    }
    uc_reg_read(uc, UC_X86_REG_RDX, &d);
    if (c->stop->reason)
        return;
    /* A switch point the scheduler loop would take and go on from, the
     * task staying on its CPU, is taken here without stopping. */
    if (c->in_sched && __emu_sched_inline(c, nr))
        return;
    c->stop->reason = EMU_STOP_HYPERCALL;
    c->stop->hc_nr = nr;
    c->stop->hc_args[0] = a;
    c->stop->hc_args[1] = b;
    c->stop->hc_args[2] = d;
    uc_emu_stop(uc);
}

int __emu_slicer_install(struct emu_core *c)
{
    uc_err err;

    err = uc_hook_add(c->uc, &c->h_block, UC_HOOK_BLOCK, (void *)hook_block, c, 1, 0);
    if (!err)
        err = uc_hook_add(c->uc, &c->h_syscall, UC_HOOK_INSN, (void *)hook_syscall, c, 1, 0,
                          UC_X86_INS_SYSCALL);
    if (err) {
        c->last_err = err;
        return EMU_EUC;
    }
    return EMU_OK;
}

static void start(struct emu_core *c, uint64_t from)
{
    uc_err err = uc_emu_start(c->uc, from, 0, 0, 0);

    if (err) {
        c->stop->uc_err = (int32_t)err;
        if (c->stop->reason != EMU_STOP_FAULT) {
            uint64_t rip = 0;
            uc_reg_read(c->uc, UC_X86_REG_RIP, &rip);
            c->stop->reason = 0;
            __emu_fault(c, err == UC_ERR_INSN_INVALID ? EMU_FAULT_INVALID_INSN : EMU_FAULT_OTHER,
                        rip, 0, 0);
        }
    }
}

#define EFLAGS_TF 0x100ULL

/* The one-byte opcode of the n-byte instruction at p, past its legacy
 * prefixes and REX (0 when there is none). */
static uint8_t opcode_of(const uint8_t *p, uint32_t n)
{
    uint32_t k = 0;

    while (k < n && (p[k] == 0x66 || p[k] == 0x67 || p[k] == 0xf0 || p[k] == 0xf2 || p[k] == 0xf3 ||
                     p[k] == 0x2e || p[k] == 0x36 || p[k] == 0x3e || p[k] == 0x26 || p[k] == 0x64 ||
                     p[k] == 0x65))
        k++;
    if (k < n && (p[k] & 0xf0) == 0x40)
        k++;
    return k < n ? p[k] : 0;
}

/* The #DB after one stepped instruction (csrc/redirect.c's interrupt hook
 * hands it here): the flags the guest saw stay its own. A pushf pushed the
 * trap flag, which is taken out of the word on the stack. (A popf ends its
 * block in Unicorn, so it is never among the instructions stepped, which
 * come before the cut block's last.) */
void __emu_stepped(struct emu_core *c)
{
    /* stepping, a block is one instruction: blk_size is its length */
    const uint8_t *p = __emu_ptr(c, c->blk_addr, c->blk_size);
    uint64_t rsp = 0, word = 0;
    uint8_t *top;

    if (!p || opcode_of(p, c->blk_size) != 0x9c)     /* pushf */
        return;
    uc_reg_read(c->uc, UC_X86_REG_RSP, &rsp);
    top = __emu_ptr(c, rsp, 8);
    if (top) {
        top[1] &= (uint8_t)~(EFLAGS_TF >> 8);
    } else if (!uc_mem_read(c->uc, rsp, &word, 8)) {
        word &= ~EFLAGS_TF;
        uc_mem_write(c->uc, rsp, &word, 8);
    }
}

/* Run the cut block again up to exactly c->budget instructions: under the
 * trap flag, each instruction is a block of its own, counted and stopped
 * by the block hook as any block is. */
static void finish_precisely(struct emu_core *c)
{
    uint64_t fl = 0;

    if (uc_reg_read(c->uc, UC_X86_REG_EFLAGS, &fl) || (fl & EFLAGS_TF))
        return;     /* stays a block-granular stop: still correct, less exact */
    fl |= EFLAGS_TF;
    if (uc_reg_write(c->uc, UC_X86_REG_EFLAGS, &fl))
        return;
    c->cut = 0;
    c->stop->reason = 0;
    c->stepping = 1;
    start(c, c->blk_addr);
    c->stepping = 0;
    if (!c->stop->reason)
        c->stop->reason = EMU_STOP_BUDGET;
    uc_reg_read(c->uc, UC_X86_REG_EFLAGS, &fl);
    fl &= ~EFLAGS_TF;
    uc_reg_write(c->uc, UC_X86_REG_EFLAGS, &fl);
}

int emu_run(struct emu_core *c, uint64_t budget, int precise, struct emu_stop *stop)
{
    uint64_t rip = 0;

    if (!c || !stop || c->cur < 0 || c->stop)
        return EMU_EINVAL;
    memset(stop, 0, sizeof(*stop));
    c->stop = stop;
    c->budget = budget;
    c->executed = 0;
    c->base = 0;
    c->precise = precise;
    c->cut = 0;
    c->blk_addr = 0;
    c->blk_n = 0;
    if (budget == 0) {
        stop->reason = EMU_STOP_BUDGET;
    } else {
        uc_reg_read(c->uc, UC_X86_REG_RIP, &rip);
        start(c, rip);
        if (stop->reason == EMU_STOP_BUDGET && c->cut && precise && c->executed < budget)
            finish_precisely(c);
        if (!stop->reason) {
            /* uc_emu_start came back on its own: at address 0, which is
             * the `until` it was given (a call through a NULL pointer), or
             * for another reason (hlt, for one). */
            uc_reg_read(c->uc, UC_X86_REG_RIP, &rip);
            __emu_fault(c, rip ? EMU_FAULT_OTHER : EMU_FAULT_NULL_CALL, rip, 0, 0);
        }
    }
    if (stop->reason != EMU_STOP_FAULT)
        uc_reg_read(c->uc, UC_X86_REG_RIP, &stop->rip);
    stop->executed = c->executed;
    c->clock += c->executed;
    c->retired += c->executed;
    c->executed = 0;
    c->blk_n = 0;
    c->stop = NULL;
    return EMU_OK;
}

void emu_request_stop(struct emu_core *c)
{
    if (c && c->stop) {
        if (!c->stop->reason)
            c->stop->reason = EMU_STOP_REQUESTED;
        uc_emu_stop(c->uc);
    }
}
