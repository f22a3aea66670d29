"""The pure-Python twin of csrc/sched.c: the same loop over the same shared
state (a memoryview of the C core's array), returning at the same points
with the same reasons. tests/test_sched.py holds the two to the same traces.

It also runs stop_machine sections, which the C loop hands back
(SR_SM): a CPU parks at its next scheduling point, and the section starts
once every CPU has parked.
"""
from __future__ import annotations

from emu.engine import core
from emu.engine.core import SCHED as K

FOREVER = 1 << 62
NTF, NCF = K["TF_COUNT"], K["CF_COUNT"]
(SG_NTASKS, SG_NCPUS, SG_QUANTUM, SG_PREEMPT, SG_TICK, SG_LOCKUP, SG_POLICY_RR, SG_NOTIFY_ALL,
 SG_EACH_SLICE, SG_SM, SG_RR, SG_ROUND_RAN, SG_SLICE_LEFT, SG_INSLICE, SG_STASK, SG_REMAIN, SG_PICK,
 SG_NEXT_WAKE, SG_CHECK_SM, SG_AFTER, SG_PREEMPTIONS, SG_RTASK, SG_RCPU, SG_LIVE) = (
    K[f"SG_{n}"] for n in ("NTASKS", "NCPUS", "QUANTUM", "PREEMPT", "TICK", "LOCKUP", "POLICY_RR",
                           "NOTIFY_ALL", "EACH_SLICE", "SM", "RR", "ROUND_RAN", "SLICE_LEFT", "INSLICE",
                           "STASK", "REMAIN", "PICK", "NEXT_WAKE", "CHECK_SM", "AFTER", "PREEMPTIONS",
                           "RTASK", "RCPU", "LIVE"))
(TF_STATE, TF_KIND, TF_WAKE_AT, TF_INTERRUPTIBLE, TF_PREEMPTED, TF_NEED_RESCHED, TF_NOTIFY,
 TF_KERNEL_ENTRIES, TF_SINCE, TF_EXIT_CODE, TF_EXITED) = (
    K[f"TF_{n}"] for n in ("STATE", "KIND", "WAKE_AT", "INTERRUPTIBLE", "PREEMPTED", "NEED_RESCHED",
                           "NOTIFY", "KERNEL_ENTRIES", "SINCE", "EXIT_CODE", "EXITED"))
CF_CURRENT, CF_SLICES, CF_RQLEN = K["CF_CURRENT"], K["CF_SLICES"], K["CF_RQLEN"]
RUNNABLE, SLEEPING, EXITED = K["TS_RUNNABLE"], K["TS_SLEEPING"], K["TS_EXITED"]
SR = {name[3:]: v for name, v in K.items() if name.startswith("SR_")}


class PyScheduler:
    """run(until, deadline) -> SR_* reason, like Engine.sched_run."""

    def __init__(self, machine):
        self.m = machine
        self.engine = machine.engine
        s = self.s = machine.sched_state
        self.ntasks, self.ncpus = s[SG_NTASKS], s[SG_NCPUS]
        self.T = K["SG_COUNT"]
        self.C = self.T + (self.ntasks + self.ncpus) * NTF
        self.Q = self.C + self.ncpus * NCF

    # ---- helpers (csrc/sched.c has one of each) ----------------------------------------
    def t(self, tid: int, f: int) -> int:
        return self.T + tid * NTF + f

    def c(self, i: int, f: int) -> int:
        return self.C + i * NCF + f

    def queue(self, i: int) -> list[int]:
        q = self.Q + i * self.ntasks
        return list(self.s[q:q + self.s[self.c(i, CF_RQLEN)]])

    def _set_queue(self, i: int, tids: list[int]) -> None:
        q = self.Q + i * self.ntasks
        for k, tid in enumerate(tids):
            self.s[q + k] = tid
        self.s[self.c(i, CF_RQLEN)] = len(tids)

    def ring_full(self) -> bool:
        return self.engine.events_pending() + self.ntasks + 64 > self.engine.event_capacity

    def now(self) -> int:
        return self.engine.clock

    def emit(self, kind: int, tid: int, a: int = 0) -> None:
        self.engine.push_event(kind, tid, a, 0, 0)

    def runnable(self, tid: int) -> bool:
        return self.s[self.t(tid, TF_STATE)] == RUNNABLE

    def requeue(self, i: int, tid: int) -> None:
        q = self.queue(i)
        if tid in q:
            q.remove(tid)
            q.append(tid)
            self._set_queue(i, q)

    def dequeue(self, i: int, tid: int) -> None:
        q = self.queue(i)
        if tid in q:
            q.remove(tid)
            self._set_queue(i, q)

    def schedule_out(self, i: int, tid: int, preempted: bool) -> None:
        s = self.s
        s[self.t(tid, TF_PREEMPTED)] = int(preempted)
        s[self.t(tid, TF_SINCE)] = 0
        if s[self.c(i, CF_CURRENT)] == tid:
            s[self.c(i, CF_CURRENT)] = -1
        self.requeue(i, tid)

    def fire_wakes(self) -> None:
        s = self.s
        if s[SG_NEXT_WAKE] < 0 or self.now() < s[SG_NEXT_WAKE]:
            return
        nxt = -1
        for tid in range(self.ntasks):
            w = s[self.t(tid, TF_WAKE_AT)]
            if s[self.t(tid, TF_STATE)] != SLEEPING or w < 0:
                continue
            if w <= self.now():
                self.m.wake(self.m.tasks[tid], early=False)
            elif nxt < 0 or w < nxt:
                nxt = w
        s[SG_NEXT_WAKE] = nxt

    def pick(self, i: int):
        """(reason, task): reason 0 and the task (-1: none), or SR_PICK."""
        s = self.s
        cur = s[self.c(i, CF_CURRENT)]
        if cur >= 0 and self.runnable(cur) and not s[self.t(cur, TF_NEED_RESCHED)]:
            return 0, cur
        q = self.queue(i)
        cands = [tid for tid in q if self.runnable(tid)]
        if not cands:
            return 0, -1
        skip = cur if cur >= 0 and self.runnable(cur) and s[self.t(cur, TF_NEED_RESCHED)] and len(cands) > 1 \
            else -1
        if s[SG_POLICY_RR]:
            task = next(tid for tid in cands if tid != skip)
        elif s[SG_PICK] >= 0:
            task, s[SG_PICK] = s[SG_PICK], -1
            if task not in cands or task == skip:
                raise core.CoreError("scheduler: invalid argument")
        else:
            s[SG_RCPU], s[SG_RTASK] = i, skip
            return SR["PICK"], -1
        if cur >= 0 and cur != task:
            self.requeue(i, cur)
            s[SG_PREEMPTIONS] += self.runnable(cur)
        if task != s[self.c(i, CF_CURRENT)]:
            s[self.c(i, CF_CURRENT)] = task
            self.emit(core.EV_SCHED_IN, task, i)
        s[self.t(task, TF_NEED_RESCHED)] = 0
        return 0, task

    def switch_point(self, i: int, tid: int, event: int, reason: int) -> int:
        s = self.s
        self.emit(event, tid)
        s[self.t(tid, TF_PREEMPTED)] = 0
        if s[self.t(tid, TF_NOTIFY)] or s[SG_NOTIFY_ALL]:
            s[SG_RTASK], s[SG_RCPU] = tid, i
            return reason
        self.switch_tail(i, tid)
        return 0

    def switch_tail(self, i: int, tid: int) -> None:
        """After a switch point's hooks: the task leaves the CPU if it should
        reschedule or stop_machine waits for it (Machine.run calls this
        after the models' hooks)."""
        self.s[self.t(tid, TF_SINCE)] = 0
        if self.s[self.t(tid, TF_NEED_RESCHED)] or self.s[SG_SM]:
            self.schedule_out(i, tid, False)

    def hypercall(self, i: int, tid: int, stop: core.Stop) -> int:
        s = self.s
        a = stop.hc_args[0]
        s[SG_RTASK], s[SG_RCPU] = tid, i
        nr = stop.hc_nr
        if nr == K["HC_SLEEP"]:
            wake_at = -1 if a < 0 else min(self.now() + a * s[SG_TICK], FOREVER)
            s[self.t(tid, TF_STATE)] = SLEEPING
            s[self.t(tid, TF_WAKE_AT)] = wake_at
            s[self.t(tid, TF_INTERRUPTIBLE)] = 1
            self.emit(core.EV_SLEEP, tid, wake_at)
            self.schedule_out(i, tid, False)
            if wake_at >= 0:
                s[SG_NEXT_WAKE] = wake_at if s[SG_NEXT_WAKE] < 0 else min(s[SG_NEXT_WAKE], wake_at)
            return 0
        if nr == K["HC_YIELD"]:
            return self.switch_point(i, tid, core.EV_YIELD, SR["COND_RESCHED"])
        if nr == K["HC_RETURN_TO_USER"]:
            if s[self.t(tid, TF_KIND)] != K["TK_USER"]:
                return SR["KTHREAD_RET"]
            s[self.t(tid, TF_KERNEL_ENTRIES)] += 1
            return self.switch_point(i, tid, core.EV_KERNEL_EXIT, SR["KERNEL_EXIT"])
        if nr == K["HC_SAFE_POINT"]:
            s[self.t(tid, TF_PREEMPTED)] = 0
            s[self.t(tid, TF_KERNEL_ENTRIES)] += 1
            self.emit(core.EV_SAFE_POINT, tid)
            return SR["SAFE_POINT"] if s[self.t(tid, TF_NOTIFY)] or s[SG_NOTIFY_ALL] else 0
        if nr == K["HC_EXIT"]:
            s[self.t(tid, TF_STATE)] = EXITED
            s[self.t(tid, TF_EXIT_CODE)] = a
            s[self.t(tid, TF_EXITED)] = 1
            s[SG_LIVE] -= 1
            self.emit(core.EV_EXIT, tid, a)
            self.schedule_out(i, tid, False)
            self.dequeue(i, tid)
            return 0
        return SR["HYPERCALL"]

    # ---- the slice in progress ------------------------------------------------------
    def due(self, deadline: int) -> int:
        """Mid-slice, time reached a wake-up or Python's deadline."""
        self.fire_wakes()
        if deadline >= 0 and self.now() >= deadline:
            self.s[SG_CHECK_SM] = 1
            return SR["TIMER"]
        return 0

    def run_slice(self, until: int, deadline: int) -> int:
        s, eng, m = self.s, self.engine, self.m
        i, tid = s[SG_RR], s[SG_STASK]
        broke = False
        if s[SG_CHECK_SM]:
            s[SG_CHECK_SM] = 0
            broke = bool(s[SG_SM])
        while not broke:
            if self.ring_full():
                return SR["EVENTS"]
            if s[self.t(tid, TF_SINCE)] > s[SG_LOCKUP]:
                s[SG_RTASK], s[SG_RCPU] = tid, i
                return SR["LOCKUP"]
            if not (s[SG_REMAIN] > 0 and s[self.c(i, CF_CURRENT)] == tid and self.runnable(tid)):
                break
            t = self.now()
            limit = _lower(_lower(deadline, until), s[SG_NEXT_WAKE])
            budget, precise = s[SG_REMAIN], False
            if limit >= 0 and limit - t < budget:
                budget, precise = limit - t, True
            if budget <= 0:
                if until >= 0 and t >= until:
                    s[SG_SLICE_LEFT] = s[SG_REMAIN]
                    s[SG_INSLICE] = 0
                    return SR["UNTIL"]
                rc = self.due(deadline)
                if rc:
                    return rc
                continue
            eng.switch(tid)
            stop = eng.run(budget, precise)
            s[SG_ROUND_RAN] = 1
            s[self.t(tid, TF_PREEMPTED)] = 1
            s[SG_REMAIN] -= stop.executed
            s[self.t(tid, TF_SINCE)] += stop.executed
            twin = m._twin
            if twin is not None and twin.error is not None:
                err, twin.error = twin.error, None
                raise err
            if stop.reason == core.STOP_HYPERCALL:
                rc = self.hypercall(i, tid, stop)
                if rc:
                    return rc
            elif stop.reason == core.STOP_FAULT:
                s[SG_RTASK], s[SG_RCPU] = tid, i
                return SR["FAULT"]
            elif stop.reason == core.STOP_EVENTS_FULL:
                return SR["EVENTS"]
            elif stop.reason == core.STOP_BUDGET and s[SG_REMAIN] > 0:
                rc = self.due(deadline)
                if rc:
                    return rc
        if s[SG_REMAIN] <= 0 and s[self.c(i, CF_CURRENT)] == tid and self.runnable(tid):
            if any(q != tid and self.runnable(q) for q in self.queue(i)):
                if s[SG_PREEMPT] == 2:
                    self.schedule_out(i, tid, True)
                    s[SG_PREEMPTIONS] += 1
                else:
                    s[self.t(tid, TF_NEED_RESCHED)] = 1
        s[self.c(i, CF_SLICES)] += 1
        s[SG_INSLICE] = 0
        s[SG_AFTER] = 1
        return 0

    def idle_jump(self, until: int, deadline: int) -> int:
        s = self.s
        nxt = _lower(s[SG_NEXT_WAKE], deadline)
        if nxt < 0:
            if any(s[self.t(tid, TF_STATE)] == SLEEPING for tid in range(self.ntasks)):
                return SR["HANG"]
            return SR["END"]
        if until >= 0 and nxt > until:
            self.engine.clock = until
        elif nxt > self.now():
            self.engine.clock = nxt
        return 0

    def _park(self, i: int) -> None:
        """stop_machine: CPU i stops at its next scheduling point. With full
        preemption the stopper thread preempts the task at once; otherwise
        the task runs on until it sleeps, yields, returns to user or exits."""
        s, m = self.s, self.m
        sm = m._sm
        if i in sm.parked:
            s[self.c(i, CF_SLICES)] += 1
            s[SG_AFTER] = 1
            return
        cur = s[self.c(i, CF_CURRENT)]
        if cur < 0 or not self.runnable(cur) or s[SG_PREEMPT] == 2:
            s[self.c(i, CF_SLICES)] += 1
            s[SG_AFTER] = 1
            sm.parked.add(i)
            if len(sm.parked) == self.ncpus:
                sm.stopped_at = self.now()
                self.emit(core.EV_STOP_MACHINE, -1, 1)
            return
        self._begin(cur)

    def _begin(self, tid: int) -> None:
        s = self.s
        s[SG_REMAIN] = s[SG_SLICE_LEFT] or s[SG_QUANTUM]
        s[SG_SLICE_LEFT] = 0
        s[SG_STASK] = tid
        s[SG_INSLICE] = 1
        s[SG_CHECK_SM] = 0

    # ---- the loop ----------------------------------------------------------------
    def run(self, until: int, deadline: int) -> int:
        s = self.s
        while True:
            if not s[SG_INSLICE] and not s[SG_AFTER]:
                i = s[SG_RR]
                if self.ring_full():
                    return SR["EVENTS"]
                self.fire_wakes()
                if deadline >= 0 and self.now() >= deadline:
                    return SR["TIMER"]
                if until >= 0 and self.now() >= until:
                    return SR["UNTIL"]
                if s[SG_LIVE] <= 0:
                    return SR["DONE"]
                if s[SG_SM]:
                    self._park(i)
                else:
                    rc, task = self.pick(i)
                    if rc:
                        return rc
                    if task < 0:
                        s[self.c(i, CF_CURRENT)] = -1
                        s[self.c(i, CF_SLICES)] += 1
                        s[SG_AFTER] = 1
                        if s[self.t(self.ntasks + i, TF_NOTIFY)] or s[SG_NOTIFY_ALL]:
                            s[SG_RCPU] = i
                            return SR["IDLE"]
                    else:
                        self._begin(task)
            if s[SG_INSLICE]:
                rc = self.run_slice(until, deadline)
                if rc:
                    return rc
            s[SG_AFTER] = 0
            s[SG_RR] = (s[SG_RR] + 1) % self.ncpus
            if s[SG_RR] == 0:
                idle = not s[SG_ROUND_RAN]
                s[SG_ROUND_RAN] = 0
                if idle:
                    if s[SG_EACH_SLICE]:
                        return SR["IDLE_ROUND"]
                    rc = self.idle_jump(until, deadline)
                    if rc:
                        return rc
            if s[SG_EACH_SLICE]:
                return SR["SLICE"]


def _lower(a: int, b: int) -> int:
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)
