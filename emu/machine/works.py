"""Kernel work on a machine, and the CPU it runs on.

In the kernel, work runs in a context on a CPU: the write to `enabled` (or
a module load) in the writing process, the transition's retry in a kworker,
kGraft's completion check in a work, kpatch's switch in stop_machine's
stopper threads. Here every step of a work item (a generator standing for
that kernel thread or process: a transition, a text_poke, the livepatch
work) runs on one CPU, which it must first get from the scheduler. (A
timer's call, `at`, is taken at its instruction boundary like an
interrupt: an action it makes returns the sysfs write's errors at once, and
the work the write starts waits for a CPU like any other.)


- a work that is ready asks for a CPU (an idle one if there is one, else the
  one it ran on last, else CPU 0) and waits (core.CpuRecord.work);
- the scheduler (csrc/sched.c and its twin emu/engine/sched.py) gives it the
  CPU when no task is on it, or at once with full preemption (the task is
  preempted where it stands); otherwise the task on it runs on until its
  next scheduling point (cond_resched, a sleep, a kernel exit, its exit),
  which takes it off the CPU. A task in a long kernel loop without one
  keeps the work waiting, as it keeps a kworker waiting. A CPU given to
  the work at the start of its turn runs a task of its run queue after the
  step in the same turn, as schedule() picks the next runnable task once
  the kworker sleeps;
- the step then runs with that CPU occupied (`cpu`): the task it displaced
  is off its CPU (not running), the tasks current on other CPUs are
  running (task_curr()), and the CPU's idle task is not running either.
  Each step costs WORK_COST instructions of virtual time on its CPU.

A work can then wait for a sync (Sync: every CPU has ended a slice, as
text_poke_bp's IPIs are taken at any instruction boundary), for a point in
time (Delay), or for stop_machine (StopMachine: every CPU parked at a
scheduling point, as each must schedule its stopper thread; the parking
is the scheduler's, emu/engine/sched.py, which reads the StopState). Steps
inside a stop_machine section run on the stopped CPUs without asking again.
Between two steps a work holds no CPU (it sleeps, like a kworker between
two runs). Work spawned by a step starts at once on the same CPU (the
writer of `enabled` makes the first transition attempt itself)."""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from emu.engine.core import EV_STOP_MACHINE


@dataclass(frozen=True)
class Sync:
    """Wait until every CPU has ended its current slice (text_poke_bp's sync)."""


@dataclass(frozen=True)
class Delay:
    """Wait `instructions` of virtual time."""
    instructions: int


@dataclass(frozen=True)
class StopMachine:
    """Wait until every CPU has parked at a scheduling point; the work then
    runs with every CPU stopped, until it yields Release()."""


@dataclass(frozen=True)
class Release:
    """End the stop_machine section."""


@dataclass(eq=False)
class StopState:
    """stop_machine in progress: which CPUs have parked, and when the last did."""
    work: "Work"
    requested_at: int
    parked: set = field(default_factory=set)
    stopped_at: int | None = None


#: Virtual instructions one step of kernel work costs on its CPU.
WORK_COST = 100


class Work:
    """A kernel work item: a generator, what it waits for (kind, arg) and the
    CPU it ran on last."""

    def __init__(self, gen, cpu: int | None):
        self.gen = gen
        self.kind = "new"
        self.arg = None
        self.cpu = cpu

    def ready(self, m) -> bool:
        """Whether what it waits for (other than a CPU) has come."""
        if self.kind == "time":
            return m.now >= self.arg
        if self.kind == "sync":
            for c, s in zip(m.cpus, self.arg):
                if c.slices <= s:
                    return False
            return True
        if self.kind == "stop":
            return m.works.all_stopped
        return False


def _nothing() -> None:
    """The timer that brings the loop back when a Delay ends."""


class Works:
    """A machine's timers and work items, the CPU the step in progress
    occupies, and the stop_machine section one of them may hold. It uses of
    the machine only now, cpus, engine.clock, emit() and sched_state (whose
    sm flag and CPUs' work flags it sets)."""

    def __init__(self, machine):
        self.m = machine
        self.timers: list = []             # heap of (when, seq, fn)
        self.seq = 0
        self.items: list[Work] = []
        self.cpu: int | None = None        # the CPU the step in progress occupies
        self.stop: StopState | None = None          # stop_machine in progress
        self.last_stop_machine: tuple[int, int, int] | None = None

    @property
    def all_stopped(self) -> bool:
        return self.stop is not None and len(self.stop.parked) == len(self.m.cpus)

    def occupies(self, index: int) -> bool:
        """Whether kernel work holds CPU `index` right now (the step in
        progress, or a stopper thread of the stop_machine section)."""
        return index == self.cpu or (self.stop is not None and index in self.stop.parked)

    def waits(self) -> tuple[int, tuple[int, ...] | None]:
        """What the works wait for, as the scheduler loop needs it: 1 when
        one waits for stop_machine (the loop must come back after each
        slice), else 0; and per CPU, the slice count at which a sync a work
        waits for can be over (the scheduler comes back once every CPU
        reached it: the earliest a waiting work can be ready), or None when
        none waits for a sync."""
        per_slice, goals = 0, None
        for w in self.items:
            kind = w.kind
            if kind == "sync":
                g = tuple(s + 1 for s in w.arg)
                goals = g if goals is None else tuple(map(min, goals, g))
            elif kind == "stop":
                per_slice = 1
        return per_slice, goals

    def any_ready(self) -> bool:
        return any(w.kind in ("sync", "stop") or w.ready(self.m) for w in self.items)

    def at(self, when: int, fn) -> None:
        """Call fn() when the clock reaches `when` (in order of registration
        for ties), at that instruction boundary, like a timer interrupt:
        the kernel work fn starts (spawn) waits for a CPU."""
        self.seq += 1
        heapq.heappush(self.timers, (max(when, self.m.now), self.seq, fn))

    def spawn(self, work) -> None:
        """Start a kernel work (a generator). From a step of another work it
        runs at once on that CPU until its first wait; otherwise it first
        waits for a CPU."""
        w = Work(work, self.cpu)
        self.items.append(w)
        if self.cpu is not None:
            self._step(w)
        else:
            self._ask(w)

    def fire_due(self) -> None:
        timers = self.timers
        engine = self.m.engine
        while timers and timers[0][0] <= engine.clock:
            _, _, fn = heapq.heappop(timers)
            fn()
        if self.items:
            self.advance()

    def advance(self) -> None:
        """Works whose wait is over ask for a CPU; inside a stop_machine
        section, its work runs on at once."""
        progressed = True
        while progressed:
            progressed = False
            for w in list(self.items):
                if w.kind == "cpu" or w not in self.items or not w.ready(self.m):
                    continue
                progressed = True
                if w.kind == "stop" or (self.stop is not None and self.stop.work is w):
                    self._step(w, self.stop_cpu(w))
                else:
                    self._ask(w)

    def stop_cpu(self, w: Work) -> int:
        return w.cpu if w.cpu is not None else 0

    def granted(self, index: int) -> None:
        """The scheduler gave CPU `index` to the works waiting for it: each
        runs one step there."""
        for w in [w for w in self.items if w.kind == "cpu" and w.arg == index]:
            if w in self.items:
                self._step(w, index)
        self.advance()

    def _ask(self, w: Work) -> None:
        """w waits for a CPU: an idle one, else the one it ran on, else CPU 0."""
        m = self.m
        idle = [c.index for c in m.cpus if c.current is None]
        index = idle[0] if idle else (w.cpu if w.cpu is not None else 0)
        w.kind, w.arg = "cpu", index
        st = m.sched_state
        if st is not None:
            st.cpus[index].work = 1

    def claims(self) -> set[int]:
        """The CPUs works wait for (the scheduler state's flags, at bind)."""
        return {w.arg for w in self.items if w.kind == "cpu"}

    def _step(self, w: Work, index: int | None = None) -> None:
        """Run w until its next wait, on CPU index (default: the CPU of the
        step in progress), charging WORK_COST."""
        outer = self.cpu
        self.cpu = index if index is not None else outer
        w.cpu = self.cpu
        try:
            wait = w.gen.send(None)
        except StopIteration:
            self.items.remove(w)
            if self.stop is not None and self.stop.work is w:
                self.release_stop_machine()
            wait = None
            done = True
        else:
            done = False
        finally:
            self.cpu = outer
            self.m.engine.clock += WORK_COST
        if not done:
            self._wait(w, wait)

    def _wait(self, w: Work, wait) -> None:
        if isinstance(wait, Sync) or wait is None:
            w.kind, w.arg = "sync", tuple(c.slices for c in self.m.cpus)
        elif isinstance(wait, Delay):
            w.kind, w.arg = "time", self.m.now + max(0, wait.instructions)
            self.at(w.arg, _nothing)
        elif isinstance(wait, StopMachine):
            if self.stop is not None:
                raise RuntimeError("nested stop_machine")
            self.stop = StopState(w, self.m.now)
            if self.m.sched_state is not None:
                self.m.sched_state.sm = 1
            w.kind, w.arg = "stop", None
        elif isinstance(wait, Release):
            self.release_stop_machine()
            self._ask(w)
        else:
            raise TypeError(f"a work yielded {wait!r}")

    def release_stop_machine(self) -> None:
        """End stop_machine; the CPUs resume where they stopped."""
        sm, self.stop = self.stop, None
        if self.m.sched_state is not None:
            self.m.sched_state.sm = 0
        if sm is not None and sm.stopped_at is not None:
            self.m.emit(EV_STOP_MACHINE, -1, 0)
            self.last_stop_machine = (sm.requested_at, sm.stopped_at, self.m.now)
