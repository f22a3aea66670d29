/*
 * sched.c - the machine's scheduler loop, kept in C.
 *
 * Python's Machine.run used to choose every slice itself; at about 10 us a
 * slice that was most of a fuzzing run. This loop runs the same rounds
 * (one slice per CPU, in turn), handles the hypercalls that need no kernel
 * decision (sleep, yield, return to user, safe point, exit), wakes sleepers
 * when their time comes and jumps idle time, and returns to Python only when
 * Python has work: a timer of its own is due, a task whose switch points a
 * model watches (TIF_PATCH_PENDING) reached one, a fault, a pick for a
 * seeded policy, or the end. emu/pysched.py is its pure-Python twin; both
 * work on the same state array, so Machine.run can hand a run from one to
 * the other at any return (it does so during stop_machine).
 *
 * Every return leaves the state resumable: a slice interrupted by a return
 * goes on at the next call (EMU_SG_INSLICE), an ended slice whose round step
 * is still due takes it first (EMU_SG_AFTER).
 */
#include <stdlib.h>
#include <string.h>
#include "core.h"

#define FOREVER ((int64_t)1 << 62)

struct sched {
    struct emu_core *c;
    int64_t *g;         /* globals */
    int64_t *t;         /* task records */
    int64_t *cpu;       /* CPU records */
    int64_t *rq;        /* run queues */
    int ntasks;
    int ncpus;
    struct emu_stop *stop;
};

#define G(k)      (s->g[EMU_SG_##k])
#define T(tid, k) (s->t[(size_t)(tid) * EMU_TF_COUNT + EMU_TF_##k])
#define C(i, k)   (s->cpu[(size_t)(i) * EMU_CF_COUNT + EMU_CF_##k])
#define RQ(i)     (s->rq + (size_t)(i) * s->ntasks)

int emu_sched_init(struct emu_core *c, int ntasks, int ncpus)
{
    size_t n;

    if (!c || ntasks <= 0 || ncpus <= 0 || ntasks > 1 << 20 || ncpus > 4096 || c->sched)
        return EMU_EINVAL;
    n = EMU_SG_COUNT + (size_t)(ntasks + ncpus) * EMU_TF_COUNT + (size_t)ncpus * EMU_CF_COUNT
        + (size_t)ncpus * ntasks;
    c->sched = calloc(n, sizeof(int64_t));
    if (!c->sched)
        return EMU_ENOMEM;
    c->sched_n = (int)n;
    c->sched[EMU_SG_NTASKS] = ntasks;
    c->sched[EMU_SG_NCPUS] = ncpus;
    return EMU_OK;
}

int64_t *emu_sched_state(struct emu_core *c)
{
    return c ? c->sched : NULL;
}

int emu_sched_size(struct emu_core *c)
{
    return c ? c->sched_n : 0;
}

static uint64_t now(const struct sched *s)
{
    return s->c->clock;
}

static void emit(struct sched *s, int kind, int tid, int64_t a)
{
    __emu_event(s->c, kind, tid, a, 0, 0, now(s));
}

static int runnable(const struct sched *s, int64_t tid)
{
    return T(tid, STATE) == EMU_TS_RUNNABLE;
}

/* Take tid out of CPU i's queue (and, with again, put it back at the
 * tail). Nothing happens when it is not there. */
static void unqueue(struct sched *s, int i, int64_t tid, int again)
{
    int64_t *q = RQ(i), n = C(i, RQLEN), k;

    for (k = 0; k < n && q[k] != tid; k++)
        ;
    if (k == n)
        return;
    memmove(q + k, q + k + 1, (size_t)(n - k - 1) * sizeof(*q));
    if (again)
        q[n - 1] = tid;
    else
        C(i, RQLEN) = n - 1;
}

static void requeue(struct sched *s, int i, int64_t tid)
{
    unqueue(s, i, tid, 1);
}

static void schedule_out(struct sched *s, int i, int64_t tid, int preempted)
{
    T(tid, PREEMPTED) = preempted;
    T(tid, SINCE) = 0;
    if (C(i, CURRENT) == tid)
        C(i, CURRENT) = -1;
    requeue(s, i, tid);
}

/* A sleeper's time came: it runs again, its sleep returning 0. */
static int wake(struct sched *s, int64_t tid)
{
    uint64_t zero = 0;

    if (emu_switch(s->c, (int)tid) || uc_reg_write(s->c->uc, UC_X86_REG_RAX, &zero))
        return EMU_EUC;
    T(tid, STATE) = EMU_TS_RUNNABLE;
    T(tid, WAKE_AT) = -1;
    emit(s, EMU_EV_WAKE, (int)tid, 0);
    return 0;
}

/* Wake every sleeper whose time has come, in task order. */
static int fire_wakes(struct sched *s)
{
    int64_t next = -1, w;
    int tid, rc;

    if (G(NEXT_WAKE) < 0 || (int64_t)now(s) < G(NEXT_WAKE))
        return 0;
    for (tid = 0; tid < s->ntasks; tid++) {
        if (T(tid, STATE) != EMU_TS_SLEEPING || (w = T(tid, WAKE_AT)) < 0)
            continue;
        if (w <= (int64_t)now(s)) {
            if ((rc = wake(s, tid)))
                return rc;
        } else if (next < 0 || w < next) {
            next = w;
        }
    }
    G(NEXT_WAKE) = next;
    return 0;
}

/* Room for what one step may record (a wake per task at most): else
 * Python drains the ring first. */
static int ring_full(const struct sched *s)
{
    return s->c->ev_n + s->ntasks + 64 > s->c->ev_cap;
}

static int64_t lower(int64_t a, int64_t b)
{
    if (a < 0)
        return b;
    if (b < 0)
        return a;
    return a < b ? a : b;
}

/* The task CPU i runs next (-1: none), or EMU_SR_PICK when Python must choose. */
static int pick(struct sched *s, int i, int64_t *out)
{
    int64_t cur = C(i, CURRENT), *q = RQ(i), n = C(i, RQLEN), k, task = -1, cands = 0, skip = -1;

    if (cur >= 0 && runnable(s, cur) && !T(cur, NEED_RESCHED)) {
        *out = cur;
        return 0;
    }
    for (k = 0; k < n; k++)
        cands += runnable(s, q[k]);
    if (!cands) {
        *out = -1;
        return 0;
    }
    if (cur >= 0 && runnable(s, cur) && T(cur, NEED_RESCHED) && cands > 1)
        skip = cur;
    if (G(POLICY_RR)) {
        for (k = 0; k < n && task < 0; k++)
            if (runnable(s, q[k]) && q[k] != skip)
                task = q[k];
    } else if (G(PICK) >= 0) {
        task = G(PICK);
        G(PICK) = -1;
        for (k = 0; k < n && q[k] != task; k++)
            ;
        if (k == n || !runnable(s, task) || task == skip)
            return EMU_EINVAL;
    } else {
        G(RCPU) = i;
        G(RTASK) = skip;
        return EMU_SR_PICK;
    }
    if (cur >= 0 && cur != task) {
        requeue(s, i, cur);
        G(PREEMPTIONS) += runnable(s, cur);
    }
    if (task != C(i, CURRENT)) {
        C(i, CURRENT) = task;
        emit(s, EMU_EV_SCHED_IN, (int)task, i);
    }
    T(task, NEED_RESCHED) = 0;
    *out = task;
    return 0;
}

/* cond_resched() or a kernel exit. Without a watcher the switch tail runs
 * here; otherwise Python runs the hooks, then the tail. */
static int switch_point(struct sched *s, int i, int64_t tid, int event, int reason)
{
    emit(s, event, (int)tid, 0);
    T(tid, PREEMPTED) = 0;
    if (T(tid, NOTIFY) || G(NOTIFY_ALL)) {
        G(RTASK) = tid;
        G(RCPU) = i;
        return reason;
    }
    T(tid, SINCE) = 0;
    if (T(tid, NEED_RESCHED) || G(SM))
        schedule_out(s, i, tid, 0);
    return 0;
}

static int hypercall(struct sched *s, int i, int64_t tid)
{
    int64_t a = s->stop->hc_args[0];

    G(RTASK) = tid;
    G(RCPU) = i;
    switch (s->stop->hc_nr) {
    case EMU_HC_SLEEP: {
        int64_t t = (int64_t)now(s), wake_at = -1;
        if (a >= 0)
            wake_at = a > (FOREVER - t) / G(TICK) ? FOREVER : t + a * G(TICK);
        T(tid, STATE) = EMU_TS_SLEEPING;
        T(tid, WAKE_AT) = wake_at;
        T(tid, INTERRUPTIBLE) = 1;
        emit(s, EMU_EV_SLEEP, (int)tid, wake_at);
        schedule_out(s, i, tid, 0);
        if (wake_at >= 0)
            G(NEXT_WAKE) = lower(G(NEXT_WAKE), wake_at);
        return 0;
    }
    case EMU_HC_YIELD:
        return switch_point(s, i, tid, EMU_EV_YIELD, EMU_SR_COND_RESCHED);
    case EMU_HC_RETURN_TO_USER:
        if (T(tid, KIND) != EMU_TK_USER)
            return EMU_SR_KTHREAD_RET;
        T(tid, KERNEL_ENTRIES)++;
        return switch_point(s, i, tid, EMU_EV_KERNEL_EXIT, EMU_SR_KERNEL_EXIT);
    case EMU_HC_SAFE_POINT:
        T(tid, PREEMPTED) = 0;
        T(tid, KERNEL_ENTRIES)++;
        emit(s, EMU_EV_SAFE_POINT, (int)tid, 0);
        return T(tid, NOTIFY) || G(NOTIFY_ALL) ? EMU_SR_SAFE_POINT : 0;
    case EMU_HC_EXIT:
        T(tid, STATE) = EMU_TS_EXITED;
        T(tid, EXIT_CODE) = a;
        T(tid, EXITED) = 1;
        G(LIVE)--;
        emit(s, EMU_EV_EXIT, (int)tid, a);
        schedule_out(s, i, tid, 0);
        unqueue(s, i, tid, 0);
        return 0;
    default:
        return EMU_SR_HYPERCALL;
    }
}

/* Mid-slice, time reached a wake-up or Python's deadline: wake the
 * sleepers, and come back for Python's timers (the slice goes on after
 * them, unless they started stop_machine). */
static int due(struct sched *s, int64_t deadline)
{
    int rc = fire_wakes(s);

    if (rc)
        return rc;
    if (deadline >= 0 && (int64_t)now(s) >= deadline) {
        G(CHECK_SM) = 1;
        return EMU_SR_TIMER;
    }
    return 0;
}

/* The slice in progress on CPU rr: run until its budget is spent, the task
 * leaves the CPU, or Python is needed. 0 when the slice ended. */
static int run_slice(struct sched *s, int64_t until, int64_t deadline)
{
    int i = (int)G(RR), rc;
    int64_t tid = G(STASK);

    if (G(CHECK_SM)) {
        G(CHECK_SM) = 0;
        if (G(SM))
            goto ended;
    }
    for (;;) {
        int64_t limit, budget, t;
        int precise = 0;

        if (ring_full(s))
            return EMU_SR_EVENTS;
        /* at the top, so that a resumed slice checks what its last run did */
        if (T(tid, SINCE) > G(LOCKUP)) {
            G(RTASK) = tid;
            G(RCPU) = i;
            return EMU_SR_LOCKUP;
        }
        if (!(G(REMAIN) > 0 && C(i, CURRENT) == tid && runnable(s, tid)))
            break;
        t = (int64_t)now(s);
        limit = lower(lower(deadline, until), G(NEXT_WAKE));
        budget = G(REMAIN);
        if (limit >= 0 && limit - t < budget) {
            budget = limit - t;
            precise = 1;
        }
        if (budget <= 0) {
            if (until >= 0 && t >= until) {
                G(SLICE_LEFT) = G(REMAIN);
                G(INSLICE) = 0;
                return EMU_SR_UNTIL;
            }
            if ((rc = due(s, deadline)))
                return rc;
            continue;
        }
        if (emu_switch(s->c, (int)tid))
            return EMU_EUC;
        if ((rc = emu_run(s->c, (uint64_t)budget, precise, s->stop)))
            return rc;
        G(ROUND_RAN) = 1;
        T(tid, PREEMPTED) = 1;
        G(REMAIN) -= (int64_t)s->stop->executed;
        T(tid, SINCE) += (int64_t)s->stop->executed;
        switch (s->stop->reason) {
        case EMU_STOP_HYPERCALL:
            if ((rc = hypercall(s, i, tid)))
                return rc;
            break;
        case EMU_STOP_FAULT:
            G(RTASK) = tid;
            G(RCPU) = i;
            return EMU_SR_FAULT;
        case EMU_STOP_EVENTS_FULL:
            return EMU_SR_EVENTS;
        case EMU_STOP_BUDGET:
            if (G(REMAIN) > 0 && (rc = due(s, deadline)))
                return rc;
            break;
        default:
            break;
        }
    }
ended:
    if (G(REMAIN) <= 0 && C(i, CURRENT) == tid && runnable(s, tid)) {
        int64_t *q = RQ(i), n = C(i, RQLEN), k, others = 0;
        for (k = 0; k < n; k++)
            others += q[k] != tid && runnable(s, q[k]);
        if (others) {
            if (G(PREEMPT) == 2) {
                schedule_out(s, i, tid, 1);
                G(PREEMPTIONS)++;
            } else {
                T(tid, NEED_RESCHED) = 1;
            }
        }
    }
    C(i, SLICES)++;
    G(INSLICE) = 0;
    G(AFTER) = 1;
    return 0;
}

/* Every CPU idled through a round: move time to the next wake or timer. */
static int idle_jump(struct sched *s, int64_t until, int64_t deadline)
{
    int64_t nxt = lower(G(NEXT_WAKE), deadline);
    int tid;

    if (nxt < 0) {
        for (tid = 0; tid < s->ntasks; tid++)
            if (T(tid, STATE) == EMU_TS_SLEEPING)
                return EMU_SR_HANG;
        return EMU_SR_END;
    }
    if (until >= 0 && nxt > until)
        s->c->clock = (uint64_t)until;
    else if (nxt > (int64_t)now(s))
        s->c->clock = (uint64_t)nxt;
    return 0;
}

/* The state is Python's to write too: check every index the loop follows. */
static int state_ok(const struct sched *s)
{
    int i;
    int64_t k;

    if (G(TICK) <= 0 || G(RR) < 0 || G(RR) >= s->ncpus || G(PICK) < -1 || G(PICK) >= s->ntasks)
        return 0;
    if (G(INSLICE) && (G(STASK) < 0 || G(STASK) >= s->ntasks))
        return 0;
    for (i = 0; i < s->ncpus; i++) {
        if (C(i, RQLEN) < 0 || C(i, RQLEN) > s->ntasks || C(i, CURRENT) < -1 || C(i, CURRENT) >= s->ntasks)
            return 0;
        for (k = 0; k < C(i, RQLEN); k++)
            if (RQ(i)[k] < 0 || RQ(i)[k] >= s->ntasks)
                return 0;
    }
    return 1;
}

int emu_sched_run(struct emu_core *c, int64_t until, int64_t deadline, struct emu_stop *stop)
{
    struct sched st, *s = &st;
    int rc;

    if (!c || !c->sched || !stop || c->stop || c->ntasks != c->sched[EMU_SG_NTASKS])
        return EMU_EINVAL;
    s->c = c;
    s->g = c->sched;
    s->ntasks = (int)s->g[EMU_SG_NTASKS];
    s->ncpus = (int)s->g[EMU_SG_NCPUS];
    s->t = s->g + EMU_SG_COUNT;
    s->cpu = s->t + (size_t)(s->ntasks + s->ncpus) * EMU_TF_COUNT;
    s->rq = s->cpu + (size_t)s->ncpus * EMU_CF_COUNT;
    s->stop = stop;
    memset(stop, 0, sizeof(*stop));
    if (!state_ok(s))
        return EMU_EINVAL;
    for (;;) {
        if (!G(INSLICE) && !G(AFTER)) {
            int i = (int)G(RR);
            int64_t task;

            if (ring_full(s))
                return EMU_SR_EVENTS;
            if ((rc = fire_wakes(s)))
                return rc;
            if (deadline >= 0 && (int64_t)now(s) >= deadline)
                return EMU_SR_TIMER;
            if (until >= 0 && (int64_t)now(s) >= until)
                return EMU_SR_UNTIL;
            if (G(LIVE) <= 0)
                return EMU_SR_DONE;
            if (G(SM))
                return EMU_SR_SM;
            if ((rc = pick(s, i, &task)))
                return rc;
            if (task < 0) {
                C(i, CURRENT) = -1;
                C(i, SLICES)++;
                G(AFTER) = 1;
                if (T(s->ntasks + i, NOTIFY) || G(NOTIFY_ALL)) {
                    G(RCPU) = i;
                    return EMU_SR_IDLE;
                }
            } else {
                G(REMAIN) = G(SLICE_LEFT) ? G(SLICE_LEFT) : G(QUANTUM);
                G(SLICE_LEFT) = 0;
                G(STASK) = task;
                G(INSLICE) = 1;
                G(CHECK_SM) = 0;
            }
        }
        if (G(INSLICE) && (rc = run_slice(s, until, deadline)))
            return rc;
        /* the round step */
        G(AFTER) = 0;
        G(RR) = (G(RR) + 1) % s->ncpus;
        if (G(RR) == 0) {
            int idle = !G(ROUND_RAN);
            G(ROUND_RAN) = 0;
            if (idle) {
                if (G(EACH_SLICE))
                    return EMU_SR_IDLE_ROUND;
                if ((rc = idle_jump(s, until, deadline)))
                    return rc;
            }
        }
        if (G(EACH_SLICE))
            return EMU_SR_SLICE;
    }
}
