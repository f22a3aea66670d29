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
 * seeded policy, or the end. emu/engine/sched.py is its pure-Python twin;
 * both work on the same state (struct emu_sched, emu.h), so the machine
 * can hand a run from one to the other at any return (it does so during
 * stop_machine). Python changes that state only through the setters here,
 * which check every value.
 *
 * Kernel work runs on CPUs too (emu/machine/works.py): a CPU whose work
 * flag is set goes to the kernel thread waiting for it (EMU_SR_WORK) when no
 * task is on it, or at once with full preemption; otherwise its task runs
 * on to its next scheduling point (a yield, a kernel exit, a sleep, its
 * exit), which takes it off the CPU. Without full preemption a task never
 * leaves its CPU between two instructions: a slice end only sets
 * need_resched, which its next scheduling point acts on. A CPU given to
 * the work at the start of its turn keeps that turn for a task of its
 * queue, which runs once the work's step is done.
 *
 * Every return leaves the state resumable: a slice interrupted by a return
 * goes on at the next call (inslice), an ended slice whose round step is
 * still due takes it first (after).
 */
#include <stdlib.h>
#include <string.h>
#include "core.h"

#define FOREVER ((int64_t)1 << 62)

struct sched {
    struct emu_core *c;
    struct emu_sched_globals *g;
    struct emu_sched_task *t;     /* task records, then the idle tasks' */
    struct emu_sched_cpu *cpu;
    int64_t *rq;                  /* run queues */
    int ntasks;
    int ncpus;
    struct emu_stop *stop;
};

#define G(k)      (s->g->k)
#define T(tid, k) (s->t[tid].k)
#define C(i, k)   (s->cpu[i].k)
#define RQ(i)     (s->rq + (size_t)(i) * s->ntasks)

static size_t align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

size_t emu_sched_bytes(int ntasks, int ncpus)
{
    if (ntasks <= 0 || ncpus <= 0 || ntasks > EMU_SCHED_MAX_TASKS || ncpus > EMU_SCHED_MAX_CPUS)
        return 0;
    return align8(sizeof(struct emu_sched_globals))
           + (size_t)(ntasks + ncpus) * sizeof(struct emu_sched_task)
           + (size_t)ncpus * sizeof(struct emu_sched_cpu)
           + (size_t)ncpus * (size_t)ntasks * sizeof(int64_t);
}

int emu_sched_init(struct emu_core *c, int ntasks, int ncpus, void *mem, size_t size)
{
    size_t n = emu_sched_bytes(ntasks, ncpus);
    uint8_t *p = mem;

    if (!c || !n || !mem || size != n || (uintptr_t)mem & 7 || c->sched_mem)
        return EMU_EINVAL;
    /* The loop keeps room in the event ring for a round of every task
     * (ring_full): a ring without room for that and more would be full
     * before anything ran, and the loop would come back for ever. */
    if ((int64_t)ntasks + ncpus + EMU_SCHED_RING_ROOM > c->ev_cap)
        return EMU_ERANGE;
    memset(mem, 0, n);
    c->sched_mem = mem;
    c->sched_bytes = n;
    c->sched.g = (struct emu_sched_globals *)p;
    p += align8(sizeof(struct emu_sched_globals));
    c->sched.tasks = (struct emu_sched_task *)p;
    p += (size_t)(ntasks + ncpus) * sizeof(struct emu_sched_task);
    c->sched.cpus = (struct emu_sched_cpu *)p;
    p += (size_t)ncpus * sizeof(struct emu_sched_cpu);
    c->sched.rq = (int64_t *)p;
    c->sched.g->ntasks = ntasks;
    c->sched.g->ncpus = ncpus;
    c->sched.g->pick = -1;
    c->sched.g->next_wake = -1;
    c->sched.g->rtask = -1;
    return EMU_OK;
}

int emu_sched_layout(struct emu_core *c, struct emu_sched *out)
{
    if (!c || !c->sched_mem || !out)
        return EMU_EINVAL;
    *out = c->sched;
    return EMU_OK;
}

/* ---- the setters: every value Python gives is checked here ------------- */

static int in(int64_t v, int64_t lo, int64_t hi)   /* lo <= v < hi */
{
    return v >= lo && v < hi;
}

/* A slice's length: the quantum, or with jitter a draw in 1..quantum from
 * the run's generator (Knuth's MMIX LCG; its high bits), so that where
 * the CPUs stand when kernel work runs is not fixed by how the quantum
 * aligns with the tasks' loops. The twin: Sched._length in sched.py. */
static int64_t slice_length(struct sched *s)
{
    uint64_t x;

    if (!G(jitter))
        return G(quantum);
    x = (uint64_t)G(jstate) * 6364136223846793005ULL + 1442695040888963407ULL;
    G(jstate) = (int64_t)x;
    return 1 + (int64_t)((x >> 33) % (uint64_t)G(quantum));
}

int emu_sched_set_global(struct emu_core *c, int field, int64_t v)
{
    struct emu_sched_globals *g;
    int64_t nt, nc;

    if (!c || !c->sched_mem)
        return EMU_EINVAL;
    g = c->sched.g;
    nt = g->ntasks;
    nc = g->ncpus;
    switch (field) {
    case EMU_SG_QUANTUM:     if (v <= 0) return EMU_EINVAL; g->quantum = v; break;
    case EMU_SG_PREEMPT:     if (!in(v, 0, 3)) return EMU_EINVAL; g->preempt = v; break;
    case EMU_SG_TICK:        if (v <= 0) return EMU_EINVAL; g->tick = v; break;
    case EMU_SG_LOCKUP:      if (v < 0) return EMU_EINVAL; g->lockup = v; break;
    case EMU_SG_POLICY_RR:   if (!in(v, 0, 2)) return EMU_EINVAL; g->policy_rr = v; break;
    case EMU_SG_NOTIFY_ALL:  if (!in(v, 0, 2)) return EMU_EINVAL; g->notify_all = v; break;
    case EMU_SG_EACH_SLICE:  if (!in(v, 0, 2)) return EMU_EINVAL; g->each_slice = v; break;
    case EMU_SG_SM:          if (!in(v, 0, 2)) return EMU_EINVAL; g->sm = v; break;
    case EMU_SG_RR:          if (!in(v, 0, nc)) return EMU_EINVAL; g->rr = v; break;
    case EMU_SG_ROUND_RAN:   if (!in(v, 0, 2)) return EMU_EINVAL; g->round_ran = v; break;
    case EMU_SG_SLICE_LEFT:  if (v < 0) return EMU_EINVAL; g->slice_left = v; break;
    case EMU_SG_INSLICE:     if (!in(v, 0, 2)) return EMU_EINVAL; g->inslice = v; break;
    case EMU_SG_STASK:       if (!in(v, 0, nt)) return EMU_EINVAL; g->stask = v; break;
    case EMU_SG_REMAIN:      g->remain = v; break;
    case EMU_SG_PICK:        if (!in(v, -1, nt)) return EMU_EINVAL; g->pick = v; break;
    case EMU_SG_NEXT_WAKE:   if (v < -1) return EMU_EINVAL; g->next_wake = v; break;
    case EMU_SG_CHECK_SM:    if (!in(v, 0, 2)) return EMU_EINVAL; g->check_sm = v; break;
    case EMU_SG_AFTER:       if (!in(v, 0, 2)) return EMU_EINVAL; g->after = v; break;
    case EMU_SG_PREEMPTIONS: if (v < 0) return EMU_EINVAL; g->preemptions = v; break;
    case EMU_SG_RTASK:       if (!in(v, -1, nt)) return EMU_EINVAL; g->rtask = v; break;
    case EMU_SG_RCPU:        if (!in(v, 0, nc)) return EMU_EINVAL; g->rcpu = v; break;
    case EMU_SG_LIVE:        if (!in(v, 0, nt + 1)) return EMU_EINVAL; g->live = v; break;
    case EMU_SG_JITTER:      if (!in(v, 0, 2)) return EMU_EINVAL; g->jitter = v; break;
    case EMU_SG_JSTATE:      g->jstate = v; break;
    case EMU_SG_WATCH_HIT:   if (!in(v, 0, 2)) return EMU_EINVAL; g->watch_hit = v; break;
    case EMU_SG_QUIET:       if (!in(v, 0, 2)) return EMU_EINVAL; g->quiet = v; break;
    case EMU_SG_NOTIFY_YIELD: if (!in(v, 0, 2)) return EMU_EINVAL; g->notify_yield = v; break;
    default:                 return EMU_EINVAL;
    }
    return EMU_OK;
}

int emu_sched_set_task(struct emu_core *c, int tid, int field, int64_t v)
{
    struct emu_sched_task *t;

    if (!c || !c->sched_mem || !in(tid, 0, c->sched.g->ntasks + c->sched.g->ncpus))
        return EMU_EINVAL;
    t = &c->sched.tasks[tid];
    switch (field) {
    case EMU_TF_STATE:          if (!in(v, EMU_TS_RUNNABLE, EMU_TS_EXITED + 1)) return EMU_EINVAL; t->state = v; break;
    case EMU_TF_KIND:           if (!in(v, EMU_TK_USER, EMU_TK_KTHREAD + 1)) return EMU_EINVAL; t->kind = v; break;
    case EMU_TF_CPU:            if (!in(v, 0, c->sched.g->ncpus)) return EMU_EINVAL; t->cpu = v; break;
    case EMU_TF_WAKE_AT:        if (v < -1) return EMU_EINVAL; t->wake_at = v; break;
    case EMU_TF_INTERRUPTIBLE:  if (!in(v, 0, 2)) return EMU_EINVAL; t->interruptible = v; break;
    case EMU_TF_PREEMPTED:      if (!in(v, 0, 2)) return EMU_EINVAL; t->preempted = v; break;
    case EMU_TF_NEED_RESCHED:   if (!in(v, 0, 2)) return EMU_EINVAL; t->need_resched = v; break;
    case EMU_TF_NOTIFY:         if (!in(v, 0, 2)) return EMU_EINVAL; t->notify = v; break;
    case EMU_TF_KERNEL_ENTRIES: if (v < 0) return EMU_EINVAL; t->kernel_entries = v; break;
    case EMU_TF_SINCE:          if (v < 0) return EMU_EINVAL; t->since = v; break;
    case EMU_TF_EXIT_CODE:      t->exit_code = v; break;
    case EMU_TF_EXITED:         if (!in(v, 0, 2)) return EMU_EINVAL; t->exited = v; break;
    case EMU_TF_WATCH:          if (!in(v, 0, 2)) return EMU_EINVAL; t->watch = v; break;
    default:                    return EMU_EINVAL;
    }
    return EMU_OK;
}

int emu_sched_set_cpu(struct emu_core *c, int cpu, int field, int64_t v)
{
    struct emu_sched_cpu *p;

    if (!c || !c->sched_mem || !in(cpu, 0, c->sched.g->ncpus))
        return EMU_EINVAL;
    p = &c->sched.cpus[cpu];
    switch (field) {
    case EMU_CF_CURRENT: if (!in(v, -1, c->sched.g->ntasks)) return EMU_EINVAL; p->current = v; break;
    case EMU_CF_SLICES:  if (v < 0) return EMU_EINVAL; p->slices = v; break;
    case EMU_CF_WORK:    if (!in(v, 0, 2)) return EMU_EINVAL; p->work = v; break;
    case EMU_CF_GOAL:    if (v < 0) return EMU_EINVAL; p->goal = v; break;
    default:             return EMU_EINVAL;
    }
    return EMU_OK;
}

int emu_sched_set_queue(struct emu_core *c, int cpu, const int64_t *tids, int n)
{
    int64_t nt;
    int i, j;

    if (!c || !c->sched_mem || !in(cpu, 0, c->sched.g->ncpus) || n < 0 || (n && !tids))
        return EMU_EINVAL;
    nt = c->sched.g->ntasks;
    if (n > nt)
        return EMU_EINVAL;
    for (i = 0; i < n; i++) {
        if (!in(tids[i], 0, nt))
            return EMU_EINVAL;
        for (j = 0; j < i; j++)
            if (tids[j] == tids[i])
                return EMU_EINVAL;
    }
    if (n)
        memmove(c->sched.rq + (size_t)cpu * (size_t)nt, tids, (size_t)n * sizeof(*tids));
    c->sched.cpus[cpu].rqlen = n;
    return EMU_OK;
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
    return T(tid, state) == EMU_TS_RUNNABLE;
}

/* Whether Python's watchers want tid's switch points (or its idle slices,
 * for a CPU's idle task). */
static int notified(const struct sched *s, int64_t tid)
{
    return G(notify_all) || (T(tid, notify) && !G(quiet));
}

/* CPU i's current task becomes tid (-1: none); a watched task leaving it
 * brings the loop back at the round step. */
static void set_current(struct sched *s, int i, int64_t tid)
{
    int64_t old = C(i, current);

    if (old >= 0 && old != tid && T(old, watch))
        G(watch_hit) = 1;
    C(i, current) = tid;
}

/* 0: no CPU has a goal; 1: some goal is not reached; 2: every goal is. */
static int goals(const struct sched *s)
{
    int i, any = 0;

    for (i = 0; i < s->ncpus; i++) {
        if (C(i, goal) <= 0)
            continue;
        if (C(i, slices) < C(i, goal))
            return 1;
        any = 1;
    }
    return any ? 2 : 0;
}

/* Take tid out of CPU i's queue (and, with again, put it back at the
 * tail). Nothing happens when it is not there. */
static void unqueue(struct sched *s, int i, int64_t tid, int again)
{
    int64_t *q = RQ(i), n = C(i, rqlen), k;

    for (k = 0; k < n && q[k] != tid; k++)
        ;
    if (k == n)
        return;
    memmove(q + k, q + k + 1, (size_t)(n - k - 1) * sizeof(*q));
    if (again)
        q[n - 1] = tid;
    else
        C(i, rqlen) = n - 1;
}

static void requeue(struct sched *s, int i, int64_t tid)
{
    unqueue(s, i, tid, 1);
}

static void schedule_out(struct sched *s, int i, int64_t tid, int preempted)
{
    T(tid, preempted) = preempted;
    T(tid, since) = 0;
    if (C(i, current) == tid) {
        set_current(s, i, -1);
        __emu_event(s->c, EMU_EV_SCHED_OUT, (int)tid, i, preempted, 0, now(s));
    }
    requeue(s, i, tid);
}

/* A sleeper's time came: it runs again, its sleep returning 0. */
static int wake(struct sched *s, int64_t tid)
{
    uint64_t zero = 0;

    if (emu_switch(s->c, (int)tid) || uc_reg_write(s->c->uc, UC_X86_REG_RAX, &zero))
        return EMU_EUC;
    T(tid, state) = EMU_TS_RUNNABLE;
    T(tid, wake_at) = -1;
    emit(s, EMU_EV_WAKE, (int)tid, 0);
    return 0;
}

/* Wake every sleeper whose time has come, in task order. */
static int fire_wakes(struct sched *s)
{
    int64_t next = -1, w;
    int tid, rc;

    if (G(next_wake) < 0 || (int64_t)now(s) < G(next_wake))
        return 0;
    for (tid = 0; tid < s->ntasks; tid++) {
        if (T(tid, state) != EMU_TS_SLEEPING || (w = T(tid, wake_at)) < 0)
            continue;
        if (w <= (int64_t)now(s)) {
            if ((rc = wake(s, tid)))
                return rc;
        } else if (next < 0 || w < next) {
            next = w;
        }
    }
    G(next_wake) = next;
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
    int64_t cur = C(i, current), *q = RQ(i), n = C(i, rqlen), k, task = -1, cands = 0, skip = -1;

    /* Without full preemption a task leaves its CPU only at a scheduling
     * point (switch_point, a sleep, its exit); need_resched waits for it. */
    if (cur >= 0 && runnable(s, cur) && (!T(cur, need_resched) || G(preempt) != 2)) {
        *out = cur;
        return 0;
    }
    for (k = 0; k < n; k++)
        cands += runnable(s, q[k]);
    if (!cands) {
        *out = -1;
        return 0;
    }
    if (cur >= 0 && runnable(s, cur) && T(cur, need_resched) && cands > 1)
        skip = cur;
    if (G(policy_rr)) {
        for (k = 0; k < n && task < 0; k++)
            if (runnable(s, q[k]) && q[k] != skip)
                task = q[k];
    } else if (G(pick) >= 0) {
        task = G(pick);
        G(pick) = -1;
        for (k = 0; k < n && q[k] != task; k++)
            ;
        if (k == n || !runnable(s, task) || task == skip)
            return EMU_EINVAL;
    } else {
        G(rcpu) = i;
        G(rtask) = skip;
        return EMU_SR_PICK;
    }
    if (cur >= 0 && cur != task) {
        requeue(s, i, cur);
        G(preemptions) += runnable(s, cur);
    }
    if (task != C(i, current)) {
        set_current(s, i, task);
        emit(s, EMU_EV_SCHED_IN, (int)task, i);
    }
    T(task, need_resched) = 0;
    *out = task;
    return 0;
}

/* A kernel thread (Python's work) takes CPU i, which it waited for
 * (C(i, work)): the task it displaces, if any, goes back to the queue as it
 * stands (preempted only if it was stopped between two instructions, which
 * only full preemption allows). */
static int grant(struct sched *s, int i)
{
    int64_t cur = C(i, current);

    if (cur >= 0 && runnable(s, cur)) {
        schedule_out(s, i, cur, T(cur, preempted));
        G(preemptions)++;
    }
    set_current(s, i, -1);
    C(i, work) = 0;
    G(round_ran) = 1;
    G(rcpu) = i;
    G(rtask) = -1;
    return EMU_SR_WORK;
}

/* Whether CPU i's queue holds a runnable task. */
static int queued_runnable(const struct sched *s, int i)
{
    const int64_t *q = RQ(i);
    int64_t k, n = C(i, rqlen);

    for (k = 0; k < n; k++)
        if (runnable(s, q[k]))
            return 1;
    return 0;
}

/* Whether the kernel thread waiting for CPU i can have it now: the CPU has
 * no task on it, or full preemption lets it preempt the task anywhere. */
static int grantable(struct sched *s, int i)
{
    int64_t cur = C(i, current);

    return C(i, work) && (cur < 0 || !runnable(s, cur) || G(preempt) == 2);
}

/* cond_resched() or a kernel exit. Without a watcher the switch tail runs
 * here; otherwise Python runs the hooks, then the tail. notify_yield brings
 * every cond_resched() back, and nothing else. */
static int switch_point(struct sched *s, int i, int64_t tid, int event, int reason)
{
    emit(s, event, (int)tid, 0);
    T(tid, preempted) = 0;
    if (notified(s, tid) || (reason == EMU_SR_COND_RESCHED && G(notify_yield))) {
        G(rtask) = tid;
        G(rcpu) = i;
        return reason;
    }
    T(tid, since) = 0;
    if (T(tid, need_resched) || G(sm) || C(i, work))
        schedule_out(s, i, tid, 0);
    return 0;
}

static int hypercall(struct sched *s, int i, int64_t tid)
{
    int64_t a = s->stop->hc_args[0];

    G(rtask) = tid;
    G(rcpu) = i;
    switch (s->stop->hc_nr) {
    case EMU_HC_SLEEP: {
        int64_t t = (int64_t)now(s), wake_at = -1;
        if (a >= 0)
            wake_at = a > (FOREVER - t) / G(tick) ? FOREVER : t + a * G(tick);
        T(tid, state) = EMU_TS_SLEEPING;
        T(tid, wake_at) = wake_at;
        T(tid, interruptible) = s->stop->hc_args[1] == 0;   /* rsi: 1 for TASK_UNINTERRUPTIBLE */
        emit(s, EMU_EV_SLEEP, (int)tid, wake_at);
        schedule_out(s, i, tid, 0);
        if (wake_at >= 0)
            G(next_wake) = lower(G(next_wake), wake_at);
        return 0;
    }
    case EMU_HC_YIELD:
        return switch_point(s, i, tid, EMU_EV_YIELD, EMU_SR_COND_RESCHED);
    case EMU_HC_RETURN_TO_USER:
        if (T(tid, kind) != EMU_TK_USER)
            return EMU_SR_KTHREAD_RET;
        T(tid, kernel_entries)++;
        return switch_point(s, i, tid, EMU_EV_KERNEL_EXIT, EMU_SR_KERNEL_EXIT);
    case EMU_HC_SAFE_POINT:
        T(tid, preempted) = 0;
        T(tid, kernel_entries)++;
        emit(s, EMU_EV_SAFE_POINT, (int)tid, 0);
        return notified(s, tid) ? EMU_SR_SAFE_POINT : 0;
    case EMU_HC_EXIT:
        T(tid, state) = EMU_TS_EXITED;
        T(tid, exit_code) = a;
        T(tid, exited) = 1;
        G(live)--;
        emit(s, EMU_EV_EXIT, (int)tid, a);
        schedule_out(s, i, tid, 0);
        unqueue(s, i, tid, 0);
        return 0;
    default:
        return EMU_SR_HYPERCALL;
    }
}

/* A hypercall of the task on CPU G(rr) that hypercall() would handle
 * without a return to Python and without taking the task off its CPU (a
 * kernel exit, a safe point or a cond_resched nobody watches, with no
 * reschedule, stop_machine or kernel work due there), taken during the run
 * (the slicer's syscall hook, emu_run): what hypercall() and the loop
 * around it would do, without stopping the run. The budget of the run in
 * progress stays right: the loop would give the next run what is left of
 * it. 0: not taken here (the run stops and hypercall() takes it). */
int __emu_sched_inline(struct emu_core *c, int64_t nr)
{
    struct sched *s = c->in_sched;
    int64_t tid = c->cur;
    int i = (int)G(rr), event;

    if (!G(inslice) || G(stask) != tid || C(i, current) != tid || c->executed >= c->budget)
        return 0;
    if (c->ev_n + 1 + s->ntasks + 64 > c->ev_cap)
        return 0;   /* the loop would return EMU_SR_EVENTS next: let it */
    switch (nr) {
    case EMU_HC_RETURN_TO_USER:
        if (T(tid, kind) != EMU_TK_USER)
            return 0;
        event = EMU_EV_KERNEL_EXIT;
        break;
    case EMU_HC_YIELD:
        event = EMU_EV_YIELD;
        break;
    case EMU_HC_SAFE_POINT:
        event = EMU_EV_SAFE_POINT;
        break;
    default:
        return 0;
    }
    if (notified(s, tid) || (event == EMU_EV_YIELD && G(notify_yield)))
        return 0;
    if (event != EMU_EV_SAFE_POINT && (T(tid, need_resched) || G(sm) || C(i, work)))
        return 0;
    if (event == EMU_EV_SAFE_POINT && T(tid, since) + (int64_t)c->executed > G(lockup))
        return 0;   /* the loop would report the lockup next */
    if (event != EMU_EV_YIELD)
        T(tid, kernel_entries)++;
    __emu_event(c, event, (int)tid, 0, 0, 0, c->clock + c->executed);
    T(tid, preempted) = 0;
    /* since restarts here: the loop adds what the whole run executed */
    if (event != EMU_EV_SAFE_POINT)
        T(tid, since) = -(int64_t)c->executed;
    c->base = c->executed;
    return 1;
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
        G(check_sm) = 1;
        return EMU_SR_TIMER;
    }
    return 0;
}

/* The slice in progress on CPU rr: run until its budget is spent, the task
 * leaves the CPU, or Python is needed. 0 when the slice ended. */
static int run_slice(struct sched *s, int64_t until, int64_t deadline)
{
    int i = (int)G(rr), rc;
    int64_t tid = G(stask);

    if (G(check_sm)) {
        G(check_sm) = 0;
        if (G(sm) || grantable(s, i))
            goto ended;
    }
    for (;;) {
        int64_t limit, budget, t;
        int precise = 0;

        if (ring_full(s))
            return EMU_SR_EVENTS;
        /* at the top, so that a resumed slice checks what its last run did */
        if (T(tid, since) > G(lockup)) {
            G(rtask) = tid;
            G(rcpu) = i;
            return EMU_SR_LOCKUP;
        }
        if (!(G(remain) > 0 && C(i, current) == tid && runnable(s, tid)))
            break;
        t = (int64_t)now(s);
        limit = lower(lower(deadline, until), G(next_wake));
        budget = G(remain);
        if (limit >= 0 && limit - t < budget) {
            budget = limit - t;
            precise = 1;
        }
        if (budget <= 0) {
            if (until >= 0 && t >= until) {
                G(slice_left) = G(remain);
                G(inslice) = 0;
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
        G(round_ran) = 1;
        T(tid, preempted) = 1;
        G(remain) -= (int64_t)s->stop->executed;
        T(tid, since) += (int64_t)s->stop->executed;
        switch (s->stop->reason) {
        case EMU_STOP_HYPERCALL:
            if ((rc = hypercall(s, i, tid)))
                return rc;
            break;
        case EMU_STOP_FAULT:
            G(rtask) = tid;
            G(rcpu) = i;
            return EMU_SR_FAULT;
        case EMU_STOP_EVENTS_FULL:
            return EMU_SR_EVENTS;
        case EMU_STOP_BUDGET:
            if (G(remain) > 0 && (rc = due(s, deadline)))
                return rc;
            break;
        default:
            break;
        }
    }
ended:
    if (G(remain) <= 0 && C(i, current) == tid && runnable(s, tid)) {
        int64_t *q = RQ(i), n = C(i, rqlen), k, others = 0;
        for (k = 0; k < n; k++)
            others += q[k] != tid && runnable(s, q[k]);
        if (others) {
            if (G(preempt) == 2) {
                schedule_out(s, i, tid, 1);
                G(preemptions)++;
            } else {
                T(tid, need_resched) = 1;
            }
        }
    }
    C(i, slices)++;
    G(inslice) = 0;
    G(after) = 1;
    return grantable(s, i) ? grant(s, i) : 0;
}

/* Every CPU idled through a round: move time to the next wake or timer. */
static int idle_jump(struct sched *s, int64_t until, int64_t deadline)
{
    int64_t nxt = lower(G(next_wake), deadline);
    int tid, i;

    for (i = 0; i < s->ncpus && !G(sm); i++)
        if (C(i, work))
            return 0;       /* a kernel thread gets its CPU at the CPU's next turn */

    if (nxt < 0) {
        for (tid = 0; tid < s->ntasks; tid++)
            if (T(tid, state) == EMU_TS_SLEEPING)
                return EMU_SR_HANG;
        return EMU_SR_END;
    }
    if (until >= 0 && nxt > until)
        s->c->clock = (uint64_t)until;
    else if (nxt > (int64_t)now(s))
        s->c->clock = (uint64_t)nxt;
    return 0;
}

/* The setters keep every index in range; this checks once more, so that
 * the loop never follows a bad one whatever happened to the block. */
static int state_ok(const struct sched *s)
{
    int i;
    int64_t k;

    if (G(tick) <= 0 || G(rr) < 0 || G(rr) >= s->ncpus || G(pick) < -1 || G(pick) >= s->ntasks)
        return 0;
    if (G(inslice) && (G(stask) < 0 || G(stask) >= s->ntasks))
        return 0;
    for (i = 0; i < s->ncpus; i++) {
        if (C(i, rqlen) < 0 || C(i, rqlen) > s->ntasks || C(i, current) < -1 || C(i, current) >= s->ntasks)
            return 0;
        for (k = 0; k < C(i, rqlen); k++)
            if (RQ(i)[k] < 0 || RQ(i)[k] >= s->ntasks)
                return 0;
    }
    return 1;
}

static int sched_loop(struct sched *s, int64_t until, int64_t deadline);

/* The loop's view of the core's scheduler state; 0 when there is none or
 * the core is in a run (state_ok then checks the state). */
static int sched_bind(struct sched *s, struct emu_core *c, struct emu_stop *stop)
{
    if (!c || !c->sched_mem || c->stop || c->ntasks != c->sched.g->ntasks)
        return 0;
    s->c = c;
    s->g = c->sched.g;
    s->ntasks = (int)s->g->ntasks;
    s->ncpus = (int)s->g->ncpus;
    s->t = c->sched.tasks;
    s->cpu = c->sched.cpus;
    s->rq = c->sched.rq;
    s->stop = stop;
    return 1;
}

/* Between two runs of the loop: wake the sleepers whose time has come, as
 * the loop does at the top of a round. Python's loop calls it before it
 * fires its own timers of the same clock (emu/machine/scheduling.py), so
 * that the order of wakes and timers does not depend on where the loop
 * was. EMU_EFULL (nothing done) when the ring may not hold the wakes. */
int emu_sched_fire_wakes(struct emu_core *c)
{
    struct sched st, *s = &st;

    if (!sched_bind(s, c, NULL) || !state_ok(s))
        return EMU_EINVAL;
    if (ring_full(s))
        return EMU_EFULL;
    return fire_wakes(s);
}

int emu_sched_run(struct emu_core *c, int64_t until, int64_t deadline, struct emu_stop *stop)
{
    struct sched st, *s = &st;
    int rc;

    if (!stop || !sched_bind(s, c, stop))
        return EMU_EINVAL;
    memset(stop, 0, sizeof(*stop));
    if (!state_ok(s))
        return EMU_EINVAL;
    G(watch_hit) = 0;
    c->in_sched = s;
    rc = sched_loop(s, until, deadline);
    c->in_sched = NULL;
    return rc;
}

static int sched_loop(struct sched *s, int64_t until, int64_t deadline)
{
    int rc, goal;

    for (;;) {
        if (!G(inslice) && !G(after)) {
            int i = (int)G(rr);
            int64_t task;

            if (ring_full(s))
                return EMU_SR_EVENTS;
            if ((rc = fire_wakes(s)))
                return rc;
            if (deadline >= 0 && (int64_t)now(s) >= deadline)
                return EMU_SR_TIMER;
            if (until >= 0 && (int64_t)now(s) >= until)
                return EMU_SR_UNTIL;
            if (G(live) <= 0)
                return EMU_SR_DONE;
            if (G(sm))
                return EMU_SR_SM;
            if (grantable(s, i)) {
                /* The kernel thread runs its step, then sleeps; schedule()
                 * picks the CPU's next runnable task at once, so a CPU with
                 * one keeps its turn for it (the loop comes back here, not
                 * to the round step). Ending the turn would leave that CPU
                 * nothing but the work whenever the work wakes again within
                 * a round of the other CPUs' slices. */
                C(i, slices)++;
                G(after) = !queued_runnable(s, i);
                return grant(s, i);
            }
            if (C(i, work))
                task = C(i, current);     /* it runs on to its next scheduling point */
            else if ((rc = pick(s, i, &task)))
                return rc;
            if (task < 0) {
                set_current(s, i, -1);
                C(i, slices)++;
                G(after) = 1;
                if (notified(s, s->ntasks + i)) {
                    G(rcpu) = i;
                    return EMU_SR_IDLE;
                }
            } else {
                G(remain) = G(slice_left) ? G(slice_left) : slice_length(s);
                G(slice_left) = 0;
                G(stask) = task;
                G(inslice) = 1;
                G(check_sm) = 0;
            }
        }
        if (G(inslice) && (rc = run_slice(s, until, deadline)))
            return rc;
        /* the round step */
        G(after) = 0;
        G(rr) = (G(rr) + 1) % s->ncpus;
        goal = goals(s);
        if (G(rr) == 0) {
            int idle = !G(round_ran);
            G(round_ran) = 0;
            if (idle) {
                if (G(each_slice) || goal)
                    return EMU_SR_IDLE_ROUND;
                if ((rc = idle_jump(s, until, deadline)))
                    return rc;
            }
        }
        if (G(each_slice) || G(watch_hit) || goal == 2) {
            G(watch_hit) = 0;
            return EMU_SR_SLICE;
        }
    }
}
