"""The pure-Python twin of csrc/sched.c: the same loop over the same state
(core.SchedState, the C core's struct emu_sched, read by field name and
changed through the same checked setters), returning at the same points with
the same reasons. tests/test_sched.py holds the two to the same traces.

A CPU that kernel work waits for (cpu.work) goes to it (SR_WORK) when no
task is on it, or at once with full preemption; otherwise its task runs on
to its next scheduling point, which takes it off the CPU. Without full
preemption a task never leaves its CPU between two instructions: a slice
end only sets need_resched, which its next scheduling point acts on. A CPU
given to the work at the start of its turn keeps that turn for a task of
its queue, which runs once the work's step is done.

It also runs stop_machine sections, which the C loop hands back
(SR_SM): a CPU parks at its next scheduling point (with full preemption at
once, its task preempted where it stands), and the section starts once
every CPU has parked.

What it needs of the machine is passed in by name (PyScheduler's wake,
hook_error and stop_state): it knows nothing else of it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from emu.engine import core
from emu.engine.core import SCHED_HYPERCALLS as HC, SchedReturn as SR, TaskKind, TaskState

FOREVER = 1 << 62
RUNNABLE, SLEEPING, EXITED = TaskState.RUNNABLE, TaskState.SLEEPING, TaskState.EXITED


class StopState(Protocol):
    """stop_machine in progress, as the twin sees it: which CPUs have parked,
    and when the last one did."""
    parked: set
    stopped_at: int | None


class PyScheduler:
    """run(until, deadline) -> SR_* reason, like Engine.sched_run.

    engine: the machine's core.Engine; state: its core.SchedState.
    wake(tid): wake a sleeper whose time came (its sleep returns 0).
    hook_error(): the exception a Python hook kept during the last run
    (taken, so it is raised once), or None.
    stop_state(): the stop_machine in progress (StopState), or None."""

    def __init__(self, engine: core.Engine, state: core.SchedState, *, wake: Callable[[int], None],
                 hook_error: Callable[[], BaseException | None], stop_state: Callable[[], StopState | None]):
        self.engine = engine
        self.s = state
        self.task = state.tasks
        self.cpu = state.cpus
        self.ntasks, self.ncpus = state.ntasks, state.ncpus
        self._wake = wake
        self._hook_error = hook_error
        self._stop_state = stop_state

    # ---- helpers (csrc/sched.c has one of each) ----------------------------------------
    def ring_full(self) -> bool:
        return self.engine.events_pending() + self.ntasks + 64 > self.engine.event_capacity

    def now(self) -> int:
        return self.engine.clock

    def emit(self, kind: int, tid: int, a: int = 0) -> None:
        self.engine.push_event(kind, tid, a, 0, 0)

    def runnable(self, tid: int) -> bool:
        return self.task[tid].state == RUNNABLE

    def set_current(self, i: int, tid: int) -> None:
        """CPU i's current task becomes tid (-1: none); a watched task
        leaving it brings the loop back at the round step."""
        cpu = self.cpu[i]
        old = cpu.current
        if old >= 0 and old != tid and self.task[old].watch:
            self.s.watch_hit = 1
        cpu.current = tid

    def goals(self) -> int:
        """0: no CPU has a goal; 1: some goal is not reached; 2: every goal is."""
        any_goal = False
        for cpu in self.cpu:
            goal = cpu.goal
            if goal <= 0:
                continue
            if cpu.slices < goal:
                return 1
            any_goal = True
        return 2 if any_goal else 0

    def notified(self, tid: int) -> bool:
        """Whether Python's watchers want tid's switch points (or its idle
        slices, for a CPU's idle task)."""
        s = self.s
        return bool(s.notify_all or (self.task[tid].notify and not s.quiet))

    def requeue(self, i: int, tid: int) -> None:
        q = self.cpu[i].queue
        if tid in q:
            q.remove(tid)
            q.append(tid)
            self.cpu[i].queue = q

    def dequeue(self, i: int, tid: int) -> None:
        q = self.cpu[i].queue
        if tid in q:
            q.remove(tid)
            self.cpu[i].queue = q

    def schedule_out(self, i: int, tid: int, preempted: bool) -> None:
        t, cpu = self.task[tid], self.cpu[i]
        t.preempted = int(preempted)
        t.since = 0
        if cpu.current == tid:
            self.set_current(i, -1)
            self.engine.push_event(core.EV_SCHED_OUT, tid, i, int(preempted), 0)
        self.requeue(i, tid)

    def fire_wakes(self) -> None:
        s = self.s
        if s.next_wake < 0 or self.now() < s.next_wake:
            return
        nxt = -1
        for tid in range(self.ntasks):
            t = self.task[tid]
            w = t.wake_at
            if t.state != SLEEPING or w < 0:
                continue
            if w <= self.now():
                self._wake(tid)
            elif nxt < 0 or w < nxt:
                nxt = w
        s.next_wake = nxt

    def pick(self, i: int):
        """(reason, task): reason 0 and the task (-1: none), or SR_PICK."""
        s, cpu = self.s, self.cpu[i]
        cur = cpu.current
        # Without full preemption a task leaves its CPU only at a scheduling
        # point (a switch point, a sleep, its exit); need_resched waits for it.
        if cur >= 0 and self.runnable(cur) and (not self.task[cur].need_resched or s.preempt != 2):
            return 0, cur
        cands = [tid for tid in cpu.queue if self.runnable(tid)]
        if not cands:
            return 0, -1
        skip = cur if cur >= 0 and self.runnable(cur) and self.task[cur].need_resched and len(cands) > 1 \
            else -1
        if s.policy_rr:
            task = next(tid for tid in cands if tid != skip)
        elif s.pick >= 0:
            task = s.pick
            s.pick = -1
            if task not in cands or task == skip:
                raise core.CoreError("scheduler: invalid argument")
        else:
            s.rcpu, s.rtask = i, skip
            return SR.PICK, -1
        if cur >= 0 and cur != task:
            self.requeue(i, cur)
            s.preemptions += self.runnable(cur)
        if task != cpu.current:
            self.set_current(i, task)
            self.emit(core.EV_SCHED_IN, task, i)
        self.task[task].need_resched = 0
        return 0, task

    def grant(self, i: int) -> int:
        """A kernel thread (a work of the machine) takes CPU i, which it
        waited for (cpu.work): the task it displaces goes back to the queue
        as it stands (preempted only if stopped between two instructions,
        which only full preemption allows)."""
        s, cpu = self.s, self.cpu[i]
        cur = cpu.current
        if cur >= 0 and self.runnable(cur):
            self.schedule_out(i, cur, bool(self.task[cur].preempted))
            s.preemptions += 1
        self.set_current(i, -1)
        cpu.work = 0
        s.round_ran = 1
        s.rcpu, s.rtask = i, -1
        return SR.WORK

    def grantable(self, i: int) -> bool:
        """Whether the kernel thread waiting for CPU i can have it now: no
        task is on it, or full preemption lets it preempt the task anywhere."""
        cpu = self.cpu[i]
        cur = cpu.current
        return bool(cpu.work) and (cur < 0 or not self.runnable(cur) or self.s.preempt == 2)

    def slice_ends_first(self) -> bool:
        """Whether the loop, resumed now, first ends the slice in progress
        (its task off the CPU or not runnable, its budget spent, stop_machine
        or kernel work taking the CPU, a soft lockup) instead of going on
        with it, where it wakes the sleepers due and stops for the timers
        due before running more (run_slice, and csrc/sched.c's)."""
        s = self.s
        if not s.inslice:
            return False
        i, tid = s.rr, s.stask
        if s.check_sm and (s.sm or self.grantable(i)):
            return True
        if self.task[tid].since > s.lockup:
            return True
        return not (s.remain > 0 and self.cpu[i].current == tid and self.runnable(tid))

    def switch_point(self, i: int, tid: int, event: int, reason: int) -> int:
        s = self.s
        self.emit(event, tid)
        self.task[tid].preempted = 0
        if self.notified(tid) or (reason == SR.COND_RESCHED and s.notify_yield):
            s.rtask, s.rcpu = tid, i
            return reason
        self.switch_tail(i, tid)
        return 0

    def switch_tail(self, i: int, tid: int) -> None:
        """After a switch point's hooks: the task leaves the CPU if it should
        reschedule or stop_machine waits for it (the machine calls this
        after the models' hooks)."""
        t = self.task[tid]
        t.since = 0
        if t.need_resched or self.s.sm or self.cpu[i].work:
            self.schedule_out(i, tid, False)

    def hypercall(self, i: int, tid: int, stop: core.Stop) -> int:
        s, t = self.s, self.task[tid]
        a = stop.hc_args[0]
        s.rtask, s.rcpu = tid, i
        nr = stop.hc_nr
        if nr == HC["SLEEP"]:
            wake_at = -1 if a < 0 else min(self.now() + a * s.tick, FOREVER)
            t.state = SLEEPING
            t.wake_at = wake_at
            t.interruptible = 1 if stop.hc_args[1] == 0 else 0     # rsi: 1 for TASK_UNINTERRUPTIBLE
            self.emit(core.EV_SLEEP, tid, wake_at)
            self.schedule_out(i, tid, False)
            if wake_at >= 0:
                s.next_wake = wake_at if s.next_wake < 0 else min(s.next_wake, wake_at)
            return 0
        if nr == HC["YIELD"]:
            return self.switch_point(i, tid, core.EV_YIELD, SR.COND_RESCHED)
        if nr == HC["RETURN_TO_USER"]:
            if t.kind != TaskKind.USER:
                return SR.KTHREAD_RET
            t.kernel_entries += 1
            return self.switch_point(i, tid, core.EV_KERNEL_EXIT, SR.KERNEL_EXIT)
        if nr == HC["SAFE_POINT"]:
            t.preempted = 0
            t.kernel_entries += 1
            self.emit(core.EV_SAFE_POINT, tid)
            return SR.SAFE_POINT if self.notified(tid) else 0
        if nr == HC["EXIT"]:
            t.state = EXITED
            t.exit_code = a
            t.exited = 1
            s.live -= 1
            self.emit(core.EV_EXIT, tid, a)
            self.schedule_out(i, tid, False)
            self.dequeue(i, tid)
            return 0
        return SR.HYPERCALL

    # ---- the slice in progress ------------------------------------------------------
    def due(self, deadline: int) -> int:
        """Mid-slice, time reached a wake-up or Python's deadline."""
        self.fire_wakes()
        if deadline >= 0 and self.now() >= deadline:
            self.s.check_sm = 1
            return SR.TIMER
        return 0

    def run_slice(self, until: int, deadline: int) -> int:
        s, eng = self.s, self.engine
        i, tid = s.rr, s.stask
        t, cpu = self.task[tid], self.cpu[i]
        broke = False
        if s.check_sm:
            s.check_sm = 0
            broke = bool(s.sm) or self.grantable(i)
        while not broke:
            if self.ring_full():
                return SR.EVENTS
            if t.since > s.lockup:
                s.rtask, s.rcpu = tid, i
                return SR.LOCKUP
            if not (s.remain > 0 and cpu.current == tid and self.runnable(tid)):
                break
            now = self.now()
            limit = _lower(_lower(deadline, until), s.next_wake)
            budget, precise = s.remain, False
            if limit >= 0 and limit - now < budget:
                budget, precise = limit - now, True
            if budget <= 0:
                if until >= 0 and now >= until:
                    s.slice_left = s.remain
                    s.inslice = 0
                    return SR.UNTIL
                rc = self.due(deadline)
                if rc:
                    return rc
                continue
            eng.switch(tid)
            stop = eng.run(budget, precise)
            s.round_ran = 1
            t.preempted = 1
            s.remain -= stop.executed
            t.since += stop.executed
            err = self._hook_error()
            if err is not None:
                raise err
            if stop.reason == core.STOP_HYPERCALL:
                rc = self.hypercall(i, tid, stop)
                if rc:
                    return rc
            elif stop.reason == core.STOP_FAULT:
                s.rtask, s.rcpu = tid, i
                return SR.FAULT
            elif stop.reason == core.STOP_EVENTS_FULL:
                return SR.EVENTS
            elif stop.reason == core.STOP_BUDGET and s.remain > 0:
                rc = self.due(deadline)
                if rc:
                    return rc
        if s.remain <= 0 and cpu.current == tid and self.runnable(tid):
            if any(q != tid and self.runnable(q) for q in cpu.queue):
                if s.preempt == 2:
                    self.schedule_out(i, tid, True)
                    s.preemptions += 1
                else:
                    t.need_resched = 1
        cpu.slices += 1
        s.inslice = 0
        s.after = 1
        return self.grant(i) if self.grantable(i) else 0

    def idle_jump(self, until: int, deadline: int) -> int:
        s = self.s
        if not s.sm and any(cpu.work for cpu in self.cpu):
            return 0        # a kernel thread gets its CPU at the CPU's next turn (not in stop_machine)
        nxt = _lower(s.next_wake, deadline)
        if nxt < 0:
            if any(self.task[tid].state == SLEEPING for tid in range(self.ntasks)):
                return SR.HANG
            return SR.END
        if until >= 0 and nxt > until:
            self.engine.clock = until
        elif nxt > self.now():
            self.engine.clock = nxt
        return 0

    def _park(self, i: int) -> None:
        """stop_machine: CPU i stops at its next scheduling point. With full
        preemption the stopper thread preempts the task at once; otherwise
        the task runs on until it sleeps, yields, returns to user or exits."""
        s, cpu = self.s, self.cpu[i]
        sm = self._stop_state()
        if i in sm.parked:
            cpu.slices += 1
            s.after = 1
            return
        cur = cpu.current
        if cur < 0 or not self.runnable(cur) or s.preempt == 2:
            if cur >= 0 and self.runnable(cur):
                # full preemption: the stopper thread preempts the task where it stands
                self.schedule_out(i, cur, bool(self.task[cur].preempted))
                s.preemptions += 1
            cpu.slices += 1
            s.after = 1
            sm.parked.add(i)
            if len(sm.parked) == self.ncpus:
                sm.stopped_at = self.now()
                self.emit(core.EV_STOP_MACHINE, -1, 1)
            return
        self._begin(cur)

    def _length(self) -> int:
        """A slice's length: the quantum, or with jitter a draw in
        1..quantum from the run's generator (sched.c's slice_length)."""
        s = self.s
        if not s.jitter:
            return s.quantum
        x = (s.jstate * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        s.jstate = x - (1 << 64) if x >= 1 << 63 else x
        return 1 + (x >> 33) % s.quantum

    def _begin(self, tid: int) -> None:
        s = self.s
        s.remain = s.slice_left or self._length()
        s.slice_left = 0
        s.stask = tid
        s.inslice = 1
        s.check_sm = 0

    # ---- the loop ----------------------------------------------------------------
    def run(self, until: int, deadline: int) -> int:
        s = self.s
        s.watch_hit = 0
        while True:
            if not s.inslice and not s.after:
                i = s.rr
                if self.ring_full():
                    return SR.EVENTS
                self.fire_wakes()
                if deadline >= 0 and self.now() >= deadline:
                    return SR.TIMER
                if until >= 0 and self.now() >= until:
                    return SR.UNTIL
                if s.live <= 0:
                    return SR.DONE
                if s.sm:
                    self._park(i)
                elif self.grantable(i):
                    # the kernel thread's step, then schedule() picks the
                    # CPU's next runnable task: a CPU with one keeps its turn
                    self.cpu[i].slices += 1
                    s.after = int(not any(self.runnable(tid) for tid in self.cpu[i].queue))
                    return self.grant(i)
                else:
                    rc, task = (0, self.cpu[i].current) if self.cpu[i].work else self.pick(i)
                    if rc:
                        return rc
                    if task < 0:
                        cpu = self.cpu[i]
                        self.set_current(i, -1)
                        cpu.slices += 1
                        s.after = 1
                        if self.notified(self.ntasks + i):
                            s.rcpu = i
                            return SR.IDLE
                    else:
                        self._begin(task)
            if s.inslice:
                rc = self.run_slice(until, deadline)
                if rc:
                    return rc
            s.after = 0
            s.rr = (s.rr + 1) % self.ncpus
            goal = self.goals()
            if s.rr == 0:
                idle = not s.round_ran
                s.round_ran = 0
                if idle:
                    if s.each_slice or goal:
                        return SR.IDLE_ROUND
                    rc = self.idle_jump(until, deadline)
                    if rc:
                        return rc
            if s.each_slice or s.watch_hit or goal == 2:
                s.watch_hit = 0
                return SR.SLICE


def _lower(a: int, b: int) -> int:
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)
