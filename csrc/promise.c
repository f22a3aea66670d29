/*
 * promise.c - the promise oracle over a finished trace: the fast path of
 * emu/runs/promise.py (its docstring has the rules; _Oracle.scan is the
 * twin), with the same breach records on every trace, damaged ones
 * included (tests/test_handover.py holds the two together).
 *
 * Why in C: the Python pass reads every event of a run, about 0.3 ms of a
 * seed run, the largest part of judging it.
 *
 * One thing stays in Python: whether a version of a function can leave by
 * a tail call needs its code disassembled. The table comes in; a check
 * that needs a pair the table lacks stops the pass with EMU_ENOENT and the
 * pair, Python adds it, and the pass runs again (only frames that a check
 * would find ask, which a run that keeps its promise seldom has).
 */
#include <stdlib.h>
#include <string.h>
#include "core.h"
#include "tidmap.h"

struct frame {
    int64_t fid;
    int64_t version;
};

struct universe {
    int64_t idx;
    int seen;               /* bit 0: the old universe ran, bit 1: the new one */
};

struct ptask {
    int32_t task;
    int lost;
    int preempted;          /* its last sched-out was a preemption */
    int has_state;
    int64_t state;
    int on_cpu;
    int64_t cpu;
    int forced;
    struct frame *frames;
    size_t nframes, capframes;
    struct universe *units;
    size_t nunits, capunits;
};

struct pass {
    const struct emu_promise *p;
    struct emu_breach *out;
    size_t cap;
    size_t found;
    int64_t *need;
    int64_t *live;          /* enabled patch indexes, oldest first */
    size_t nlive, caplive;
};

static int grow(void **v, size_t *cap, size_t n, size_t size)
{
    size_t want;
    void *p;

    if (n < *cap)
        return 0;
    want = *cap ? *cap * 2 : 16;
    if (!(p = realloc(*v, want * size)))
        return -1;
    *v = p;
    *cap = want;
    return 0;
}

static void breach(struct pass *s, uint64_t clock, int code, int32_t task, int64_t fid, int64_t version,
                   int64_t x, int64_t y)
{
    if (s->found < s->cap)
        s->out[s->found] = (struct emu_breach){clock, fid, version, x, y, code, task};
    s->found++;
}

/* Whether patch idx carries fid (and its force flag). */
static int carries(const struct emu_promise *p, int64_t idx, int64_t fid, int *force)
{
    size_t lo = 0, hi = p->ncarry;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct emu_pcarry *c = &p->carry[mid];
        if (c->idx < idx || (c->idx == idx && c->fid < fid))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < p->ncarry && p->carry[lo].idx == idx && p->carry[lo].fid == fid) {
        *force = p->carry[lo].force != 0;
        return 1;
    }
    return 0;
}

static int carried_by_any(const struct emu_promise *p, int64_t fid)
{
    size_t i;

    for (i = 0; i < p->ncarry; i++)
        if (p->carry[i].fid == fid)
            return 1;
    return 0;
}

/* -1: no such patch; else its replace flag. */
static int replaces(const struct emu_promise *p, int64_t idx)
{
    size_t lo = 0, hi = p->npatch;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->patch[mid].idx < idx)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < p->npatch && p->patch[lo].idx == idx ? p->patch[lo].replace != 0 : -1;
}

/* -1: not in the table; else whether (fid, version) can leave by a tail call. */
static int tail(const struct emu_promise *p, int64_t fid, int64_t version)
{
    size_t lo = 0, hi = p->ntail;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct emu_ptail *t = &p->tail[mid];
        if (t->fid < fid || (t->fid == fid && t->version < version))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < p->ntail && p->tail[lo].fid == fid && p->tail[lo].version == version)
        return p->tail[lo].tail != 0;
    return -1;
}

/* The version of fid just below patch idx: the newest enabled patch but idx
 * that carries it, 0 (the original) when none does. */
static int64_t below(const struct pass *s, int64_t idx, int64_t fid)
{
    size_t i;
    int force;

    for (i = s->nlive; i-- > 0;)
        if (s->live[i] != idx && carries(s->p, s->live[i], fid, &force))
            return s->live[i];
    return 0;
}

/* The version fid resolves to with the enabled patches. */
static int64_t expected(const struct pass *s, int64_t fid)
{
    size_t i;
    int force;

    for (i = s->nlive; i-- > 0;)
        if (carries(s->p, s->live[i], fid, &force))
            return s->live[i];
    return 0;
}

static int in_live(const struct pass *s, int64_t idx)
{
    size_t i;

    for (i = 0; i < s->nlive; i++)
        if (s->live[i] == idx)
            return 1;
    return 0;
}

/* The first frame the transition of patch idx to target checks: 1 (in
 * *hit), 0 none, EMU_ENOENT a tail flag is missing (s->need). Patching
 * checks one version of each function idx carries, the one just below idx
 * (below()): livepatch's klp_check_stack_func (the next entry of the
 * func_stack; a nop's too), kpatch's active func (kpatch_get_func); kpatch
 * skips a func marked force and, with replace, checks every replaced
 * version not marked force. Unpatching checks idx's own version and, with
 * p->unpatch_active, the active one (expected(): kpatch's active func, a
 * newer patch's when one is on top); a livepatch replace's (reversed)
 * the original of each function one of its nops covers (a nop's new_func
 * is the original; it covers what another enabled patch carries and idx
 * does not). After a force a task may hold an older version, which no
 * check looks for. */
static int checked(struct pass *s, int64_t idx, uint64_t target, const struct ptask *t, int forced_ok,
                   struct frame *hit)
{
    const struct emu_promise *p = s->p;
    int replace = replaces(p, idx) == 1;
    size_t i;

    for (i = 0; i < t->nframes; i++) {
        int64_t fid = t->frames[i].fid, version = t->frames[i].version;
        int force = 0, vforce = 0, h, tl;
        int carried = carries(p, idx, fid, &force);
        if (target != EMU_PATCHED)
            h = (carried && !(forced_ok && force)
                 && (version == idx || (p->unpatch_active && version == expected(s, fid))))
                || (p->model == EMU_PM_LIVEPATCH && replace && version == 0 && !carried && below(s, idx, fid) != 0);
        else if (p->model == EMU_PM_LIVEPATCH)
            h = (carried || (replace && version != 0)) && version == below(s, idx, fid);
        else
            h = (carried && !(forced_ok && force) && version == below(s, idx, fid))
                || (replace && version != 0 && version != idx && in_live(s, version)
                    && !(forced_ok && carries(p, version, fid, &vforce) && vforce));
        if (!h)
            continue;
        tl = tail(p, fid, version);
        if (tl < 0) {
            s->need[0] = fid;
            s->need[1] = version;
            return EMU_ENOENT;
        }
        if (!tl) {
            hit->fid = fid;
            hit->version = version;
            return 1;
        }
    }
    return 0;
}

static void unlive(struct pass *s, int64_t idx)
{
    size_t i, k = 0;

    for (i = 0; i < s->nlive; i++)
        if (s->live[i] != idx)
            s->live[k++] = s->live[i];
    s->nlive = k;
}

static int apply(struct pass *s, int64_t idx, uint64_t target)
{
    if (target == EMU_PATCHED && replaces(s->p, idx) == 1) {
        s->nlive = 0;
    } else {
        unlive(s, idx);
        if (target != EMU_PATCHED)
            return EMU_OK;
    }
    if (grow((void **)&s->live, &s->caplive, s->nlive, sizeof(*s->live)))
        return EMU_ENOMEM;
    s->live[s->nlive++] = idx;
    return EMU_OK;
}

static int by_task(const void *a, const void *b)
{
    const struct ptask *x = *(struct ptask *const *)a, *y = *(struct ptask *const *)b;
    return x->task < y->task ? -1 : x->task > y->task;
}

int emu_promise_scan(const struct emu_event *ev, size_t n, const struct emu_promise *p, struct emu_breach *out,
                     size_t cap, size_t *found, int64_t *need)
{
    struct pass s = {p, out, cap, 0, need, NULL, 0, 0};
    struct tidmap map = {0};
    struct ptask *ts = NULL, **order = NULL;
    size_t nts = 0, i;
    int rc = EMU_OK, stopped = 0, has_trans = 0, seen_new = 0;
    int64_t trans_idx = 0;
    uint64_t trans_target = 0;
    int stop_model, lp_or_kg;

    if (!p || !found || !need || (n && !ev) || (cap && !out) || (p->ncarry && !p->carry)
        || (p->npatch && !p->patch) || (p->nroutes && !p->routes) || (p->ntasks && !p->kinds)
        || (p->ntail && !p->tail))
        return EMU_EINVAL;
    for (i = 1; i < p->ncarry; i++)
        if (p->carry[i - 1].idx > p->carry[i].idx
            || (p->carry[i - 1].idx == p->carry[i].idx && p->carry[i - 1].fid >= p->carry[i].fid))
            return EMU_EINVAL;
    for (i = 1; i < p->npatch; i++)
        if (p->patch[i - 1].idx >= p->patch[i].idx)
            return EMU_EINVAL;
    for (i = 1; i < p->ntail; i++)
        if (p->tail[i - 1].fid > p->tail[i].fid
            || (p->tail[i - 1].fid == p->tail[i].fid && p->tail[i - 1].version >= p->tail[i].version))
            return EMU_EINVAL;
    *found = 0;
    stop_model = p->model == EMU_PM_STOP;
    lp_or_kg = p->model == EMU_PM_LIVEPATCH || p->model == EMU_PM_KGRAFT;
    for (i = 0; i < n; i++) {
        const struct emu_event *e = &ev[i];
        struct ptask *t = NULL;
        int32_t slot;
        int force;
        void *arr;

        switch (e->kind) {
        case EMU_EV_ENTRY: case EMU_EV_RETURN: case EMU_EV_UNWOUND: case EMU_EV_RET_UNTRACED:
        case EMU_EV_KERNEL_EXIT: case EMU_EV_EXIT: case EMU_EV_SAFE_POINT: case EMU_EV_SCHED_IN:
        case EMU_EV_SCHED_OUT: case EMU_EV_PATCH_STATE:
            arr = ts;
            slot = tidmap_task(&map, e->task, &arr, &nts, sizeof(*ts));
            ts = arr;
            if (slot < 0) {
                rc = EMU_ENOMEM;
                goto done;
            }
            t = &ts[slot];
            t->task = e->task;
            break;
        case EMU_EV_STOP_MACHINE:
            stopped = e->a != 0;
            continue;
        case EMU_EV_TRANSITION:
            break;
        default:
            continue;
        }

        switch (e->kind) {
        case EMU_EV_ENTRY: {
            int64_t fid = e->a, version = e->b;
            if (grow((void **)&t->frames, &t->capframes, t->nframes, sizeof(*t->frames))) {
                rc = EMU_ENOMEM;
                goto done;
            }
            t->frames[t->nframes++] = (struct frame){fid, version};
            if (!carried_by_any(p, fid))
                break;
            /* _Oracle.entry */
            if (!has_trans || stop_model) {
                int64_t want = expected(&s, fid);
                if (version != want)
                    breach(&s, e->clock, EMU_PB_LEFT_BEHIND, e->task, fid, version, want, 0);
            } else if (carries(p, trans_idx, fid, &force) && lp_or_kg && e->task >= 0) {
                int64_t st = t->has_state ? t->state : EMU_UNDEFINED;
                if (version == trans_idx && st != EMU_PATCHED)
                    breach(&s, e->clock, EMU_PB_EARLY, e->task, fid, version, trans_idx, st);
                if (p->model == EMU_PM_KGRAFT && !t->forced) {
                    struct universe *u = NULL;
                    size_t k;
                    int bit = version == trans_idx ? 2 : 1;
                    for (k = 0; k < t->nunits; k++)
                        if (t->units[k].idx == trans_idx)
                            u = &t->units[k];
                    if (!u) {
                        if (grow((void **)&t->units, &t->capunits, t->nunits, sizeof(*t->units))) {
                            rc = EMU_ENOMEM;
                            goto done;
                        }
                        u = &t->units[t->nunits++];
                        *u = (struct universe){trans_idx, 0};
                    }
                    u->seen |= bit;
                    if (u->seen == 3) {
                        breach(&s, e->clock, EMU_PB_UNIVERSE, e->task, fid, version, trans_idx, 0);
                        u->seen = bit;
                    }
                }
            }
            if (p->model == EMU_PM_IMMEDIATE && has_trans && carries(p, trans_idx, fid, &force)) {
                if ((version == trans_idx) == (trans_target == EMU_PATCHED))
                    seen_new = 1;
                else if (seen_new)
                    breach(&s, e->clock, EMU_PB_TOGETHER, e->task, fid, version, trans_idx, 0);
            }
            break;
        }
        case EMU_EV_RETURN:
        case EMU_EV_UNWOUND:
            if (t->nframes)
                t->nframes--;
            break;
        case EMU_EV_RET_UNTRACED:
            t->lost = 1;
            break;
        case EMU_EV_KERNEL_EXIT:
        case EMU_EV_EXIT:
        case EMU_EV_SAFE_POINT:
            if (e->kind != EMU_EV_SAFE_POINT) {
                t->nframes = 0;
                t->lost = 0;
            }
            t->nunits = 0;
            t->forced = 0;
            break;
        case EMU_EV_SCHED_IN: {
            size_t k;
            for (k = 0; k < map.n; k++)
                if (ts[k].on_cpu && ts[k].cpu == e->a)
                    ts[k].on_cpu = 0;
            t->on_cpu = 1;
            t->cpu = e->a;
            break;
        }
        case EMU_EV_SCHED_OUT:
            if (t->on_cpu && t->cpu == e->a)
                t->on_cpu = 0;
            t->preempted = e->b != 0;
            break;
        case EMU_EV_PATCH_STATE: {
            /* _Oracle.switch */
            int flags = e->b >= 0 && (uint64_t)e->b < p->nroutes ? p->routes[e->b] : 0, kind;
            struct frame hit;
            t->has_state = 1;
            t->state = e->a;
            if (flags & EMU_PR_FORCE)
                t->forced = 1;
            if ((flags & EMU_PR_INIT) || !has_trans)
                break;
            if (!lp_or_kg) {
                breach(&s, e->clock, EMU_PB_NO_SWITCHES, e->task, 0, 0, e->b, 0);
                break;
            }
            if (!(flags & EMU_PR_ALLOWED)) {
                breach(&s, e->clock, EMU_PB_ROUTE, e->task, 0, 0, e->b, 0);
                break;
            }
            kind = e->task >= 0 && (uint64_t)e->task < p->ntasks ? (p->kinds[e->task] <= 1 ? p->kinds[e->task] : 2) : 2;
            if ((!!(flags & EMU_PR_IDLE) != (kind == 2) && !(kind == 2 && (flags & (EMU_PR_STACK | EMU_PR_FORCE))))
                || ((flags & EMU_PR_KERNEL_EXIT) && kind != 0) || ((flags & EMU_PR_SAFE_POINT) && kind != 1))
                breach(&s, e->clock, EMU_PB_KIND, e->task, 0, 0, e->b, 0);
            if (p->model != EMU_PM_LIVEPATCH)
                break;
            if ((flags & EMU_PR_CHECKED) && !t->lost) {
                int r = checked(&s, trans_idx, trans_target, t, 0, &hit);
                if (r < 0) {
                    rc = r;
                    goto done;
                }
                if (r)
                    breach(&s, e->clock, EMU_PB_STACK, e->task, hit.fid, hit.version, e->b, 0);
            }
            if ((flags & EMU_PR_STACK) && t->on_cpu)
                breach(&s, e->clock, EMU_PB_RUNNING, e->task, 0, 0, t->cpu, 0);
            break;
        }
        case EMU_EV_TRANSITION:
            if (e->task >= 0)
                break;
            if (e->a == p->t_start) {
                has_trans = 1;
                trans_idx = e->b;
                trans_target = e->c;
                seen_new = 0;
            } else if (e->a == p->t_switch) {
                uint64_t target = has_trans ? trans_target : EMU_PATCHED;
                if (!stopped)
                    breach(&s, e->clock, EMU_PB_STOPPED, -1, 0, 0, e->b, 0);
                if (!e->c) {
                    size_t k, m = 0;
                    if (!order && map.n && !(order = malloc(nts * sizeof(*order)))) {
                        rc = EMU_ENOMEM;
                        goto done;
                    }
                    for (k = 0; k < map.n; k++)
                        if (ts[k].nframes && !ts[k].lost)
                            order[m++] = &ts[k];
                    if (m)
                        qsort(order, m, sizeof(*order), by_task);
                    for (k = 0; k < m; k++) {
                        struct frame hit;
                        struct ptask view = *order[k];
                        int r;
                        /* promise.py's scan: kpatch's frame-pointer check (bp_blind) */
                        if (p->bp_blind && view.preempted)
                            view.nframes = view.nframes > 2 ? view.nframes - 2 : 0;
                        r = checked(&s, e->b, target, &view, 1, &hit);
                        if (r < 0) {
                            rc = r;
                            goto done;
                        }
                        if (r)
                            breach(&s, e->clock, EMU_PB_SWITCHED_WITH, order[k]->task, hit.fid, hit.version, e->b, 0);
                    }
                    free(order);
                    order = NULL;
                }
                if ((rc = apply(&s, e->b, target)))
                    goto done;
            } else {
                if (e->a == p->t_complete && !stop_model && (rc = apply(&s, e->b, e->c)))
                    goto done;
                has_trans = 0;
            }
            break;
        }
    }
    *found = s.found;
done:
    for (i = 0; i < map.n && i < nts; i++) {
        free(ts[i].frames);
        free(ts[i].units);
    }
    free(ts);
    free(order);
    free(s.live);
    tidmap_free(&map);
    return rc;
}
