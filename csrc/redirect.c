/*
 * redirect.c - the ftrace-style redirect at fentry sites.
 *
 * Each site has its own trampoline in guest memory, as each ftrace_ops has
 * (livepatch registers one per patched function): an enabled site is
 * `call <its trampoline>`. The trampoline plays the part of the ops
 * trampoline plus klp_ftrace_handler: it pops the fentry call's return
 * address and jumps, through its slot, to the function klp_ftrace_handler
 * would choose, so the chosen function starts with the stack exactly as at
 * the original's entry and returns straight to the caller. The core keeps
 * each slot the choice for the loaded task: it writes a site's slot when
 * its entries change, and the slots of the sites in transition (where the
 * choice depends on the task's patch state) when the loaded task or its
 * state changes. So a redirected call never leaves Unicorn's translated
 * code and no register is written (writing RIP from a hook costs more
 * than the rest of the redirect together: +52-64 ns a call, measured on
 * Unicorn 2.1.4), and a change of entries writes data, not code: nothing is
 * translated again.
 *
 * The block hook (slicer.c) sees each call as the trampoline's block starts
 * (__emu_stub_enter): it checks that the site called it, and records the
 * entry (the chosen version, the arguments) unless no per-call event is
 * recorded. The trampoline is one block and one instruction of virtual
 * time, so no task stops inside it past its start.
 *
 * A site that is not `call <its trampoline>` has a watch hook, which
 * reports entries into functions whose site is still a NOP (the original
 * running untraced), and notices a CPU executing a site whose five bytes
 * are half written (a torn instruction). An enabled site has none: there
 * it would do nothing, and every code hook costs a dispatch on every
 * instruction it watches (__emu_site_rewatch follows the site's bytes). A
 * CPU that meets the int3 of a text_poke_bp is diverted by the interrupt
 * hook, which emulates the instruction being written.
 *
 * Function exits, the function-graph tracer's way: every entry these hooks
 * report also diverts the function's return address to the return
 * trampoline and keeps the real one on the task's return stack (graph_push);
 * the return trampoline (__emu_graph_return, called from the block hook) pops
 * it, records the exit with rax and lets its jump go to the real address
 * through a slot. Layout and rules in emu.h ("function exits").
 *
 * emu/engine/redirect.py has the pure-Python twin of these hooks.
 */
#include <stdlib.h>
#include <string.h>
#include "core.h"

static void stub_write(struct emu_core *c, struct emu_site *s);
static void slot_set(struct emu_core *c, struct emu_site *s);
static void trans_track(struct emu_core *c, struct emu_site *s);

/* Must agree with emu/images/image.py FENTRY_NOP (tests/test_layers.py holds them). */
static const uint8_t fentry_nop[5] = {0x0f, 0x1f, 0x44, 0x00, 0x00};

struct emu_site *__emu_site_at(struct emu_core *c, uint64_t addr)
{
    int lo = 0, hi = c->nsites - 1;

    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        struct emu_site *s = c->by_addr[mid];
        if (s->addr == addr)
            return s;
        if (s->addr < addr)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

/* klp_ftrace_handler's choice for a task whose patch state is UNPATCHED or
 * not; the original is the site + 5. */
static uint64_t choose_as(const struct emu_site *s, int unpatched, int32_t *version)
{
    int i = 0;

    if (s->n == 0)
        goto original;
    if (s->entries[0].transition && unpatched)
        i = 1;
    if (i >= s->n || s->entries[i].nop)
        goto original;
    *version = s->entries[i].version;
    return s->entries[i].target;
original:
    *version = 0;
    return s->addr + 5;
}

/* Site s's trampoline. */
static inline uint64_t stub_of(const struct emu_core *c, const struct emu_site *s)
{
    return c->stubs + (uint64_t)s->idx * EMU_STUB_SIZE;
}

/* The choice for the loaded task. */
static uint64_t choose(struct emu_core *c, struct emu_site *s, int32_t *version)
{
    return choose_as(s, c->cur >= 0 && c->state[c->cur] == EMU_UNPATCHED, version);
}

/* The per-call kinds: with none recorded, an entry is only counted. */
#define CALL_EVENTS (1ull << EMU_EV_ENTRY | 1ull << EMU_EV_ARGS | 1ull << EMU_EV_ARGS_HI | 1ull << EMU_EV_RETURN)

static inline uint64_t ld64(const uint8_t *p)
{
    uint64_t v;

    memcpy(&v, p, 8);
    return v;
}

static inline void st64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

/* The current task's return stack, or NULL when exits are off or the task
 * is none of the core's (an idle CPU). */
static uint8_t *graph_stack(struct emu_core *c)
{
    if (!c->graph_host || c->cur < 0 || c->cur >= c->ntasks ||
        !(c->ev_mask >> EMU_EV_RETURN & 1))
        return NULL;
    return c->graph_host[c->cur];
}

void __emu_graph_of(struct emu_core *c, int tid, struct emu_graph *g)
{
    g->ret = c->graph_ret;
    g->stack = c->graph_host && tid >= 0 && tid < c->ntasks ? c->graph_host[tid] : NULL;
    g->size = g->stack ? c->graph_stride : 0;
}

/* prepare_ftrace_return: divert the return address at rsp of the function
 * just entered. A full return stack leaves the return untraced (the kernel
 * gives up on the call the same way) and says so in the trace. */
static void graph_push(struct emu_core *c, int32_t func, int32_t version, uint64_t rsp, uint64_t clock)
{
    uint8_t *g = graph_stack(c), *retp, *rec;
    uint64_t depth, cap;

    if (!g || !(retp = __emu_ptr(c, rsp, 8)))
        return;
    cap = (c->graph_stride - EMU_GRAPH_HEADER) / EMU_GRAPH_RECORD;
    depth = ld64(g);
    if (depth >= cap) {
        st64(g + 8, ld64(g + 8) + 1);
        __emu_event(c, EMU_EV_RET_UNTRACED, c->cur, func, version, rsp, clock);
        return;
    }
    rec = g + EMU_GRAPH_HEADER + depth * EMU_GRAPH_RECORD;
    st64(rec, rsp);
    memcpy(rec + 8, retp, 8);
    st64(rec + 16, (uint64_t)(int64_t)func);
    st64(rec + 24, (uint64_t)(int64_t)version);
    st64(g, depth + 1);
    st64(retp, c->graph_ret);
}

/* A traced entry: the event, the argument registers, the return diverted. */
static void entry_event(struct emu_core *c, int32_t func, int32_t version, uint64_t rsp, uint64_t clock)
{
    static const int regs[6] = {UC_X86_REG_RDI, UC_X86_REG_RSI, UC_X86_REG_RDX,
                                UC_X86_REG_RCX, UC_X86_REG_R8, UC_X86_REG_R9};
    uint64_t v[6] = {0};
    void *vals[6] = {&v[0], &v[1], &v[2], &v[3], &v[4], &v[5]};

    if (!(c->ev_mask & CALL_EVENTS)) {
        c->ev_dropped += 3;         /* the three __emu_event would have counted */
        return;
    }
    __emu_event(c, EMU_EV_ENTRY, c->cur, func, version, rsp, clock);
    /* One call for the six (each register read costs tens of instructions
     * in Unicorn), and none when both kinds are masked: masked events are
     * only counted, their values go nowhere. */
    if ((c->ev_mask >> EMU_EV_ARGS | c->ev_mask >> EMU_EV_ARGS_HI) & 1)
        uc_reg_read_batch(c->uc, regs, vals, 6);
    __emu_event(c, EMU_EV_ARGS, c->cur, (int64_t)v[0], (int64_t)v[1], v[2], clock);
    __emu_event(c, EMU_EV_ARGS_HI, c->cur, (int64_t)v[3], (int64_t)v[4], v[5], clock);
    graph_push(c, func, version, rsp, clock);
}

/* Send the task at a site's entry to the chosen function, stack as at the
 * original's entry (rsp), from a hook: the int3 of a text_poke_bp, or a
 * trampoline's entry when the run must stop before it executes. */
static void divert(struct emu_core *c, struct emu_site *s, uint64_t rsp, uint64_t clock)
{
    int32_t version;
    uint64_t target = choose(c, s, &version);

    uc_reg_write(c->uc, UC_X86_REG_RSP, &rsp);
    uc_reg_write(c->uc, UC_X86_REG_RIP, &target);
    entry_event(c, s->func_id, version, rsp, clock);
}

/* return_to_handler: the function whose return address was diverted to
 * slot (rsp - 8 now that its ret popped it) has returned. Records newer
 * than the slot belong to frames a stack switch left without returning:
 * they are dropped, each reported. No record for the slot is a fault. */
void __emu_graph_return(struct emu_core *c, uint64_t addr)
{
    uc_engine *uc = c->uc;
    uint8_t *g = c->cur >= 0 && c->cur < c->ntasks ? c->graph_host[c->cur] : NULL, *rec;
    uint64_t rsp = 0, rax = 0, slot, depth, cap, now = emu_now(c, addr), real;

    uc_reg_read(uc, UC_X86_REG_RSP, &rsp);
    slot = rsp - 8;
    if (g) {
        cap = (c->graph_stride - EMU_GRAPH_HEADER) / EMU_GRAPH_RECORD;
        depth = ld64(g);
        if (depth > cap)
            depth = 0;      /* overwritten by the guest: nothing in it can be trusted */
        for (; depth > 0; depth--) {
            rec = g + EMU_GRAPH_HEADER + (depth - 1) * EMU_GRAPH_RECORD;
            if (ld64(rec) >= slot)
                break;
            __emu_event(c, EMU_EV_UNWOUND, c->cur, (int64_t)ld64(rec + 16), (int64_t)ld64(rec + 24),
                        ld64(rec), now);
        }
        st64(g, depth);
        rec = depth > 0 ? g + EMU_GRAPH_HEADER + (depth - 1) * EMU_GRAPH_RECORD : NULL;
        if (rec && ld64(rec) == slot) {
            real = ld64(rec + 8);
            st64(g, depth - 1);
            uc_reg_read(uc, UC_X86_REG_RAX, &rax);
            __emu_event(c, EMU_EV_RETURN, c->cur, (int64_t)ld64(rec + 16), (int64_t)ld64(rec + 24),
                        rax, now);
            if (c->graph_slot && !(c->stop && c->stop->reason))
                memcpy(c->graph_slot, &real, 8);
            else
                uc_reg_write(uc, UC_X86_REG_RIP, &real);
            return;
        }
    }
    __emu_fault(c, EMU_FAULT_BAD_RETURN, addr, slot, 0);
    if (c->graph_slot)
        memcpy(c->graph_slot, &c->graph_bad, 8);
    uc_emu_stop(uc);
}

static inline int is_call_to(const uint8_t *p, uint64_t site, uint64_t target)
{
    int32_t rel;

    if (p[0] != 0xe8)
        return 0;
    memcpy(&rel, p + 1, 4);
    return site + 5 + (uint64_t)(int64_t)rel == target;
}

static void hook_watch(uc_engine *uc, uint64_t addr, uint32_t size, void *ud)
{
    struct emu_site *s = ud;
    struct emu_core *c = s->core;
    const uint8_t *p = s->code ? s->code : __emu_ptr(c, addr, 5);
    uint64_t rsp = 0;

    if (!p)
        return;
    if (!memcmp(p, fentry_nop, 5)) {
        uint64_t now = emu_now(c, addr);

        uc_reg_read(uc, UC_X86_REG_RSP, &rsp);
        entry_event(c, s->func_id, 0, rsp, now);
    } else if (p[0] != 0xcc && !is_call_to(p, addr, stub_of(c, s))) {
        __emu_event(c, EMU_EV_TORN, c->cur, s->func_id, 0, addr, emu_now(c, addr));
    }
    /* int3: the interrupt hook reports. */
}

static void hook_intr(uc_engine *uc, uint32_t intno, void *ud)
{
    struct emu_core *c = ud;
    uint64_t rip = 0, rsp = 0;
    struct emu_site *s;

    if (intno == 1 && c->stepping) {
        __emu_stepped(c);   /* the slicer's own single steps */
        return;
    }
    uc_reg_read(uc, UC_X86_REG_RIP, &rip);
    if (intno == 3) {
        s = __emu_site_at(c, rip - 1);
        if (s && s->poke != EMU_POKE_NONE) {
            if (!(c->flags & EMU_FLAG_ACCEL_C))
                return;     /* the Python twin's hook handles it */
            uc_reg_read(uc, UC_X86_REG_RSP, &rsp);
            if (s->poke == EMU_POKE_TO_CALL) {
                divert(c, s, rsp, emu_now(c, rip - 1));
            } else {
                uint64_t next = s->addr + 5, now = emu_now(c, rip - 1);
                uc_reg_write(uc, UC_X86_REG_RIP, &next);
                entry_event(c, s->func_id, 0, rsp, now);
            }
            return;
        }
        rip -= 1;   /* report the int3 itself */
    }
    __emu_fault(c, EMU_FAULT_INTERRUPT, rip, 0, (int)intno);
    uc_emu_stop(uc);
}

int __emu_redirect_install(struct emu_core *c)
{
    uc_err err = uc_hook_add(c->uc, &c->h_intr, UC_HOOK_INTR, (void *)hook_intr, c, 1, 0);

    if (err) {
        c->last_err = err;
        return EMU_EUC;
    }
    return EMU_OK;
}

void __emu_redirect_free(struct emu_core *c)
{
    int i;

    free(c->graph_host);
    c->graph_host = NULL;
    for (i = 0; i < c->nsites; i++) {
        if (c->sites[i]->watch)
            uc_hook_del(c->uc, c->sites[i]->watch);
        free(c->sites[i]);
    }
    c->nsites = 0;
}

int emu_site_add(struct emu_core *c, uint64_t addr, int func_id)
{
    struct emu_site *s;
    int i;

    if (!c || !addr)
        return EMU_EINVAL;
    if (c->nsites == EMU_MAX_SITES)
        return EMU_EFULL;
    if (__emu_site_at(c, addr))
        return EMU_EINVAL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return EMU_ENOMEM;
    s->core = c;
    s->addr = addr;
    s->func_id = func_id;
    s->idx = c->nsites;
    /* Regions never move their host memory: the watch hook reads the
     * site's bytes through this pointer without a lookup. */
    s->code = __emu_ptr(c, addr, 5);
    s->trans = -1;
    if (c->stubs && (uint64_t)(s->idx + 1) * EMU_STUB_SIZE > c->stubs_size) {
        free(s);
        return EMU_EFULL;
    }
    if (__emu_site_rewatch(c, s)) {
        free(s);
        return EMU_EUC;
    }
    stub_write(c, s);
    for (i = c->nsites; i > 0 && c->by_addr[i - 1]->addr > addr; i--)
        c->by_addr[i] = c->by_addr[i - 1];
    c->by_addr[i] = s;
    c->sites[c->nsites] = s;
    return c->nsites++;
}

int emu_site_set_entries(struct emu_core *c, int site, const struct emu_entry *entries, int n)
{
    struct emu_site *s;

    if (!c || site < 0 || site >= c->nsites || n < 0 || n > EMU_SITE_MAX_ENTRIES || (n && !entries))
        return EMU_EINVAL;
    s = c->sites[site];
    if (n)
        memcpy(s->entries, entries, (size_t)n * sizeof(*entries));
    s->n = n;
    trans_track(c, s);
    slot_set(c, s);
    return EMU_OK;
}

int emu_site_set_poke(struct emu_core *c, int site, int poke)
{
    if (!c || site < 0 || site >= c->nsites || poke < EMU_POKE_NONE || poke > EMU_POKE_TO_NOP)
        return EMU_EINVAL;
    c->sites[site]->poke = poke;
    return EMU_OK;
}

/* The jump slot of a `jmp qword ptr [rip + disp32]` at addr (ff 25 disp32,
 * the slot at addr + 6 + disp), or NULL; *bad gets what it holds. */
static uint8_t *jump_slot(struct emu_core *c, uint64_t addr, uint64_t *bad)
{
    const uint8_t *p = __emu_ptr(c, addr, 6);
    uint8_t *slot;
    int32_t disp;

    if (!p || p[0] != 0xff || p[1] != 0x25)
        return NULL;
    memcpy(&disp, p + 2, 4);
    slot = __emu_ptr(c, addr + 6 + (uint64_t)(int64_t)disp, 8);
    if (slot)
        memcpy(bad, slot, 8);
    return slot;
}

int emu_graph_init(struct emu_core *c, uint64_t ret, uint64_t base, uint64_t stride)
{
    uint8_t *slot = NULL;
    uint64_t bad = 0;
    int i;

    if (!c || !ret || c->graph_ret || c->ntasks <= 0 ||
        stride < EMU_GRAPH_HEADER + EMU_GRAPH_RECORD || stride > (1u << 20))
        return EMU_EINVAL;
    /* the block hook does its work (slicer.c), a code hook would cost a
     * dispatch through every code hook of the engine */
    if ((c->flags & EMU_FLAG_ACCEL_C) && !(slot = jump_slot(c, ret, &bad)))
        return EMU_EINVAL;
    c->graph_host = calloc((size_t)c->ntasks, sizeof(*c->graph_host));
    if (!c->graph_host)
        return EMU_ENOMEM;
    for (i = 0; i < c->ntasks; i++) {
        c->graph_host[i] = __emu_ptr(c, base + (uint64_t)i * stride, stride);
        if (!c->graph_host[i]) {
            free(c->graph_host);
            c->graph_host = NULL;
            return EMU_ENOENT;
        }
    }
    c->graph_ret = ret;
    c->graph_stride = stride;
    c->graph_slot = slot;       /* NULL for the Python twin, which hooks the return trampoline */
    c->graph_bad = bad;
    return EMU_OK;
}

/* ---- each site's own trampoline ---------------------------------------- */

/* A trampoline: `lea rsp, [rsp + 8]` (the fentry call's return popped),
 * `jmp qword ptr [rip + 5]` through the slot at STUB_SLOT, which holds the
 * choice for the loaded task; int3 elsewhere. Every instruction is checked
 * by capstone in tests/test_trampolines.py. */
enum { STUB_SLOT = 16 };
static const uint8_t stub_code[11] = {0x48, 0x8d, 0x64, 0x24, 0x08, 0xff, 0x25, 0x05, 0x00, 0x00, 0x00};

static inline uint8_t *slot_of(struct emu_core *c, const struct emu_site *s)
{
    return c->stubs_host + (uint64_t)s->idx * EMU_STUB_SIZE + STUB_SLOT;
}

/* Site s's slot: the choice for the loaded task. A write to guest memory
 * Unicorn does not watch: the translated jump reads it as it runs. */
static void slot_set(struct emu_core *c, struct emu_site *s)
{
    int32_t version;
    uint64_t target;

    if (!c->stubs_host)
        return;
    target = choose(c, s, &version);
    memcpy(slot_of(c, s), &target, 8);
}

/* Keep c->trans (the sites whose choice depends on the loaded task: their
 * newest entry is in transition) as site s's entries now say. */
static void trans_track(struct emu_core *c, struct emu_site *s)
{
    int in = s->n > 0 && s->entries[0].transition;

    if (in && s->trans < 0) {
        s->trans = c->ntrans;
        c->trans[c->ntrans++] = s;
    } else if (!in && s->trans >= 0) {
        c->trans[s->trans] = c->trans[--c->ntrans];
        c->trans[s->trans]->trans = s->trans;
        s->trans = -1;
    }
}

/* The loaded task or its patch state changed: the slots that depend on it. */
void __emu_slots_follow(struct emu_core *c)
{
    int i;

    for (i = 0; i < c->ntrans; i++)
        slot_set(c, c->trans[i]);
}

/* Every site's slot and the list of those in transition, from the sites'
 * entries (after a snapshot restore). */
void __emu_slots_reset(struct emu_core *c)
{
    int i;

    c->ntrans = 0;
    for (i = 0; i < c->nsites; i++) {
        c->sites[i]->trans = -1;
        trans_track(c, c->sites[i]);
        slot_set(c, c->sites[i]);
    }
}

/* Write site s's trampoline, and its slot. Its code is the same for every
 * site and outlives the site (snapshot restores leave the trampolines
 * alone, emu_snapshot_restore): a site added again finds it in place, and
 * its translation too. */
static void stub_write(struct emu_core *c, struct emu_site *s)
{
    uint8_t code[EMU_STUB_SIZE], *p;
    uint64_t at = stub_of(c, s);

    if (!c->stubs_host)
        return;
    p = c->stubs_host + (at - c->stubs);
    memset(code, 0xcc, sizeof(code));
    memcpy(code, stub_code, sizeof(stub_code));
    memcpy(code + STUB_SLOT, p + STUB_SLOT, 8);     /* the slot: set below, data */
    if (memcmp(p, code, sizeof(code))) {
        memcpy(p, code, sizeof(code));
        uc_ctl_remove_cache(c->uc, at, at + EMU_STUB_SIZE);
    }
    slot_set(c, s);
}

/* A task is about to execute the trampoline at addr: check that its site
 * called it, and record the entry. Anything else in the trampolines is a
 * stray jump, a fault (nothing of it runs). */
void __emu_stub_enter(struct emu_core *c, uint64_t addr)
{
    uint64_t off = addr - c->stubs, rsp = 0, ret = 0, target;
    struct emu_site *s = off / EMU_STUB_SIZE < (uint64_t)c->nsites ? c->sites[off / EMU_STUB_SIZE] : NULL;
    int32_t version;
    uint8_t *p;

    if (s && off % EMU_STUB_SIZE == 0) {
        uc_reg_read(c->uc, UC_X86_REG_RSP, &rsp);
        p = __emu_ptr(c, rsp, 8);
        if (p)
            ret = ld64(p);
    }
    if (!s || off % EMU_STUB_SIZE || ret != s->addr + 5) {
        __emu_fault(c, EMU_FAULT_BAD_TRAMPOLINE, addr, ret, 0);
        uc_emu_stop(c->uc);
        return;
    }
    target = choose(c, s, &version);
    rsp += 8;
    if (c->ev_mask & CALL_EVENTS)
        entry_event(c, s->func_id, version, rsp, emu_now(c, addr));
    else
        c->ev_dropped += 3;         /* as entry_event counts them */
    /* A stop asked for meanwhile (the event ring filling up) takes effect
     * before the block runs: the task must resume at the target, the
     * fentry return popped, or its entry would be recorded twice. */
    if (c->stop && c->stop->reason) {
        uc_reg_write(c->uc, UC_X86_REG_RSP, &rsp);
        uc_reg_write(c->uc, UC_X86_REG_RIP, &target);
    }
}

int emu_set_stubs(struct emu_core *c, uint64_t base, uint64_t size)
{
    int i;

    if (!c || c->stubs || !base || size < EMU_STUB_SIZE || base % EMU_STUB_SIZE)
        return EMU_EINVAL;
    size = size / EMU_STUB_SIZE * EMU_STUB_SIZE;
    if ((uint64_t)c->nsites * EMU_STUB_SIZE > size)
        return EMU_EFULL;
    c->stubs_host = __emu_ptr(c, base, size);
    if (!c->stubs_host)
        return EMU_ENOENT;
    c->stubs = base;
    c->stubs_size = size;
    for (i = 0; i < c->nsites; i++) {
        stub_write(c, c->sites[i]);
        if (__emu_site_rewatch(c, c->sites[i]))
            return EMU_EUC;
    }
    return EMU_OK;
}

/* A site's watch hook is needed unless the site holds exactly the call to
 * its own trampoline, where it would do nothing (no entry to report, no
 * torn instruction): it is added and removed as the site's bytes change,
 * so that an enabled site costs no code-hook dispatch. */
int __emu_site_rewatch(struct emu_core *c, struct emu_site *s)
{
    int armed;
    uc_err err;

    if (!(c->flags & EMU_FLAG_ACCEL_C))
        return EMU_OK;
    armed = !(s->code && c->stubs && is_call_to(s->code, s->addr, stub_of(c, s)));
    if (armed && !s->watch) {
        err = uc_hook_add(c->uc, &s->watch, UC_HOOK_CODE, (void *)hook_watch, s, s->addr, s->addr);
        if (err) {
            s->watch = 0;
            c->last_err = err;
            return EMU_EUC;
        }
    } else if (!armed && s->watch) {
        uc_hook_del(c->uc, s->watch);
        s->watch = 0;
    } else {
        return EMU_OK;
    }
    /* a hook added or removed after its code was translated is seen only
     * once the translation is dropped */
    uc_ctl_remove_cache(c->uc, s->addr, s->addr + 1);
    return EMU_OK;
}

/* After a write to [addr, addr + len): the watch of every site it touched. */
int __emu_sites_written(struct emu_core *c, uint64_t addr, uint64_t len)
{
    int lo = 0, hi = c->nsites, err = EMU_OK;

    while (lo < hi) {       /* the first site whose 5 bytes end after addr */
        int mid = (lo + hi) / 2;
        if (c->by_addr[mid]->addr + 5 <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (; lo < c->nsites && c->by_addr[lo]->addr < addr + len; lo++)
        if (__emu_site_rewatch(c, c->by_addr[lo]))
            err = EMU_EUC;
    return err;
}
