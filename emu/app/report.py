"""What people look at after one run: spans of patched-function activations,
a Chrome trace-event file for ui.perfetto.dev, and a timeline picture.

Everything here reads a finished run: the machine's trace (machine.trace),
its kernel log (machine.log) and the model's Transition records. Nothing
changes the machine.

Activations (the rule of emu/runs/oracle.py's function units, one home:
oracle.activations): an activation ends where the function returns, at its
exit event (EV_RETURN; EV_UNWOUND when a stack switch left it). If the
trace ends first, it ends with the trace (machine.now, and the span is
marked unfinished). A task sleeping inside a function stays inside it, so
the span stays open across the sleep.

Time: both outputs show the machine's virtual time, whose unit is the
retired instruction. One virtual second is machine.seconds(1) = hz * tick
instructions (the unit of the livepatch retry period and of kpatch's
retries). The trace file's timestamps are virtual microseconds (the
trace-event format's unit), shown in milliseconds (displayTimeUnit "ms");
the exact instruction counts are in each event's args.

CPU occupancy: a task runs on a CPU from its EV_SCHED_IN there until the
CPU's next EV_SCHED_IN or the task's sleep or exit (the CPU idles then);
a stop_machine pause occupies every CPU (its stopper thread) and cuts the
task that was running there.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from emu.engine import core
from emu.errors import UserError
from emu.machine.machine import (EV_EXIT, EV_MODULE, EV_PATCH_STATE, EV_SCHED_IN, EV_SLEEP, EV_TRANSITION, EV_WAKE,
                                 MODULE_STATES, Machine)
from emu.runs import oracle, output
from emu.runs.scenario import MAX_TIME
from emu.models.base import T_CANCEL, T_FAIL, T_REVERSE, Transition
from emu.machine.task import PATCHED, UNDEFINED, UNPATCHED

# ---- colours ---------------------------------------------------------------------
# Chrome's trace viewer accepts only its reserved colour names in "cname"
# (catapult tracing/base/color_scheme.html); the picture uses the same RGB
# values, so both outputs agree. Version 0 (the original) is blue, patches
# cycle through green, orange, red and yellow.
_VERSION_CNAMES = ("rail_response", "rail_load", "rail_idle", "rail_animation", "startup")
_CNAME_RGB = {
    "rail_response": "#4387fd", "rail_load": "#0da861", "rail_idle": "#ee8e00",
    "rail_animation": "#f44a3f", "startup": "#e6e600", "good": "#007d00", "bad": "#b47d00",
    "terrible": "#b40000", "grey": "#dddddd", "olive": "#646400", "black": "#000000", "yellow": "#ffff00",
    "generic_work": "#7d7d7d",
}
#: colour of each kind of transition moment (Chrome reserved names)
MOMENT_CNAMES = {"requested": "generic_work", "started": "rail_response", "completed": "good",
                 "failed": "terrible", "reversed": "bad", "cancelled": "bad"}
#: colour of a module's coming and going (insmod, rmmod, their notifiers)
MODULE_CNAME = "black"
SLEEP_CNAME = "grey"
PAUSE_CNAME = "terrible"
PATCH_STATE_CNAME = "olive"

_STATE_NAMES = {UNDEFINED: "undefined", UNPATCHED: "unpatched", PATCHED: "patched"}
_RESULT_CODES = {"failed": T_FAIL, "reversed": T_REVERSE, "cancelled": T_CANCEL}


def version_name(version: int) -> str:
    """'original' for version 0, 'patch k' for the k-th patch (its index)."""
    return "original" if version == 0 else f"patch {version}"


def version_cname(version: int) -> str:
    """The Chrome reserved colour name of a version: blue for the original,
    then green, orange, red, yellow for patches 1, 2, 3, 4, 5, 6, ..."""
    if version <= 0:
        return _VERSION_CNAMES[0]
    return _VERSION_CNAMES[1 + (version - 1) % (len(_VERSION_CNAMES) - 1)]


def version_colour(version: int) -> str:
    """The RGB hex colour of a version, the same as version_cname's."""
    return _CNAME_RGB[version_cname(version)]


def patched_functions(patches) -> set[int]:
    """The old function ids a list of patches replaces (as emu.runs.oracle.check's default)."""
    return {f.old.id for p in patches for _, f in p.funcs() if f.old is not None}


def _us(machine: Machine, clock: int) -> float:
    """A clock value in virtual microseconds, rounded to the nanosecond."""
    return round(clock * 1_000_000 / machine.seconds(1), 3)


# ---- what happened ------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    """One activation of a traced function by a task.

    version is the entry event's (0 = original, k = the k-th patch's index);
    depth counts the shown activations of the task still open when it began
    (0 = outermost); finished is False when the trace ended first."""
    task: int
    task_name: str
    function: str
    version: int
    start: int
    end: int
    depth: int
    finished: bool = True

    @property
    def duration(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Interval:
    """A stretch of virtual time of one task (task -1: the whole machine)."""
    task: int
    start: int
    end: int


@dataclass(frozen=True)
class Moment:
    """A point of a transition: kind is requested, started, completed,
    failed, reversed or cancelled."""
    clock: int
    kind: str
    patch: str
    target: int

    @property
    def subject(self) -> str:
        return self.patch

    @property
    def label(self) -> str:
        verb = "patching" if self.target == PATCHED else "unpatching"
        return f"{self.patch}: {verb} {self.kind}"


def activations(machine: Machine, functions: set[int] | None = None) -> list[Span]:
    """Activations of the functions with ids in `functions` (machine.functions
    indices; None: every traced function), per task, by the rule in the
    module docstring. An entry event names the old function's id and the
    version that ran, so pass the patched functions' old ids (see
    patched_functions). Sorted by start, then depth, then task."""
    tasks = machine.tasks
    spans: list[Span] = []
    open_: dict[int, list[int]] = {}     # task -> exit indices of its shown activations still open
    for act in oracle.activations(machine.trace, machine.now):
        if not 0 <= act.task < len(tasks) or (functions is not None and act.function not in functions):
            continue
        stack = open_.setdefault(act.task, [])
        while stack and stack[-1] <= act.entry:
            stack.pop()
        spans.append(Span(act.task, tasks[act.task].name, machine.functions[act.function].name, act.version,
                          act.start, act.end, len(stack), act.finished))
        stack.append(act.exit)
    spans.sort(key=lambda s: (s.start, s.depth, s.task))
    return spans


def sleeps(machine: Machine) -> list[Interval]:
    """Each task's sleeps: from its sleep event to its wake event (or the
    end of the trace). Sorted by start."""
    asleep: dict[int, int] = {}
    out: list[Interval] = []
    for clock, kind, task, *_ in machine.trace:
        if task < 0:
            continue
        if kind == EV_SLEEP:
            asleep[task] = clock
        elif kind == EV_WAKE and task in asleep:
            out.append(Interval(task, asleep.pop(task), clock))
    out += [Interval(task, start, machine.now) for task, start in asleep.items()]
    out.sort(key=lambda i: (i.start, i.task))
    return out


def pauses(transitions) -> list[Interval]:
    """stop_machine pauses of the transitions (every CPU stopped), task -1."""
    return sorted((Interval(-1, start, end) for t in transitions for start, end in t.pauses),
                  key=lambda i: i.start)


@dataclass(frozen=True)
class Occupancy:
    """A stretch of virtual time during which cpu ran task (a task index;
    -1: the stop_machine stopper, the kernel's own work)."""
    cpu: int
    task: int
    start: int
    end: int


def occupancy(machine: Machine, transitions: list[Transition]) -> list[Occupancy]:
    """What ran on each CPU, by the rule in the module docstring. Sorted by
    cpu, then start."""
    n = len(machine.tasks)
    running: dict[int, tuple[int, int]] = {}     # cpu -> (task, since)
    where: dict[int, int] = {}                   # task -> the cpu it runs on
    raw: list[Occupancy] = []

    def stop(cpu: int, clock: int) -> None:
        if cpu in running:
            task, since = running.pop(cpu)
            where.pop(task, None)
            if clock > since:
                raw.append(Occupancy(cpu, task, since, clock))

    for clock, kind, task, a, *_ in machine.trace:
        if kind == EV_SCHED_IN and 0 <= task < n:
            stop(a, clock)
            if task in where:
                stop(where[task], clock)
            running[a], where[task] = (task, clock), a
        elif kind in (EV_SLEEP, EV_EXIT) and task in where:
            stop(where[task], clock)
    for cpu in list(running):
        stop(cpu, machine.now)
    # a pause occupies every CPU: cut what ran there around it
    out: list[Occupancy] = []
    stops = pauses(transitions)
    for occ in raw:
        start = occ.start
        for p in stops:
            if p.end <= start or p.start >= occ.end:
                continue
            if p.start > start:
                out.append(Occupancy(occ.cpu, occ.task, start, p.start))
            start = max(start, p.end)
        if start < occ.end:
            out.append(Occupancy(occ.cpu, occ.task, start, occ.end))
    out += [Occupancy(cpu, -1, p.start, p.end) for p in stops for cpu in range(len(machine.cpus))]
    out.sort(key=lambda o: (o.cpu, o.start))
    return out


def pending_counts(machine: Machine, transitions: list[Transition]) -> list[tuple[int, int]]:
    """(clock, tasks still pending) whenever the count changes: during a
    transition, the tasks (idle tasks included) whose patch state is still
    the one it started from; 0 when no transition is in progress."""
    targets = sorted((t.requested_at, t.target) for t in transitions)
    state: dict[int, int] = {}
    out: list[tuple[int, int]] = []

    def target_at(clock: int):
        current = None
        for at, target in targets:
            if at <= clock:
                current = target
        return current

    for clock, kind, task, a, *_ in machine.trace:
        if kind != EV_PATCH_STATE:
            continue
        state[task] = a
        target = target_at(clock)
        initial = UNPATCHED if target == PATCHED else PATCHED
        count = sum(1 for v in state.values() if v == initial) if target is not None else 0
        if out and out[-1][0] == clock:
            out[-1] = (clock, count)
        elif not out or out[-1][1] != count:
            out.append((clock, count))
    return out


def moments(machine: Machine, transitions: list[Transition]) -> list[Moment]:
    """The points of every transition, sorted by time (see _per_transition)."""
    return sorted((mo for found in _per_transition(machine, transitions) for mo in found),
                  key=lambda mo: mo.clock)


def _per_transition(machine: Machine, transitions: list[Transition]) -> list[list[Moment]]:
    """The points of each transition, in its order.

    requested, started and completed come from the records. A failed,
    reversed or cancelled record keeps no time of its own: it is the time of
    the model's EV_TRANSITION event with that result, matched in order (one
    transition runs at a time, so the n-th failed record is the n-th failure
    event). Pass the model's whole list of transitions for the match to hold."""
    ends: dict[int, list[int]] = {}
    for clock, kind, _task, a, *_ in machine.trace:
        if kind == EV_TRANSITION:
            ends.setdefault(a, []).append(clock)
    out = []
    for t in transitions:
        found = [Moment(t.requested_at, "requested", t.patch, t.target)]
        if t.started_at is not None:
            found.append(Moment(t.started_at, "started", t.patch, t.target))
        if t.completed_at is not None:
            found.append(Moment(t.completed_at, "completed", t.patch, t.target))
        elif t.result in _RESULT_CODES and ends.get(_RESULT_CODES[t.result]):
            found.append(Moment(ends[_RESULT_CODES[t.result]].pop(0), t.result, t.patch, t.target))
        out.append(found)
    return out


# ---- Chrome trace-event JSON (ui.perfetto.dev) ------------------------------------------
@dataclass(frozen=True)
class ModuleMoment:
    """What became of a module at clock (an EV_MODULE event): kind is
    coming, live, going or gone (emu/machine/machine.py MODULE_STATES);
    task names the insmod or rmmod that did it ("" for the kernel's own
    notifier work)."""
    clock: int
    kind: str
    module: str
    task: str

    @property
    def subject(self) -> str:
        return f"module {self.module}"

    @property
    def label(self) -> str:
        return f"{self.subject}: {self.kind}"


def module_moments(machine: Machine) -> list[ModuleMoment]:
    """The modules that came and went during the run, by time, from the trace
    (EV_MODULE): coming (mapped; the coming notifiers link the patches that
    cover it), live (its init returned 0), going (rmmod called its exit, or
    its init failed), gone (the going notifiers unlinked it)."""
    images, tasks = machine.images, machine.tasks
    return [ModuleMoment(clock, MODULE_STATES.get(a, str(a)), images[b].name if 0 <= b < len(images) else f"#{b}",
                         tasks[task].name if 0 <= task < len(tasks) else "")
            for clock, kind, task, a, b, *_ in machine.trace if kind == EV_MODULE]


PID = 1


def perfetto(machine: Machine, transitions: list[Transition], functions: set[int] | None,
             handovers=()) -> dict:
    """The run as a Chrome trace-event JSON object that ui.perfetto.dev and
    chrome://tracing open.

    Process 1, "lpemu <machine.name>": one thread per task (tid = task
    index + 1) holding its activations as complete events "bar v0",
    "bar v1" (cname by version), its sleeps ("sleep") and the moments its
    patch state changed ("switched to patched", ...); after the tasks, a
    "transitions" track (each transition as a span from request to its end,
    machine-wide instants for its moments, and one instant per blocked
    attempt naming its blockers, their stacks in args), a "stop_machine"
    track (the pauses), a "printk" track (kernel messages, lines printed at
    one time grouped in one event), a "modules" track (machine-wide instants
    as modules came and went: module_moments) and a "pending tasks" counter.
    Process 2, "CPUs": one thread per CPU with what ran there (the task's
    name, "stop_machine" for the kernel's stopper; gaps are idle).
    Kernel exits and other scheduling events are left out to keep the file
    small. ts and dur are virtual microseconds (module docstring); the exact
    instruction counts are in args (start_insn/end_insn, clock). Events are
    sorted by ts, metadata first, a longer span before a shorter one
    starting with it. cname colours follow the trace viewer's reserved names
    (ui.perfetto.dev colours slices by name instead, so "bar v0" and
    "bar v1" still differ). handovers (emu/runs/handover.py, as objects or
    their JSON) become flow arrows from the producer's return to the
    consumer's entry."""
    n = len(machine.tasks)
    tracks = {"transitions": n + 1, "stop_machine": n + 2, "printk": n + 3, "modules": n + 4}
    events = _metadata(machine, tracks)
    events += _activation_events(machine, functions)
    events += _task_events(machine)
    events += _transition_events(machine, transitions, tracks)
    events += _attempt_events(machine, transitions, tracks["transitions"])
    events += _log_events(machine, tracks["printk"])
    events += _module_events(machine, tracks["modules"])
    events += _pending_events(machine, transitions)
    events += _cpu_events(machine, transitions)
    events += _handover_flows(machine, handovers)
    events.sort(key=lambda e: (e["ph"] != "M", e["ts"], -e.get("dur", 0)))
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "machine": machine.name,
            "time": f"virtual time: 1 s = {machine.seconds(1)} retired instructions, ts in virtual us",
            "instructions_per_second": machine.seconds(1),
            "cpus": len(machine.cpus),
            "end_clock": machine.now,
        },
    }


def write_perfetto(path, machine: Machine, transitions: list[Transition], functions: set[int] | None, *,
                   force: bool = False, handovers=()) -> Path:
    """Write perfetto()'s object to path as JSON; returns the path.
    Raises UserError if the file exists and force is False (FileExistsError
    if it came to exist while the run ran), OSError if it cannot be written
    (the file is then as it was)."""
    path = _writable(path, force)
    data = perfetto(machine, transitions, functions, handovers)
    with output.writing(path, replace=force) as f:     # whole or not at all (emu/runs/output.py)
        json.dump(data, f, separators=(",", ":"))
    return path


CPU_PID = 2


def _metadata(machine: Machine, tracks: dict[str, int]) -> list[dict]:
    def meta(name, tid, args, pid=PID):
        return {"name": name, "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": args}

    out = [meta("process_name", 0, {"name": f"lpemu {machine.name}"}),
           meta("process_sort_index", 0, {"sort_index": 0}),
           meta("process_name", 0, {"name": "CPUs"}, CPU_PID), meta("process_sort_index", 0, {"sort_index": 1}, CPU_PID)]
    named = [(t.name, t.tid + 1) for t in machine.tasks] + list(tracks.items())
    for i, (name, tid) in enumerate(named):
        out.append(meta("thread_name", tid, {"name": name}))
        out.append(meta("thread_sort_index", tid, {"sort_index": i}))
    for cpu in machine.cpus:
        out.append(meta("thread_name", cpu.index + 1, {"name": f"cpu {cpu.index}"}, CPU_PID))
        out.append(meta("thread_sort_index", cpu.index + 1, {"sort_index": cpu.index}, CPU_PID))
    return out


def _complete(machine: Machine, name: str, tid: int, start: int, end: int, cname: str, cat: str,
              args: dict, *, pid: int = PID) -> dict:
    ts = _us(machine, start)
    return {"name": name, "cat": cat, "ph": "X", "ts": ts, "dur": max(0.0, round(_us(machine, end) - ts, 3)),
            "pid": pid, "tid": tid, "cname": cname, "args": {**args, "start_insn": start, "end_insn": end}}


def _instant(machine: Machine, name: str, tid: int, clock: int, cname: str, cat: str, args: dict, *,
             scope: str = "t") -> dict:
    return {"name": name, "cat": cat, "ph": "i", "s": scope, "ts": _us(machine, clock), "pid": PID,
            "tid": tid, "cname": cname, "args": {**args, "clock": clock}}


def _activation_events(machine: Machine, functions) -> list[dict]:
    return [_complete(machine, f"{s.function} v{s.version}", s.task + 1, s.start, s.end,
                      version_cname(s.version), "function",
                      {"function": s.function, "version": s.version, "task": s.task_name, "depth": s.depth,
                       "finished": s.finished})
            for s in activations(machine, functions)]


def _handover_flows(machine: Machine, handovers) -> list[dict]:
    """A flow arrow per value handover: it starts in the producer's slice
    (ph "s" at its return) and ends in the consumer's (ph "f" at its entry,
    bound to the slice that starts there), both on the task's track."""
    tids = {t.name: t.tid + 1 for t in machine.tasks}
    out = []
    for i, h in enumerate(handovers, 1):
        h = h if isinstance(h, dict) else h.to_json()
        tid = tids.get(h["task"])
        if tid is None:
            continue
        args = {"text": h["text"], "value": h["value"]}
        common = {"name": "value handover", "cat": "handover", "id": i, "pid": PID, "tid": tid}
        out.append({**common, "ph": "s", "ts": _us(machine, h["produced_at"]), "args": args})
        out.append({**common, "ph": "f", "bp": "e", "ts": _us(machine, h["at"]), "args": args})
    return out


def _task_events(machine: Machine) -> list[dict]:
    """Sleeps (spans) and patch-state switches (instants) on the task tracks."""
    out = [_complete(machine, "sleep", s.task + 1, s.start, s.end, SLEEP_CNAME, "sched",
                     {"task": machine.tasks[s.task].name})
           for s in sleeps(machine)]
    for clock, kind, task, a, *_ in machine.trace:
        if kind == EV_PATCH_STATE and 0 <= task < len(machine.tasks):
            state = _STATE_NAMES.get(a, str(a))
            name = f"switched to {state}" if a in (PATCHED, UNPATCHED) else f"patch state: {state}"
            out.append(_instant(machine, name, task + 1, clock, PATCH_STATE_CNAME,
                                "patch_state", {"task": machine.tasks[task].name, "state": state}))
    return out


def _attempt_events(machine: Machine, transitions, tid: int) -> list[dict]:
    """One instant per blocked attempt of a transition: its blockers by name,
    their symbolized stacks in args."""
    out = []
    for t in transitions:
        for a in t.history:
            names = ", ".join(name for name, _ in a.blockers)
            out.append(_instant(machine, f"{t.patch}: attempt {a.attempt} blocked by {names}", tid, a.clock,
                                "bad", "attempt", {"patch": t.patch, "attempt": a.attempt,
                                                   "blockers": {name: list(stack) for name, stack in a.blockers}}))
    return out


def _pending_events(machine: Machine, transitions) -> list[dict]:
    """The "pending tasks" counter (pending_counts)."""
    return [{"name": "pending tasks", "ph": "C", "ts": _us(machine, clock), "pid": PID, "tid": 0,
             "cat": "transition", "args": {"pending": count}}
            for clock, count in pending_counts(machine, transitions)]


def _cpu_events(machine: Machine, transitions) -> list[dict]:
    """What ran on each CPU (occupancy), on the CPUs process's tracks."""
    out = []
    for o in occupancy(machine, transitions):
        if o.task < 0:
            out.append(_complete(machine, "stop_machine", o.cpu + 1, o.start, o.end, PAUSE_CNAME, "cpu",
                                 {"cpu": o.cpu, "task": "stop_machine"}, pid=CPU_PID))
        else:
            name = machine.tasks[o.task].name
            out.append(_complete(machine, name, o.cpu + 1, o.start, o.end, "generic_work", "cpu",
                                 {"cpu": o.cpu, "task": name}, pid=CPU_PID))
    return out


def _transition_events(machine: Machine, transitions, tracks) -> list[dict]:
    """Each transition as a span from its request to its end (completion,
    failure, reversal, cancellation; the end of the trace while pending),
    its moments as machine-wide instants, and the stop_machine pauses."""
    out = []
    for t, found in zip(transitions, _per_transition(machine, transitions)):
        verb = "patching" if t.target == PATCHED else "unpatching"
        cname = {"completed": "good", "pending": "yellow"}.get(t.result, "terrible")
        end = found[-1].clock if found[-1].kind not in ("requested", "started") else machine.now
        out.append(_complete(machine, f"{t.patch}: {verb}", tracks["transitions"], t.requested_at, end, cname,
                             "transition", {"patch": t.patch, "result": t.result, "error": t.error or "",
                                            "attempts": t.attempts}))
        out += [_instant(machine, mo.label, tracks["transitions"], mo.clock, MOMENT_CNAMES[mo.kind],
                         "transition", {"patch": mo.patch, "kind": mo.kind}, scope="g") for mo in found]
    for p in pauses(transitions):
        out.append(_complete(machine, "stop_machine", tracks["stop_machine"], p.start, p.end, PAUSE_CNAME,
                             "stop_machine", {"instructions": p.end - p.start}))
    return out


def _module_events(machine: Machine, tid: int) -> list[dict]:
    """Modules coming and going: machine-wide instants on the modules track."""
    return [_instant(machine, mo.label, tid, mo.clock, MODULE_CNAME, "module",
                     {"module": mo.module, "kind": mo.kind, "task": mo.task}, scope="g")
            for mo in module_moments(machine)]


def _log_events(machine: Machine, tid: int) -> list[dict]:
    """Kernel messages: one instant per time at which lines were printed."""
    grouped: dict[int, list[str]] = {}
    for clock, text in machine.log:
        grouped.setdefault(clock, []).append(text)
    return [_instant(machine, lines[0], tid, clock, "generic_work", "printk", {"lines": lines})
            for clock, lines in grouped.items()]


# ---- the picture -------------------------------------------------------------------
_FORMATS = {".png": "png", ".svg": "svg"}
_MOMENT_STYLE = {"requested": ":", "started": "--", "completed": "-", "failed": "-", "reversed": "-.",
                 "cancelled": "-."}
_MODULE_STYLE = (0, (6, 2, 1, 2, 1, 2))       # dash-dot-dot: a module coming or going
FINDING_COLOUR = "#d00000"


@dataclass(frozen=True)
class Mark:
    """A finding to mark on the timeline: kind 'inconsistent' (a unit of
    task from start to end) or 'assertion' (at start; end == start); label
    says what it was."""
    kind: str
    task: int
    start: int
    end: int
    label: str


def marks_of(machine: Machine, result: dict) -> list[Mark]:
    """The inconsistent units and failed assertions of a result record
    (Result.to_json()) as Marks, by time. Findings of tasks the machine does
    not have are left out."""
    index = {t.name: i for i, t in enumerate(machine.tasks)}
    out = []
    for bad in result.get("inconsistencies", []):
        if bad["task"] in index:
            runs = ", ".join(f"{e['function']} v{e['version']}" for e in bad["entries"])
            out.append(Mark("inconsistent", index[bad["task"]], bad["start"], bad["end"],
                            f"inconsistent {bad['unit']}: {runs}"))
    for v in result.get("violations", []):
        if v["task"] in index:
            out.append(Mark("assertion", index[v["task"]], v["time"], v["time"],
                            f"assert {v['assert']} failed: value {v['value']}"))
    out.sort(key=lambda mk: (mk.start, mk.task))
    return out


def default_window(machine: Machine, marks: list[Mark]) -> tuple[int, int]:
    """Around the first finding: its span and as much again on each side,
    at least 2% of a virtual second (a few quanta) each side; the whole run
    when there is no finding."""
    if not marks:
        return 0, max(machine.now, 1)
    first = marks[0]
    margin = max(first.end - first.start, machine.seconds(0.02))
    return max(0, first.start - margin), min(max(machine.now, 1), first.end + margin)


def window_bounds(text: str) -> tuple[int, int | None]:
    """--window read without a run (so that a mistake is said before it):
    'START:END' in instructions, either part empty (the run's start or end:
    None), or 'all'. Raises UserError."""
    start = end = None
    lo, sep, hi = text.partition(":")
    if text == "all":
        start = 0
    elif sep:
        try:
            start = int(lo) if lo.strip() else 0
            end = int(hi) if hi.strip() else None
        except ValueError:
            start = None
    if start is None or not 0 <= start <= MAX_TIME or (end is not None and not start < end <= MAX_TIME):
        raise UserError(f"--window {text[:40]!r}: use START:END in instructions with START < END (e.g. "
                        f"20000:30000), at most {MAX_TIME:_}, or 'all'")
    return start, end


def parse_window(text: str, machine: Machine, marks: list[Mark]) -> tuple[int, int]:
    """--window: 'START:END' in instructions (either may be empty: the run's
    start or end), 'all', or None for default_window. Raises UserError."""
    if text is None:
        return default_window(machine, marks)
    start, end = window_bounds(text)
    end = max(machine.now, 1) if end is None else end
    if not start < end:
        raise UserError(f"--window {text[:40]!r}: starts at {start:_}, after the run's end at {end:_}")
    return start, end


def timeline_format(path) -> str:
    """The picture format of a timeline written to path, by its suffix ("png"
    or "svg"). Raises UserError for another suffix."""
    fmt = _FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UserError(f"timeline: cannot write '{Path(path).suffix or '(no suffix)'}' files "
                        f"({path}); use .png or .svg")
    return fmt


def timeline(machine: Machine, transitions: list[Transition], functions: set[int] | None, path, *,
             title: str | None = None, force: bool = False, marks: list[Mark] = (),
             window: tuple[int, int] | None = None, patch_names: dict[int, str] | None = None) -> Path:
    """Draw the run to path (.png or .svg, by its suffix); returns the path.

    One row per task (top to bottom in task order): activations as bars
    coloured by version (legend "original", "patch 1 (NAME)", ...), nested
    ones thinner and on top so a callee shows inside its caller, each bar
    named by its function where the name fits inside it; sleeps as a thin
    grey strip at the bottom of the row; findings (marks) in red: an
    inconsistent unit as a hatched box around its stretch of the row, a
    failed assertion as a cross, each with its label; vertical lines for
    each transition moment (dotted: requested, dashed: started, solid green:
    completed, solid red: failed, dash-dot: reversed/cancelled) and, black
    dash-dot-dot, for each module moment (module_moments: "module m:
    coming", live, going, gone), moments too close to label apart sharing
    one label; stop_machine pauses shaded red.
    window (start, end) in instructions: the stretch shown (default: the
    whole run). The x axis is virtual time in seconds or milliseconds.
    Drawn on a Figure with the Agg canvas, no pyplot state. Raises
    UserError for another suffix, or if the file exists and force is False."""
    fmt = timeline_format(path)
    path = _writable(path, force)
    fig = timeline_figure(machine, transitions, functions, title=title, marks=marks, window=window,
                          patch_names=patch_names)
    try:
        with output.writing(path, replace=force, binary=True) as f:
            save_figure(fig, f, fmt, dpi=110)
    finally:
        fig.clear()
    return path


def save_figure(fig, f, fmt: str, **kwargs) -> None:
    """fig.savefig to the open file f, as the same bytes for the same
    figure: an SVG carries no date of the host's and names its clip paths
    and markers from a fixed salt, not from random ids."""
    from matplotlib import rc_context
    with rc_context({"svg.hashsalt": "lpemu"}):
        fig.savefig(f, format=fmt, metadata={"Date": None} if fmt == "svg" else None, **kwargs)


def timeline_figure(machine: Machine, transitions: list[Transition], functions: set[int] | None, *,
                    title: str | None = None, marks: list[Mark] = (), window: tuple[int, int] | None = None,
                    patch_names: dict[int, str] | None = None):
    """The drawn matplotlib Figure of timeline() (Agg canvas, no pyplot
    state); its labels are placed, so their extents can be measured."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lo, hi = window or (0, max(machine.now, 1))
    n = max(1, len(machine.tasks))
    fig = Figure(figsize=(13, max(3.0, 1.6 + 0.7 * n)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    scale, unit = _axis_scale(hi - lo, machine.seconds(1))
    spans = [s for s in activations(machine, functions) if s.end >= lo and s.start <= hi]
    _draw_spans(ax, spans, scale)
    _draw_sleeps(ax, machine, scale)
    _draw_marks(ax, marks, scale)
    groups = _draw_transitions(ax, machine, transitions, scale, (lo, hi))
    _decorate(ax, machine, {s.version for s in spans}, bool(pauses(transitions)), scale, unit, title,
              (lo, hi), patch_names or {}, {mk.kind for mk in marks if mk.end >= lo and mk.start <= hi}
              | ({"module"} if any(lo <= mo.clock <= hi for mo in module_moments(machine)) else set()))
    fig.canvas.draw()           # sizes known: place only the labels that fit and do not collide
    _label_spans(ax, spans, scale, fig.canvas.get_renderer())
    _label_moments(ax, groups, scale, fig.canvas.get_renderer())
    fig.canvas.draw()
    return fig


def _axis_scale(width: int, per_s: int) -> tuple[float, str]:
    """Axis units per instruction, and the axis label, for a window width."""
    if width >= per_s:
        return 1 / per_s, f"virtual time (s; 1 s = {per_s} instructions)"
    return 1000 / per_s, f"virtual time (ms; 1 ms = {per_s / 1000:g} instructions)"


_ROW = 0.8          # height of a depth-0 bar
_SHRINK = 0.6       # each nesting level is this much thinner


def _draw_spans(ax, spans: list[Span], scale: float) -> None:
    """Bars of the activations, one broken_barh per (depth, version, task),
    deeper ones thinner and on top."""
    groups: dict[tuple[int, int, int], list[tuple[float, float]]] = {}
    for s in spans:
        groups.setdefault((s.depth, s.version, s.task), []).append((s.start * scale, s.duration * scale))
    for (depth, version, task), bars in sorted(groups.items()):
        height = _ROW * _SHRINK ** depth
        ax.broken_barh(bars, (task - height / 2, height), facecolors=version_colour(version),
                       edgecolor="black", linewidth=0.4, zorder=2 + depth)


def _label_spans(ax, spans: list[Span], scale: float, renderer) -> None:
    """Function names inside the bars they fit in (measured in pixels), the
    innermost first; a label that would overlap one already placed is left out."""
    placed = []
    x_lo, x_hi = ax.get_xlim()
    for s in sorted(spans, key=lambda s: -s.depth):
        a, b = max(s.start * scale, x_lo), min(s.end * scale, x_hi)
        if b <= a:
            continue
        height = _ROW * _SHRINK ** s.depth
        y = s.task - height / 2 + 0.03 if s.depth == 0 else s.task
        text = ax.text((a + b) / 2, y, s.function, ha="center", va="top" if s.depth == 0 else "center",
                       fontsize=7, zorder=30, clip_on=True, gid="function")
        box = text.get_window_extent(renderer)
        left, right = (ax.transData.transform((a, 0))[0], ax.transData.transform((b, 0))[0])
        if box.width > right - left - 2 or any(box.overlaps(other) for other in placed):
            text.remove()
        else:
            placed.append(box)


def _draw_sleeps(ax, machine: Machine, scale: float) -> None:
    """A thin grey strip under each task's row while it sleeps."""
    by_task: dict[int, list[tuple[float, float]]] = {}
    for s in sleeps(machine):
        by_task.setdefault(s.task, []).append((s.start * scale, (s.end - s.start) * scale))
    for task, bars in by_task.items():
        ax.broken_barh(bars, (task + _ROW / 2 + 0.02, 0.08), facecolors="#999999", zorder=1)


def _draw_marks(ax, marks: list[Mark], scale: float) -> None:
    """Findings in red: hatched boxes for inconsistent units, crosses for
    failed assertions; the first of each row labelled under it."""
    from matplotlib.patches import Rectangle
    labelled: set[int] = set()
    for mk in marks:
        if mk.kind == "inconsistent":
            ax.add_patch(Rectangle((mk.start * scale, mk.task - 0.5), (mk.end - mk.start) * scale, 1.0,
                                   fill=False, hatch="///", edgecolor=FINDING_COLOUR, linewidth=1.5, zorder=25))
        else:
            ax.plot([mk.start * scale], [mk.task], marker="X", markersize=11, color=FINDING_COLOUR,
                    markeredgecolor="white", zorder=26, linestyle="none")
        if mk.task not in labelled:
            labelled.add(mk.task)
            ax.annotate(mk.label, (mk.start * scale, mk.task + _ROW / 2), xytext=(3, -1), textcoords="offset points",
                        va="bottom", fontsize=7, color=FINDING_COLOUR, zorder=31, clip_on=True, gid="finding",
                        bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0, "pad": 1})


def _draw_transitions(ax, machine: Machine, transitions, scale: float, window: tuple[int, int]) -> list:
    """Shaded stop_machine pauses, and one vertical line per transition
    moment and per module moment (module_moments) in the window. Returns
    the moments grouped for labels: those closer than 2% of the window
    share one."""
    for p in pauses(transitions):
        ax.axvspan(p.start * scale, p.end * scale, color=_CNAME_RGB[PAUSE_CNAME], alpha=0.25, linewidth=1,
                   zorder=0)
    lo, hi = window
    close = (hi - lo) * 0.02
    groups: list[list[Moment]] = []
    for mo in sorted([*moments(machine, transitions), *module_moments(machine)], key=lambda mo: mo.clock):
        if not lo <= mo.clock <= hi:
            continue
        if isinstance(mo, ModuleMoment):
            ax.axvline(mo.clock * scale, color=_CNAME_RGB[MODULE_CNAME], linestyle=_MODULE_STYLE, linewidth=1.2,
                       zorder=8, gid="module")
        else:
            ax.axvline(mo.clock * scale, color=_CNAME_RGB[MOMENT_CNAMES[mo.kind]], linestyle=_MOMENT_STYLE[mo.kind],
                       linewidth=1.2, zorder=8)
        if groups and mo.clock - groups[-1][0].clock <= close:
            groups[-1].append(mo)
        else:
            groups.append([mo])
    return groups


_LEVELS = 3         # rows of moment labels above the plot


def _label_moments(ax, groups: list[list[Moment]], scale: float, renderer) -> None:
    """Each group's label above the plot at its line, on the lowest of
    _LEVELS rows where it overlaps no label already placed (left out when
    none is free)."""
    placed: list = []
    for items in groups:
        for level in range(_LEVELS):
            text = ax.annotate(_moment_label(items), (items[0].clock * scale, 1.0), xycoords=("data", "axes fraction"),
                               xytext=(1, 2 + 11 * level), textcoords="offset points", va="bottom", ha="left",
                               fontsize=7, zorder=21, annotation_clip=False, gid="moment",
                               bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0, "pad": 1})
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            text.remove()


def _moment_label(items: list) -> str:
    """'p1: requested, started' (moments close together; '; ' between patches
    and modules: 'p1: requested; module m: coming')."""
    kinds: dict[str, list[str]] = {}
    for mo in items:
        kinds.setdefault(mo.subject, []).append(mo.kind)
    return "; ".join(f"{patch}: {', '.join(dict.fromkeys(k))}" for patch, k in kinds.items())


def _decorate(ax, machine: Machine, versions: set[int], paused: bool, scale: float, unit: str,
              title: str | None, window: tuple[int, int], patch_names: dict[int, str], found: set[str]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch as LegendPatch

    n = len(machine.tasks)
    ax.set_yticks(range(n), [t.name for t in machine.tasks])
    ax.set_ylim(n - 0.4, -0.6)
    ax.set_xlim(window[0] * scale, window[1] * scale)
    ax.set_xlabel(unit)
    ax.grid(axis="x", linewidth=0.3, alpha=0.5)
    handles = [LegendPatch(facecolor=version_colour(v), edgecolor="black",
                           label=version_name(v) + (f" ({patch_names[v]})" if v in patch_names else ""))
               for v in sorted(versions)]
    handles.append(LegendPatch(facecolor="#999999", label="sleep"))
    if paused:
        handles.append(LegendPatch(facecolor=_CNAME_RGB[PAUSE_CNAME], alpha=0.25, label="stop_machine"))
    if "inconsistent" in found:
        handles.append(LegendPatch(fill=False, hatch="///", edgecolor=FINDING_COLOUR, label="inconsistent unit"))
    if "assertion" in found:
        handles.append(Line2D([], [], marker="X", color=FINDING_COLOUR, linestyle="none", label="failed assertion"))
    if "module" in found:
        handles.append(Line2D([], [], color=_CNAME_RGB[MODULE_CNAME], linestyle=_MODULE_STYLE,
                              label="module coming/going"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    shown = "" if window == (0, max(machine.now, 1)) else f" (t={window[0]}..{window[1]} of {machine.now})"
    ax.set_title((title or f"lpemu {machine.name}") + shown, pad=8 + 11 * _LEVELS)


# ---- what lpemu wrote --------------------------------------------------------------
#: bytes read from each end of a file to tell what wrote it
_PEEK = 4096


def _ends(path) -> tuple[bytes, bytes]:
    """The first and the last _PEEK bytes of the regular file at path
    (b"", b"" when it cannot be read or is no regular file)."""
    try:
        # O_NONBLOCK: a fifo that came meanwhile does not hold the open (nor is it read)
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return b"", b""
            head = f.read(_PEEK)
            f.seek(max(0, os.fstat(f.fileno()).st_size - _PEEK))
            return head, f.read(_PEEK)
    except OSError:
        return b"", b""


def is_trace(path) -> bool:
    """Whether path holds a trace write_perfetto wrote: a JSON object that
    starts with its traceEvents and ends with its otherData (the clock's
    instructions per second). --trace --force replaces only such a file."""
    head, tail = _ends(path)
    return head.startswith(b'{"traceEvents":[') and b'"otherData":{' in tail and b'"instructions_per_second":' in tail


def is_drawn(path) -> bool:
    """Whether path holds a picture drawn as lpemu draws its timelines and
    plots: a PNG whose Software text, or an SVG whose metadata, names
    Matplotlib (its first _PEEK bytes). --timeline and --plot with --force
    replace only such a file."""
    head, _ = _ends(path)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return b"tEXtSoftware\x00Matplotlib" in head
    return b"<svg" in head and b"Matplotlib" in head


def _writable(path, force: bool) -> Path:
    """path as a Path; UserError if it exists and force is False."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} already exists; remove it or pass force=True (--force) to overwrite it")
    return path
