/*
 * handover.c - value handovers found in a finished trace: the fast path of
 * emu/runs/handover.py (its docstring has the rule), with the same results
 * on every trace, damaged ones included (tests/test_handover.py holds the
 * two together).
 *
 * Why in C: the Python pass reads every event of a run once more after the
 * unit oracle and the promise oracle, about 0.2 ms of a seed run's 1.8 ms.
 *
 * Per task: the entry whose argument events are awaited, and the values
 * returned since the task's last unit boundary (a list, newest last: a
 * value returned twice answers with its newest producer, as the Python
 * dict's overwrite does).
 */
#include <stdlib.h>
#include <string.h>
#include "core.h"
#include "tidmap.h"

struct live_value {
    uint64_t value;
    int64_t fid;
    int64_t version;
    uint64_t clock;
};

struct task_state {
    int pending;            /* an entry of a carried function awaits its arguments */
    uint64_t clock;
    int64_t fid;
    int64_t version;
    int nargs;              /* arguments gathered, at most 6 kept */
    uint64_t args[6];
    struct live_value *live;
    size_t nlive;
    size_t cap;
};

struct carriers {
    const int64_t *fid;
    const int64_t *idx;
    size_t n;
    const struct emu_hregs *regs;
    size_t nregs;
    const int64_t *stack;     /* the patches that stack on older ones (not atomic replace) */
    size_t nstack;
};

/* The argument registers (fid, version) takes: all six unless regs names it. */
static int64_t taken(const struct carriers *c, int64_t fid, int64_t version)
{
    size_t lo = 0, hi = c->nregs;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct emu_hregs *r = &c->regs[mid];
        if (r->fid < fid || (r->fid == fid && r->version < version))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < c->nregs && c->regs[lo].fid == fid && c->regs[lo].version == version)
        return c->regs[lo].mask;
    return 0x3f;
}

/* The first pair of fid, or c->n when it carries none. */
static size_t first_of(const struct carriers *c, int64_t fid)
{
    size_t lo = 0, hi = c->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->fid[mid] < fid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < c->n && c->fid[lo] == fid ? lo : c->n;
}

static int carries(const struct carriers *c, int64_t fid, int64_t idx)
{
    size_t i;

    for (i = first_of(c, fid); i < c->n && c->fid[i] == fid; i++)
        if (c->idx[i] == idx)
            return 1;
    return 0;
}

/* Whether a function that ran version v ran with patch idx applied: its
 * own version, or a newer patch's that stacks on idx (an atomic replace
 * takes the older patches off). */
static int applied(const struct carriers *c, int64_t idx, int64_t v)
{
    size_t i;

    if (v == idx)
        return 1;
    if (v < idx)
        return 0;
    for (i = 0; i < c->nstack; i++)
        if (c->stack[i] == v)
            return 1;
    return 0;
}

/* Whether one patch carrying both fid and pfid was applied for one of them only. */
static int mixed(const struct carriers *c, int64_t fid, int64_t version, int64_t pfid, int64_t pversion)
{
    size_t i;

    for (i = first_of(c, fid); i < c->n && c->fid[i] == fid; i++) {
        int64_t idx = c->idx[i];
        if (carries(c, pfid, idx) && applied(c, idx, pversion) != applied(c, idx, version))
            return 1;
    }
    return 0;
}

static void judge(const struct carriers *car, struct task_state *t, int32_t task, struct emu_handover *out,
                  size_t cap, size_t *found)
{
    int k, n = t->nargs < 6 ? t->nargs : 6;
    int64_t regs;

    if (!t->nlive)
        return;
    regs = taken(car, t->fid, t->version);
    for (k = 0; k < n; k++) {
        const struct live_value *hit = NULL;
        size_t j;

        if (!(regs & ((int64_t)1 << k)))
            continue;
        for (j = t->nlive; j-- > 0;)
            if (t->live[j].value == t->args[k]) {
                hit = &t->live[j];
                break;
            }
        if (!hit || !mixed(car, t->fid, t->version, hit->fid, hit->version))
            continue;
        if (*found < cap) {
            struct emu_handover *h = &out[*found];
            h->clock = t->clock;
            h->produced_at = hit->clock;
            h->value = t->args[k];
            h->fid = t->fid;
            h->version = t->version;
            h->pfid = hit->fid;
            h->pversion = hit->version;
            h->task = task;
            h->arg = k;
        }
        (*found)++;
        return;
    }
}

static int keep(struct task_state *t, uint64_t value, int64_t fid, int64_t version, uint64_t clock)
{
    size_t j;

    for (j = 0; j < t->nlive; j++)
        if (t->live[j].value == value) {     /* newest producer of the value: move it last */
            memmove(&t->live[j], &t->live[j + 1], (t->nlive - j - 1) * sizeof(*t->live));
            t->nlive--;
            break;
        }
    if (t->nlive == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        struct live_value *p = realloc(t->live, cap * sizeof(*p));
        if (!p)
            return EMU_ENOMEM;
        t->live = p;
        t->cap = cap;
    }
    t->live[t->nlive++] = (struct live_value){value, fid, version, clock};
    return EMU_OK;
}

int emu_handover_find(const struct emu_event *ev, size_t n, const int64_t *cfid, const int64_t *cidx,
                      size_t ncar, const struct emu_hregs *regs, size_t nregs, const int64_t *stack,
                      size_t nstack, struct emu_handover *out, size_t cap, size_t *found)
{
    struct carriers car = {cfid, cidx, ncar, regs, nregs, stack, nstack};
    struct tidmap map = {0};
    struct task_state *ts = NULL;
    size_t nts = 0, i;
    int rc = EMU_OK;

    if (!found || (n && !ev) || (ncar && (!cfid || !cidx)) || (nregs && !regs) || (nstack && !stack)
        || (cap && !out))
        return EMU_EINVAL;
    *found = 0;
    for (i = 1; i < ncar; i++)
        if (cfid[i - 1] > cfid[i])
            return EMU_EINVAL;
    for (i = 1; i < nregs; i++)
        if (regs[i - 1].fid > regs[i].fid || (regs[i - 1].fid == regs[i].fid && regs[i - 1].version >= regs[i].version))
            return EMU_EINVAL;
    for (i = 0; i < n; i++) {
        const struct emu_event *e = &ev[i];
        struct task_state *t;
        int32_t slot;
        void *arr;

        if (e->kind != EMU_EV_ENTRY && e->kind != EMU_EV_ARGS && e->kind != EMU_EV_ARGS_HI
            && e->kind != EMU_EV_RETURN && e->kind != EMU_EV_KERNEL_EXIT && e->kind != EMU_EV_SAFE_POINT
            && e->kind != EMU_EV_EXIT)
            continue;
        arr = ts;
        slot = tidmap_task(&map, e->task, &arr, &nts, sizeof(*ts));
        ts = arr;
        if (slot < 0) {
            rc = EMU_ENOMEM;
            break;
        }
        t = &ts[slot];
        switch (e->kind) {
        case EMU_EV_ENTRY:
            t->pending = first_of(&car, e->a) < car.n;
            t->clock = e->clock;
            t->fid = e->a;
            t->version = e->b;
            t->nargs = 0;
            break;
        case EMU_EV_ARGS:
        case EMU_EV_ARGS_HI:
            if (!t->pending)
                break;
            if (t->nargs < 6) {           /* the first six are the registers judged */
                uint64_t v[3] = {(uint64_t)e->a, (uint64_t)e->b, e->c};
                int k;
                for (k = 0; k < 3 && t->nargs < 6; k++)
                    t->args[t->nargs++] = v[k];
            }
            if (e->kind == EMU_EV_ARGS_HI) {
                t->pending = 0;
                judge(&car, t, e->task, out, cap, found);
            }
            break;
        case EMU_EV_RETURN:
            if (first_of(&car, e->a) < car.n && (rc = keep(t, e->c, e->a, e->b, e->clock)))
                goto done;
            break;
        default:            /* a unit boundary: the values are gone */
            t->nlive = 0;
            break;
        }
    }
done:
    for (i = 0; i < map.n && i < nts; i++)
        free(ts[i].live);
    free(ts);
    tidmap_free(&map);
    return rc;
}
