"""The scheduler binding: a machine's tasks and CPUs bound to the C core's
scheduler state (core.SchedState), and the run loop that hands the rounds to
the C loop (csrc/sched.c) or its Python twin (emu/engine/sched.py; always
during stop_machine) and does in Python what they come back for: timers and
work items, the models' hooks at switch points, a seeded policy's pick, a
hypercall of the machine's own, a fault, a CPU given to kernel work
(SR.WORK: works.py says where kernel work runs)."""
from __future__ import annotations

from unicorn.x86_const import UC_X86_REG_RAX

from emu.engine.core import SchedReturn as SR
from emu.engine.sched import PyScheduler
from emu.errors import CoreError, EventBound, GuestFault
from emu.machine import faults
from emu.machine.task import RunState

PREEMPT_MODES = ("none", "voluntary", "full")

_HOOKS = {SR.KERNEL_EXIT: "on_kernel_exit", SR.COND_RESCHED: "on_cond_resched", SR.SAFE_POINT: "on_safe_point"}
# The reasons as ints: the loop compares with them at every return, and an
# IntEnum member read from its class is a Python call.
_DONE, _SLICE, _WORK, _IDLE, _PICK, _EVENTS, _IDLE_ROUND, _END, _HANG, _SAFE_POINT, _SM = (
    int(r) for r in (SR.DONE, SR.SLICE, SR.WORK, SR.IDLE, SR.PICK, SR.EVENTS, SR.IDLE_ROUND, SR.END,
                     SR.HANG, SR.SAFE_POINT, SR.SM))
_TROUBLE = frozenset(int(r) for r in (SR.HYPERCALL, SR.FAULT, SR.KTHREAD_RET, SR.LOCKUP))


class Scheduling:
    """The binding of one machine (m) to its scheduler state, made when the
    machine starts (bind)."""

    def __init__(self, m):
        self.m = m
        self.state = None          # core.SchedState, from bind()
        self.twin: PyScheduler | None = None

    def bind(self) -> None:
        """Create the scheduler state and move the tasks' and CPUs' scheduling
        fields into it."""
        m = self.m
        n = len(m.tasks)
        st = self.state = m.engine.sched_init(n, len(m.cpus))
        self.twin = PyScheduler(m.engine, st, wake=self._wake_due, hook_error=m.sites.hook_error,
                                stop_state=lambda: m.works.stop)
        for task in m.tasks:
            task.bind(st.tasks[task.tid], st)
        for cpu in m.cpus:
            cpu.idle.bind(st.tasks[n + cpu.index])
            cpu.bind(st.cpus[cpu.index], m.tasks)
        st.quantum = m.quantum
        st.preempt = PREEMPT_MODES.index(m.preempt)
        st.tick = m.tick
        st.lockup = m.lockup
        st.pick = -1
        st.next_wake = -1
        st.live = sum(t.state is not RunState.EXITED for t in m.tasks)
        st.sm = m.works.stop is not None
        for index in m.works.claims():
            st.cpus[index].work = 1

    def _wake_due(self, tid: int) -> None:
        self.m.wake(self.m.tasks[tid], early=False)

    def run(self, until: int | None, stop_when, every_slice: bool, watch=None) -> None:
        m, st, works = self.m, self.state, self.m.works
        # (the checked setters cost a C call each: a flag already right is left alone)
        rr = 1 if m.policy.name == "rr" else 0
        if st.policy_rr != rr:
            st.policy_rr = rr
        notify_all = 1 if any(not getattr(lst, "pending_only", False) for lst in m.listeners) else 0
        if st.notify_all != notify_all:
            st.notify_all = notify_all
        notify_yield = 1 if any(getattr(lst, "every_cond_resched", False) for lst in m.listeners) else 0
        if st.notify_yield != notify_yield:
            st.notify_yield = notify_yield
        each = stop_when is not None and every_slice and watch is None
        until_c = -1 if until is None else until
        trace, bound = m.trace, m.max_events      # a run given no until stops at bound events (bounded)
        goals: tuple | None = None          # the CPUs' goals as set (works.waits())
        watched: set[int] = set()           # the tasks whose watch flag is set
        engine, listeners = m.engine, m.listeners
        in_c = m.sched == "c"
        try:
            while True:
                # sleepers due now wake before the timers due now, as in the
                # C loop (and its twin): the order must not depend on
                # whether the loop came back to Python at this clock. Nor
                # may it depend on where in a slice it came back: when the
                # loop's next act is to end the slice in progress (a hook's
                # return at a switch point whose task has no budget left,
                # ...), the wakes and timers due come after that, as in a
                # run straight through (the loop stops for the timers). Nor
                # do the works look at the clock before then: a Delay over
                # now would ask for a CPU while the slice's task still holds
                # its CPU, where the straight run asks once it has left.
                if not (st.inslice and self.twin.slice_ends_first()):
                    next_wake = st.next_wake
                    if next_wake >= 0 and next_wake <= engine.clock:
                        self._fire_wakes()
                    if works.timers or works.items:
                        works.fire_due()
                if stop_when is not None and stop_when():
                    return
                if until is not None:
                    if engine.clock >= until:
                        return
                elif len(trace) >= bound:
                    self._event_bound()
                if st.live <= 0:
                    return
                if works.items:
                    want, want_goals = works.waits()
                    if each:
                        want = 1
                else:
                    want, want_goals = (1 if each else 0), None
                if st.each_slice != want:
                    st.each_slice = want
                quiet = 1 if listeners else 0
                for lst in listeners:
                    if not getattr(lst, "hooks_inert", False):
                        quiet = 0
                        break
                if st.quiet != quiet:
                    st.quiet = quiet
                if want_goals != goals:
                    goals = self._set_goals(goals, want_goals)
                if watch is not None:
                    tids = set(watch())
                    if tids != watched:
                        watched = self._set_watch(watched, tids)
                timers = works.timers
                deadline = timers[0][0] if timers else -1
                if in_c and works.stop is None:
                    reason = engine.sched_run(until_c, deadline)
                else:
                    reason = self.twin.run(until_c, deadline)
                if reason > _DONE and not self._returned(reason, until_c, deadline):
                    return
        finally:
            if st.quiet:
                st.quiet = 0
            if goals is not None:
                self._set_goals(goals, None)
            if watched:
                self._set_watch(watched, set())
            m.drain()

    def _event_bound(self) -> None:
        """EventBound: a run given no until reached the machine's bound on
        the events it keeps, with tasks still running."""
        m = self.m
        running = [t.name for t in m.tasks if t.state is not RunState.EXITED]
        raise EventBound(
            f"run: the trace reached {len(m.trace):_} events at t={m.now} with {len(running)} tasks still running "
            f"({', '.join(running[:3])}{', ...' if len(running) > 3 else ''}): a run given no until keeps at most "
            f"{m.max_events:_} events (Machine max_events); pass until= (a virtual time: m.seconds(s), m.ticks(n)) "
            f"to run to a time, or a larger Machine(max_events=)")

    def _fire_wakes(self) -> None:
        """Wake the sleepers due now: in C with the C scheduler (the twin's
        fire_wakes is the same rule, and the tests hold the two to the same
        runs), draining the event ring first when it may not hold them."""
        m = self.m
        if m.sched != "c":
            self.twin.fire_wakes()
        elif not m.engine.sched_fire_wakes():
            m.drain()
            if not m.engine.sched_fire_wakes():
                raise CoreError("scheduler: the event ring cannot hold the wakes")

    def _set_goals(self, old: tuple | None, new: tuple | None) -> tuple | None:
        """Set the CPUs' slice goals (None: none) where they differ from old."""
        zero = (0,) * len(self.state.cpus)
        for cpu, a, b in zip(self.state.cpus, old or zero, new or zero):
            if a != b:
                cpu.goal = b
        return new

    def _set_watch(self, old: set[int], new: set[int]) -> set[int]:
        """Set the watch flags of the tasks in new, clear those of the others in old."""
        tasks = self.state.tasks
        for tid in old - new:
            tasks[tid].watch = 0
        for tid in new - old:
            tasks[tid].watch = 1
        return new

    def _returned(self, reason: int, until: int, deadline: int) -> bool:
        """Do what the scheduler came back for; False when the run is over."""
        m, st = self.m, self.state
        if reason == _SLICE:
            return True          # a slice ended: stop_when is asked at the loop's top
        if reason in _HOOKS:
            task = m.tasks[st.rtask]
            hook = _HOOKS[reason]
            for listener in m.listeners:
                getattr(listener, hook)(task)
            if reason != _SAFE_POINT:
                self.twin.switch_tail(st.rcpu, task.tid)
        elif reason == _WORK:
            m.works.granted(st.rcpu)
        elif reason == _IDLE:
            cpu = m.cpus[st.rcpu]
            for listener in m.listeners:
                listener.on_idle(cpu, cpu.idle)
        elif reason == _PICK:
            i = st.rcpu
            cpu, tasks = m.cpus[i], m.tasks
            cands = [tasks[tid] for tid in st.cpus[i].runnable(st.rtask)]
            st.pick = m.policy.pick(cpu, cands, m.now).tid
        elif reason == _EVENTS:
            m.drain()
        elif reason == _IDLE_ROUND:
            return self._idle_round(until, deadline)
        elif reason == _END:
            return False
        elif reason == _HANG:
            names = ", ".join(t.name for t in m.tasks if t.state is RunState.SLEEPING)
            raise GuestFault(f"every task is asleep with nothing to wake it: {names}", kind="hang")
        elif reason in _TROUBLE:
            self._trouble(reason)
        elif reason == _SM and m.works.stop is None:
            # the C loop hands stop_machine to the twin, which runs while
            # works.stop is set: a flag set without it would loop forever
            raise CoreError("scheduler: sm is set but no stop_machine is in progress")
        return True

    def _trouble(self, reason: int) -> None:
        """A hypercall the scheduler does not handle, or a task gone wrong."""
        m, st = self.m, self.state
        task, cpu = m.tasks[st.rtask], m.cpus[st.rcpu]
        stop = m.engine.last_stop
        if reason == SR.FAULT:
            raise faults.report(m, cpu, task, stop)
        if reason == SR.LOCKUP:
            raise faults.report(m, cpu, task, None, soft_lockup=True)
        if reason == SR.KTHREAD_RET:
            raise faults.report(m, cpu, task, stop, message="a kthread returned to user")
        if stop.hc_nr in m.hypercalls:
            rax = m.hypercalls[stop.hc_nr](m, task, stop.hc_args)
            m.engine.switch(task.tid)
            m.engine.uc.reg_write(UC_X86_REG_RAX, rax & (2**64 - 1))
        else:
            raise faults.report(m, cpu, task, stop, message=f"unknown hypercall {stop.hc_nr}")

    def _idle_round(self, until: int, deadline: int) -> bool:
        """Every CPU idled through a round (stepping slice by slice): move
        time to the next wake or timer. False when nothing can happen."""
        if self.m.works.any_ready():
            return True       # idle CPUs end their slices and park without time passing
        reason = self.twin.idle_jump(until, deadline)
        if reason:
            return self._returned(reason, until, deadline)
        return True
