/*
 * units.c - the consistency oracle's system-call units over a finished
 * trace: the fast path of emu/runs/oracle.py's check (unit = "syscall"),
 * same results on every trace, damaged ones included (tests/test_units.py
 * holds the two together).
 *
 * Why in C: the Python pass unpacks and reads every event of a run, about
 * 0.2 ms of a seed run.
 *
 * A task's unit gathers the entries of the checked functions until the
 * task's next kernel exit, safe point or exit (tasks with ids >= 0 only:
 * an idle task's unit never ends); one configuration must explain all of
 * them. Units still open when the trace ends are judged last, in the order
 * of their first entries.
 */
#include <stdlib.h>
#include <string.h>
#include "core.h"
#include "tidmap.h"

struct unit_task {
    int32_t task;
    int64_t count;        /* units ended so far */
    uint64_t *ent;        /* event indexes of the open unit's entries */
    size_t nent;
    size_t cap;
};

struct judge {
    const struct emu_event *ev;
    const int64_t *conf_fid;
    const int64_t *conf_ver;
    const size_t *conf_off;
    size_t nconfs;
    struct emu_unit *out;
    size_t cap;
    uint64_t *idx;
    size_t nidx;
    size_t found;
};

/* *at = the first index in [lo, hi) of sorted v whose value is not below x (hi: none). */
static void lower_bound(const int64_t *v, size_t lo, size_t hi, int64_t x, size_t *at)
{
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    *at = lo;
}

/* The version configuration k gives fid (0 when it names none). */
static int64_t conf_version(const struct judge *j, size_t k, int64_t fid)
{
    size_t at, hi = j->conf_off[k + 1];

    lower_bound(j->conf_fid, j->conf_off[k], hi, fid, &at);
    return at < hi && j->conf_fid[at] == fid ? j->conf_ver[at] : 0;
}

static void judge(struct judge *j, const struct unit_task *t, int64_t number, int unfinished, uint64_t end)
{
    size_t k, e;

    for (k = 0; k < j->nconfs; k++) {
        for (e = 0; e < t->nent; e++) {
            const struct emu_event *x = &j->ev[t->ent[e]];
            if (conf_version(j, k, x->a) != x->b)
                break;
        }
        if (e == t->nent)
            return;           /* configuration k explains the unit */
    }
    if (j->found < j->cap) {
        struct emu_unit *u = &j->out[j->found];
        u->start = j->ev[t->ent[0]].clock;
        u->end = end;
        u->number = number;
        u->first = j->nidx;
        u->count = t->nent;
        u->task = t->task;
        u->unfinished = unfinished;
        memcpy(j->idx + j->nidx, t->ent, t->nent * sizeof(*t->ent));
        j->nidx += t->nent;
    }
    j->found++;
}

static int by_first_entry(const void *a, const void *b)
{
    const struct unit_task *x = *(struct unit_task *const *)a, *y = *(struct unit_task *const *)b;
    return x->ent[0] < y->ent[0] ? -1 : x->ent[0] > y->ent[0];
}

int emu_units_check(const struct emu_event *ev, size_t n, const int64_t *fids, size_t nfids,
                    const int64_t *conf_fid, const int64_t *conf_ver, const size_t *conf_off, size_t nconfs,
                    struct emu_unit *out, size_t cap, uint64_t *idx, size_t *found, uint64_t *units)
{
    struct judge j = {ev, conf_fid, conf_ver, conf_off, nconfs, out, cap, idx, 0, 0};
    struct tidmap map = {0};
    struct unit_task *ts = NULL, **open = NULL;
    size_t nts = 0, i, nopen = 0;
    uint64_t ended = 0;
    int rc = EMU_OK;

    if (!found || !units || (n && (!ev || !idx)) || (nfids && !fids) || (cap && !out) || (nconfs && !conf_off))
        return EMU_EINVAL;
    *found = 0;
    *units = 0;
    for (i = 1; i < nfids; i++)
        if (fids[i - 1] > fids[i])
            return EMU_EINVAL;
    for (i = 0; i < nconfs; i++) {
        size_t k;
        if (conf_off[i] > conf_off[i + 1] || (conf_off[i + 1] > conf_off[i] && (!conf_fid || !conf_ver)))
            return EMU_EINVAL;
        for (k = conf_off[i] + 1; k < conf_off[i + 1]; k++)
            if (conf_fid[k - 1] > conf_fid[k])
                return EMU_EINVAL;
    }
    for (i = 0; i < n; i++) {
        const struct emu_event *e = &ev[i];
        struct unit_task *t;
        int32_t slot;
        void *arr;
        int end = e->kind == EMU_EV_KERNEL_EXIT || e->kind == EMU_EV_SAFE_POINT || e->kind == EMU_EV_EXIT;
        size_t at;

        if (e->kind == EMU_EV_ENTRY) {
            lower_bound(fids, 0, nfids, e->a, &at);
            if (at == nfids || fids[at] != e->a)
                continue;
        } else if (!end || e->task < 0) {
            continue;
        }
        arr = ts;
        slot = tidmap_task(&map, e->task, &arr, &nts, sizeof(*ts));
        ts = arr;
        if (slot < 0) {
            rc = EMU_ENOMEM;
            goto done;
        }
        t = &ts[slot];
        t->task = e->task;
        if (end) {
            t->count++;
            ended++;
            if (t->nent) {
                judge(&j, t, t->count, 0, e->clock);
                t->nent = 0;
            }
            continue;
        }
        if (t->nent == t->cap) {
            size_t want = t->cap ? t->cap * 2 : 16;
            uint64_t *p = realloc(t->ent, want * sizeof(*p));
            if (!p) {
                rc = EMU_ENOMEM;
                goto done;
            }
            t->ent = p;
            t->cap = want;
        }
        t->ent[t->nent++] = i;
    }
    if (map.n && !(open = malloc(map.n * sizeof(*open)))) {
        rc = EMU_ENOMEM;
        goto done;
    }
    for (i = 0; i < map.n; i++)
        if (ts[i].nent)
            open[nopen++] = &ts[i];
    if (nopen)
        qsort(open, nopen, sizeof(*open), by_first_entry);
    for (i = 0; i < nopen; i++)
        judge(&j, open[i], open[i]->count + 1, 1, ev[open[i]->ent[open[i]->nent - 1]].clock);
    *found = j.found;
    *units = ended + nopen;
done:
    for (i = 0; i < map.n && i < nts; i++)
        free(ts[i].ent);
    free(ts);
    free(open);
    tidmap_free(&map);
    return rc;
}
