/*
 * stacks.c - the stack checks of many tasks in one call.
 *
 * Each task's check is a walk (unwind.c) or a Ksplice word scan, then a
 * search of the trace for the first entry in the checked ranges. The
 * registers come from the task's saved context (the engine's own for the
 * loaded task), the stack straight from the host memory that backs it.
 * emu/engine/unwind.py check_stack() is the twin of one task's check; tests hold
 * emu_check_stacks to it on ordinary and hostile stacks.
 */
#include "core.h"

static int cfg_ok(const struct emu_stack_cfg *g)
{
    if (!g || g->kind < EMU_UNWIND_FP || g->kind > EMU_UNWIND_SCAN)
        return 0;
    if (g->max_entries < (g->kind == EMU_UNWIND_SCAN ? 2 : 1))
        return 0;
    if (g->ntext < 0 || (g->ntext && !g->text) || g->ncheck < 0 || (g->ncheck && !g->check))
        return 0;
    if (g->kind == EMU_UNWIND_ORC && (g->norc < 0 || (g->norc && (!g->orc_ip || !g->orc))))
        return 0;
    return 1;
}

static int read_regs(struct emu_core *c, int tid, uint64_t r[3])
{
    static int ids[3] = {UC_X86_REG_RIP, UC_X86_REG_RSP, UC_X86_REG_RBP};
    void *vals[3] = {&r[0], &r[1], &r[2]};
    uc_err err;

    /* The loaded task's registers live in the engine, not in its context. */
    err = tid == c->cur ? uc_reg_read_batch(c->uc, ids, vals, 3)
                        : uc_context_reg_read_batch(c->ctx[tid], ids, vals, 3);
    if (err) {
        c->last_err = err;
        return EMU_EUC;
    }
    return EMU_OK;
}

/* A task's preempted flag: its own (0 or 1), or, when negative, what the
 * scheduler's record of the task says (struct emu_sched_task.preempted,
 * sched.c), so that a caller checking the same tasks again need not pack
 * them again. -1 when there is no such record (before emu_sched_init, or a
 * tid the scheduler does not hold). */
static int preempted_of(const struct emu_core *c, const struct emu_stack_task *t)
{
    if (t->preempted >= 0)
        return t->preempted != 0;
    if (!c->sched_mem || t->tid < 0 || (int64_t)t->tid >= c->sched.g->ntasks + c->sched.g->ncpus)
        return -1;
    return c->sched.tasks[t->tid].preempted != 0;
}

/* One task's check into *res and out[0..max_entries). */
static void check_one(struct emu_core *c, const struct emu_stack_cfg *g,
                      const struct emu_stack_task *t, uint64_t *out, struct emu_stack_result *res)
{
    struct emu_walk_in in;
    struct emu_graph graph;
    const uint8_t *stack;
    uint64_t r[3], where = 0, value = 0;
    int n = 0, rc, i, preempted;

    res->code = 0;
    res->n = 0;
    res->hit = -1;
    res->rip = res->rsp = res->rbp = res->where = 0;
    if (t->tid < 0 || t->tid >= c->ntasks || t->lo > t->hi) {
        res->code = EMU_EINVAL;
        return;
    }
    preempted = preempted_of(c, t);
    if (preempted < 0) {
        res->code = EMU_EINVAL;
        return;
    }
    rc = read_regs(c, t->tid, r);
    if (rc) {
        res->code = rc;
        return;
    }
    res->rip = r[0];
    res->rsp = r[1];
    res->rbp = r[2];
    stack = t->lo == t->hi ? (const uint8_t *)"" : __emu_ptr(c, t->lo, t->hi - t->lo);
    if (!stack) {
        res->code = EMU_ENOENT;
        return;
    }

    __emu_graph_of(c, t->tid, &graph);

    if (g->kind == EMU_UNWIND_SCAN) {
        out[n++] = r[0];
        rc = EMU_WALK_OK;
        if (emu_ranges_hit(&r[0], 1, g->check, g->ncheck) < 0 &&
            emu_stack_scan(stack, t->lo, t->hi, r[1], g->check, g->ncheck, &where, &value,
                           &graph) == 1) {
            out[n++] = value;
            res->where = where;
        }
    } else if (r[0] >= g->empty_lo && r[0] < g->empty_hi) {
        /* Between kernel entries: no kernel frame to walk. */
        out[n++] = r[0];
        rc = EMU_WALK_OK;
    } else {
        in.rip = r[0];
        in.rsp = r[1];
        in.rbp = r[2];
        /* A task at a register frame (a site's trampoline) may be
         * anywhere in the frame it interrupted: frame pointers cannot
         * vouch for it (ORC has the trampoline's unwind hints). */
        in.preempted = (preempted || (r[0] >= g->regs_lo && r[0] < g->regs_hi)) ? 1 : 0;
        in.max_entries = g->max_entries;
        in.end_ret = t->end_ret;
        in.end_slot = t->end_slot;
        in.graph = graph;
        if (g->kind == EMU_UNWIND_FP)
            rc = emu_walk_fp(stack, t->lo, t->hi, g->text, g->ntext, &in, out, &n);
        else
            rc = emu_walk_orc(stack, t->lo, t->hi, g->text, g->ntext, g->orc_ip, g->orc, g->norc,
                              &in, out, &n);
    }
    res->code = rc;
    res->n = n;
    i = rc < 0 ? -1 : emu_ranges_hit(out, n, g->check, g->ncheck);
    res->hit = i < 0 ? -1 : i;
}

int emu_check_stacks(struct emu_core *c, const struct emu_stack_cfg *g,
                     const struct emu_stack_task *tasks, int n,
                     uint64_t *entries, struct emu_stack_result *out)
{
    int i, failed = 0;
    size_t used = 0;

    if (!c || !cfg_ok(g) || n < 0 || (n && (!tasks || !entries || !out)))
        return EMU_EINVAL;
    if ((size_t)n * (size_t)g->max_entries > (size_t)INT32_MAX)
        return EMU_EINVAL;
    /* used <= i * max_entries, so each task has max_entries words of room. */
    for (i = 0; i < n; i++) {
        out[i].off = (int32_t)used;
        check_one(c, g, &tasks[i], entries + used, &out[i]);
        used += (size_t)out[i].n;
        failed += out[i].code < 0 || out[i].hit >= 0 || out[i].code == EMU_WALK_TOO_DEEP ||
                  (g->reliable && out[i].code != EMU_WALK_OK);
    }
    return failed;
}
