"""Kernel work on a machine: timers (a call at a point of virtual time) and
work items (generators standing for kernel threads: a transition, a
text_poke, the livepatch work), which wait for a sync (every CPU has ended a
slice), for a point in time, or for stop_machine (every CPU parked at a
scheduling point). The parking itself is the scheduler's
(emu/engine/sched.py, which reads the StopState)."""
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


class Work:
    """A kernel work item: a generator and what it waits for."""

    def __init__(self, gen):
        self.gen = gen
        self.kind = "now"
        self.arg = None

    def ready(self, m) -> bool:
        if self.kind == "now":
            return True
        if self.kind == "time":
            return m.now >= self.arg
        if self.kind == "sync":
            return all(c.slices > s for c, s in zip(m.cpus, self.arg))
        if self.kind == "stop":
            return m.works.all_stopped
        return False


class Works:
    """A machine's timers and work items, and the stop_machine section one
    of them may hold. It uses of the machine only now, cpus, emit() and
    sched_state (whose sm flag it sets)."""

    def __init__(self, machine):
        self.m = machine
        self.timers: list = []             # heap of (when, seq, fn)
        self.seq = 0
        self.items: list[Work] = []
        self.stop: StopState | None = None          # stop_machine in progress
        self.last_stop_machine: tuple[int, int, int] | None = None

    @property
    def all_stopped(self) -> bool:
        return self.stop is not None and len(self.stop.parked) == len(self.m.cpus)

    @property
    def next_timer(self) -> int:
        """When the first timer is due (-1: none)."""
        return self.timers[0][0] if self.timers else -1

    def per_slice(self) -> bool:
        """Whether a work waits for CPUs to end slices (the loop must come back after each)."""
        return any(w.kind in ("sync", "stop") for w in self.items)

    def any_ready(self) -> bool:
        return any(w.kind in ("sync", "stop") or w.ready(self.m) for w in self.items)

    def at(self, when: int, fn) -> None:
        """Call fn() when the clock reaches `when` (in order of registration for ties)."""
        self.seq += 1
        heapq.heappush(self.timers, (max(when, self.m.now), self.seq, fn))

    def spawn(self, work) -> None:
        """Start a kernel work (a generator); it runs now until its first wait."""
        self.items.append(Work(work))
        self.advance()

    def fire_due(self) -> None:
        while self.timers and self.timers[0][0] <= self.m.now:
            _, _, fn = heapq.heappop(self.timers)
            fn()
        self.advance()

    def advance(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            for w in list(self.items):
                if w.ready(self.m):
                    progressed = True
                    try:
                        wait = w.gen.send(None)
                    except StopIteration:
                        self.items.remove(w)
                        if self.stop is not None and self.stop.work is w:
                            self.release_stop_machine()
                        continue
                    self._wait(w, wait)

    def _wait(self, w: Work, wait) -> None:
        if isinstance(wait, Sync) or wait is None:
            w.kind, w.arg = "sync", tuple(c.slices for c in self.m.cpus)
        elif isinstance(wait, Delay):
            w.kind, w.arg = "time", self.m.now + max(0, wait.instructions)
            self.at(w.arg, lambda: None)
        elif isinstance(wait, StopMachine):
            if self.stop is not None:
                raise RuntimeError("nested stop_machine")
            self.stop = StopState(w, self.m.now)
            if self.m.sched_state is not None:
                self.m.sched_state.sm = 1
            w.kind, w.arg = "stop", None
        elif isinstance(wait, Release):
            self.release_stop_machine()
            w.kind, w.arg = "now", None
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
