/*
 * redirect.c - the ftrace-style redirect at fentry sites.
 *
 * An enabled site is `call <trampoline>`. __emu_tramp_enter plays the part of
 * ftrace_regs_caller plus klp_ftrace_handler: it finds the site from the
 * return address, picks the target from the site's stack of entries, the
 * transition flag and the current task's patch state, pops the return
 * address and sends the task to the target, so the chosen function starts
 * with the stack exactly as at the original's entry and returns straight to
 * the caller.
 *
 * How it sends the task there: when the trampoline instruction is
 * `jmp qword ptr [rip + d]` (emu/machine/runtime.py), it writes the target
 * into that slot and lets the jump run. Writing RIP from a hook instead
 * makes Unicorn leave its translated code and come back, which costs more
 * than the rest of the redirect together (measured on Unicorn 2.1.4: +52-64 ns a
 * call); it remains the way for the int3 of a text_poke_bp and for a run
 * that must stop inside the hook.
 *
 * Who calls it: such a trampoline is a block of its own that no block runs
 * into, so the block hook (slicer.c) calls it once it has decided that the
 * block executes; Unicorn dispatches a code hook by walking every code hook
 * of the engine, which the block hook spares each redirected call. The
 * return trampoline's work (__emu_graph_return) is called the same way.
 * Both trampolines must jump through a slot (emu_set_trampoline and
 * emu_graph_init refuse any other).
 *
 * Every site also has a watch hook, which reports entries into functions
 * whose site is still a NOP (the original running untraced), and notices a
 * CPU executing a site whose five bytes are half written (a torn
 * instruction). A CPU that meets the int3 of a text_poke_bp is diverted by
 * the interrupt hook, which emulates the instruction being written.
 *
 * Function exits, the function-graph tracer's way: every entry these hooks
 * report also diverts the function's return address to the return
 * trampoline and keeps the real one on the task's return stack (graph_push);
 * the return trampoline (__emu_graph_return) pops it, records the exit with
 * rax and lets its jump go to the real address, through a slot as the
 * trampoline does. Layout and rules in emu.h ("function exits").
 *
 * emu/engine/redirect.py has the pure-Python twin of all four hooks.
 */
#include <stdlib.h>
#include <string.h>
#include "core.h"

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

/* klp_ftrace_handler's choice; the original is the site + 5. */
static uint64_t choose(struct emu_core *c, struct emu_site *s, int32_t *version)
{
    int i = 0;

    if (s->n == 0)
        goto original;
    if (s->entries[0].transition && c->cur >= 0 && c->state[c->cur] == EMU_UNPATCHED)
        i = 1;
    if (i >= s->n || s->entries[i].nop)
        goto original;
    *version = s->entries[i].version;
    return s->entries[i].target;
original:
    *version = 0;
    return s->addr + 5;
}

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
 * original's entry. by_slot: the task is at the trampoline's jump, which
 * may take the target from its slot. */
static void enter(struct emu_core *c, struct emu_site *s, uint64_t rsp, uint64_t clock, int by_slot)
{
    int32_t version;
    uint64_t target = choose(c, s, &version);

    uc_reg_write(c->uc, UC_X86_REG_RSP, &rsp);
    entry_event(c, s->func_id, version, rsp, clock);
    /* A stop asked for in the hook (the event ring filling up) takes
     * effect before the jump runs: RIP must then hold the target already,
     * or the task would resume at the trampoline with its return address
     * popped. */
    if (by_slot && c->tramp_slot && !(c->stop && c->stop->reason))
        memcpy(c->tramp_slot, &target, 8);
    else
        uc_reg_write(c->uc, UC_X86_REG_RIP, &target);
}

void __emu_tramp_enter(struct emu_core *c, uint64_t addr)
{
    uc_engine *uc = c->uc;
    struct emu_site *s = NULL;
    uint64_t rsp = 0, ret = 0;
    uint8_t *p;

    uc_reg_read(uc, UC_X86_REG_RSP, &rsp);
    p = __emu_ptr(c, rsp, 8);
    if (p) {
        memcpy(&ret, p, 8);
        /* Most often the site whose watch hook ran last called it. */
        s = c->last_site && c->last_site->addr == ret - 5 ? c->last_site : __emu_site_at(c, ret - 5);
    }
    if (!s) {
        __emu_fault(c, EMU_FAULT_BAD_TRAMPOLINE, addr, ret, 0);
        if (c->tramp_slot)
            memcpy(c->tramp_slot, &c->tramp_bad, 8);
        uc_emu_stop(uc);
        return;
    }
    enter(c, s, rsp + 8, emu_now(c, addr), 1);
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

    c->last_site = s;
    if (!p)
        return;
    if (!memcmp(p, fentry_nop, 5)) {
        uint64_t now = emu_now(c, addr);

        uc_reg_read(uc, UC_X86_REG_RSP, &rsp);
        entry_event(c, s->func_id, 0, rsp, now);
    } else if (p[0] != 0xcc && !is_call_to(p, addr, c->tramp)) {
        __emu_event(c, EMU_EV_TORN, c->cur, s->func_id, 0, addr, emu_now(c, addr));
    }
    /* int3: the interrupt hook reports; call: the trampoline reports. */
}

static void hook_intr(uc_engine *uc, uint32_t intno, void *ud)
{
    struct emu_core *c = ud;
    uint64_t rip = 0, rsp = 0;
    struct emu_site *s;

    uc_reg_read(uc, UC_X86_REG_RIP, &rip);
    if (intno == 3) {
        s = __emu_site_at(c, rip - 1);
        if (s && s->poke != EMU_POKE_NONE) {
            if (!(c->flags & EMU_FLAG_ACCEL_C))
                return;     /* the Python twin's hook handles it */
            uc_reg_read(uc, UC_X86_REG_RSP, &rsp);
            if (s->poke == EMU_POKE_TO_CALL) {
                enter(c, s, rsp, emu_now(c, rip - 1), 0);
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
    c->last_site = NULL;
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
    /* Regions never move their host memory: the watch hook reads the
     * site's bytes through this pointer without a lookup. */
    s->code = __emu_ptr(c, addr, 5);
    if (c->flags & EMU_FLAG_ACCEL_C) {
        uc_err err = uc_hook_add(c->uc, &s->watch, UC_HOOK_CODE, (void *)hook_watch, s, addr, addr);
        if (err) {
            free(s);
            c->last_err = err;
            return EMU_EUC;
        }
        /* A hook added after its code was translated does not fire until
         * the translation is dropped. */
        uc_ctl_remove_cache(c->uc, addr, addr + 1);
    }
    for (i = c->nsites; i > 0 && c->by_addr[i - 1]->addr > addr; i--)
        c->by_addr[i] = c->by_addr[i - 1];
    c->by_addr[i] = s;
    c->sites[c->nsites] = s;
    return c->nsites++;
}

int emu_site_set_entries(struct emu_core *c, int site, const struct emu_entry *entries, int n)
{
    if (!c || site < 0 || site >= c->nsites || n < 0 || n > EMU_SITE_MAX_ENTRIES || (n && !entries))
        return EMU_EINVAL;
    if (n)
        memcpy(c->sites[site]->entries, entries, (size_t)n * sizeof(*entries));
    c->sites[site]->n = n;
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

int emu_set_trampoline(struct emu_core *c, uint64_t addr)
{
    if (!c || !addr || c->tramp)
        return EMU_EINVAL;
    if (c->flags & EMU_FLAG_ACCEL_C) {
        /* A trampoline that jumps through its slot is a block of its own,
         * and no block runs into it: the block hook (slicer.c) does its
         * work, which spares the dispatch of a code hook on every
         * redirected call. */
        c->tramp_slot = jump_slot(c, addr, &c->tramp_bad);
        if (!c->tramp_slot)
            return EMU_EINVAL;
    }
    c->tramp = addr;
    return EMU_OK;
}

int emu_graph_init(struct emu_core *c, uint64_t ret, uint64_t base, uint64_t stride)
{
    uint8_t *slot = NULL;
    uint64_t bad = 0;
    int i;

    if (!c || !ret || c->graph_ret || c->ntasks <= 0 ||
        stride < EMU_GRAPH_HEADER + EMU_GRAPH_RECORD || stride > (1u << 20))
        return EMU_EINVAL;
    /* the block hook does its work, as the trampoline's */
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
