"""The probe: every state each task passes through, and when.

A probe is a run without the patch (the patch images loaded, nothing
enabled), round robin, from the first action on, drawing rdrand, rdseed and
the slices' lengths from PROBE_DRAWS (emu/runs/fuzz.py): exactly the prefix
of the directed strategy's first runs, which draw from the same seed, so a
start point t of such a run meets at t what the probe saw at t. (A run
drawing from its own seed follows another path wherever the tasks' code
reads rdrand, or two tasks share a CPU.) Between slices it observes every task
that is off its CPU (emu/runs/states.py) and keeps, per task, the distinct
states in the order they first appeared and a timeline of runs of equal
states.

It also hears every cond_resched() a task passes (states.Passes), where
the task stays on its CPU when nothing else is runnable there, but a
transition's stopper thread or kworker waiting for that CPU takes it
(__cond_resched -> __schedule once need_resched is set): the task's state
there is a state a transition can meet, and a new run of the timeline
starts there just after the task's previous scheduling point (it came on
its CPU, passed a kernel exit or another cond_resched): kernel work that
asks for the CPU from then on finds the task at this cond_resched first.
`passing` keeps the states seen only that way, never off the CPU.

It runs until no new state has appeared for a long stretch: at least
`quiet` cycles of the tasks (`[fuzz] quiet`, 64) and twice the time it took
to see the last new state (a path taken once in n requests shows up within
about n cycles; if the last one took that long, another as rare may be as
far again), or until its bound (`[fuzz] probe`, seconds of virtual time).
`saturated` says which of the two ended it. A path rarer than `quiet`
cycles whose first time comes later than that is not seen: the probe line
of a campaign says how long the probe waited, and `[fuzz] quiet` waits
longer.

cover() turns the timeline into start points: a transition started at t
meets each task in the first state observed at or after t (off its CPU at t:
its state then; running: its state at its next stop, where stop_machine
parks its CPU and livepatch first looks at it; a cond_resched it passes is
such a stop when the transition's work waits for its CPU). Greedy set cover picks
points until every (task, state) is met by one of them. A run records what
its transition really met (Result.met, from the model's start on), and
coverage is counted from that, not from this prediction.
"""
from __future__ import annotations

import heapq
from bisect import bisect_left
from dataclasses import dataclass, field

from emu.errors import GuestFault
from emu.runs import states


@dataclass
class Probe:
    first_at: int
    end: int = 0                    # virtual time at which the probe stopped
    last_new: int = 0               # virtual time at which the last new state appeared
    saturated: bool = False         # True: stopped after a long stretch with nothing new; False: the bound
    fault: str | None = None        # the unpatched run faulted (the probe stopped there)
    states: dict[str, list[str]] = field(default_factory=dict)     # task -> states, first seen first
    # task -> [(last observation of a run of equal states, its first, index into states[task])]
    timeline: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    patched: list[str] = field(default_factory=list)               # the patched functions (by name)
    # task -> its states seen only as it passed a cond_resched, never off its CPU
    passing: dict[str, list[str]] = field(default_factory=dict)
    quiet: int = 0                  # cycles without a new state after which it stops (its rule)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.states.values())

    def met(self, task: str, t: int) -> str | None:
        """The state a transition started at t first meets in task (None:
        the probe never saw the task off its CPU after t)."""
        tl = self.timeline.get(task, [])
        i = bisect_left(tl, (t, -1, -1))
        return self.states[task][tl[i][2]] if i < len(tl) else None

    def met_all(self, t: int) -> dict[str, str]:
        out = {}
        for task in self.states:
            s = self.met(task, t)
            if s is not None:
                out[task] = s
        return out

    def cover(self) -> list[int]:
        """Start points such that every (task, state) the probe saw is met
        first by one of them; the point meeting the most new pairs first
        (ties: the earliest). Lazy greedy set cover over the first
        observations of the timeline's runs: a model looks at the tasks a
        little after the request (livepatch after its setup, stop_machine
        when the CPUs have stopped), and a run's first observation leaves
        the state the longest time to be met in."""
        points = sorted({t for tl in self.timeline.values() for _, t, _ in tl})
        sets = [frozenset(self.met_all(t).items()) for t in points]
        heap = [(-len(s), i) for i, s in enumerate(sets)]
        heapq.heapify(heap)
        covered: set = set()
        out = []
        while heap and len(covered) < self.total:
            neg, i = heapq.heappop(heap)
            gain = len(sets[i] - covered)
            if gain == 0:
                continue
            if -neg != gain:                  # stale count: re-queue with the true one
                heapq.heappush(heap, (-gain, i))
                continue
            covered |= sets[i]
            out.append(points[i])
        return out

    def to_json(self) -> dict:
        return {"first_at": self.first_at, "end": self.end, "last_new": self.last_new,
                "saturated": self.saturated, "fault": self.fault, "states": self.states,
                "passing": {t: v for t, v in self.passing.items() if v}, "patched": self.patched,
                "quiet": self.quiet}


def run_probe(machine, *, first_at: int, cycle: int, bound: int, patched: list[str], quiet: int,
              stacks: states.StackSource | None = None) -> Probe:
    """Probe a prepared machine (at first_at, nothing enabled) until
    saturation (no new state for quiet cycles, and for twice the time
    the last new state took) or first_at + bound. The caller closes the
    machine."""
    stacks = stacks or states.UnwinderStacks()
    pr = Probe(first_at, last_new=first_at, patched=sorted(patched), quiet=quiet)
    index: dict[str, dict[str, int]] = {}
    stale = quiet * cycle
    obs = states.Observer(machine, stacks)

    passes = states.Passes(machine, stacks)

    def seen(task: str, st: str, now: int, since=None) -> None:
        """task in state st at now: off its CPU (since None), or passing a
        cond_resched (since: a callable that gives its previous scheduling
        point, asked only when a new run of states begins there)."""
        known = index.setdefault(task, {})
        k = known.get(st)
        if k is None:
            k = known[st] = len(known)
            pr.states.setdefault(task, []).append(st)
            pr.last_new = now
            if since is not None:
                pr.passing.setdefault(task, []).append(st)
        elif since is None and st in pr.passing.get(task, ()):
            pr.passing[task].remove(st)        # seen off its CPU after all
        tl = pr.timeline.setdefault(task, [])
        if tl and tl[-1][2] == k:
            tl[-1] = (now, tl[-1][1], k)
        else:
            # a run starts after the one before it ended (met() finds the
            # first run not over at t)
            first = now if since is None else since() + 1
            tl.append((now, min(now, max(first, tl[-1][0] + 1 if tl else first_at)), k))

    def look() -> bool:
        now = machine.now
        heard = passes.take()
        if heard:
            # the scheduler came back for a cond_resched() (and look() runs
            # at once): mid-slice, the others are looked at when it ends
            for task, st, at in heard:
                seen(task.name, st, at, lambda: passes.since(task, at))
        else:
            for task, st in obs.observe().items():
                seen(task, st, now)
        quiet = now - pr.last_new
        if quiet >= max(stale, 2 * (pr.last_new - first_at)):
            pr.saturated = True
            return True
        return False

    machine.listeners.append(passes)
    try:
        machine.run(until=first_at + bound, stop_when=look, every_slice=True)
    except GuestFault as exc:
        pr.fault = str(exc)
    finally:
        machine.listeners.remove(passes)
    pr.end = machine.now
    return pr


def find_state(machine, state: str, *, tasks=None, until: int, count: int,
               stacks: states.StackSource | None = None) -> list[int]:
    """Start points of up to count runs in which one of tasks (names; None:
    any) meets state, from a prepared machine up to until: the first
    observation of a run of it off its CPU, or for a cond_resched passed
    in it, just after the task's previous scheduling point (as the probe's
    timeline has them). The shrinker uses it to find where a smaller variant
    of a run meets the state that failed. The caller closes the machine."""
    stacks = stacks or states.UnwinderStacks()
    found: list[int] = []
    inside = False
    obs = states.Observer(machine, stacks)
    passes = states.Passes(machine, stacks)
    begin = machine.now

    def look() -> bool:
        nonlocal inside
        heard = passes.take()
        if heard:
            for task, st, at in heard:
                if st == state and (tasks is None or task.name in tasks):
                    if not inside:
                        found.append(max(begin, passes.since(task, at) + 1))
                    inside = True
        else:
            seen = obs.observe()
            hit = any(s == state for t, s in seen.items() if tasks is None or t in tasks)
            if hit and not inside:
                found.append(machine.now)
            inside = hit
        return len(found) >= count

    machine.listeners.append(passes)
    try:
        machine.run(until=until, stop_when=look, every_slice=True)
    except GuestFault:
        pass
    finally:
        machine.listeners.remove(passes)
    return found
