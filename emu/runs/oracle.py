"""The consistency oracle: did a task run a mix of old and new code inside
one unit of work?

A unit is one system call of a task (from kernel entry to kernel exit; for a
kthread, from one safe point to the next) or each activation of a named
function. Every entry into a patched function is in the trace with the
version that ran (0 = the original, k = the k-th patch). The system passes
through configurations (which version each function resolves to, before
and after each transition); a unit is consistent when one configuration
explains every entry in it. A unit that mixes, say, an old bar and a new
baz, is inconsistent: that is the seed's bug.

Function units end when the task's stack unwinds past the activation (a
later entry with the same or a higher rsp: returned()) or at the task's
next unit boundary (UNIT_ENDS); an untraced function that calls a traced
one after the activation returned can be misattributed, so name traced
functions. This is the one home of that rule: emu/app/report.py's spans
use it too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emu.engine import core
from emu.machine.machine import EV_EXIT, EV_KERNEL_EXIT, EV_SAFE_POINT, Machine
from emu.kernel.patch import Patch
from emu.machine.task import PATCHED


#: Events that end every unit of a task: its kernel exit, safe point, or exit.
UNIT_ENDS = (EV_KERNEL_EXIT, EV_SAFE_POINT, EV_EXIT)


def returned(entry_rsp: int, activation_rsp: int) -> bool:
    """Whether a later entry event of the same task, at entry_rsp, proves
    that an activation entered at activation_rsp has returned: the stack
    unwound past its frame (entry events carry the rsp at the fentry site)."""
    return entry_rsp >= activation_rsp


@dataclass(frozen=True)
class Entry:
    clock: int
    function: str
    version: int


@dataclass
class Inconsistency:
    task: str
    unit: str                 # "syscall #n" or "foo #n"
    start: int
    end: int
    entries: list[Entry] = field(default_factory=list)

    def __str__(self):
        runs = ", ".join(f"{e.function} v{e.version} at {e.clock}" for e in self.entries)
        return f"task {self.task}, {self.unit} (t={self.start}..{self.end}): {runs}"

    def to_json(self):
        return {"task": self.task, "unit": self.unit, "start": self.start, "end": self.end,
                "entries": [{"function": e.function, "version": e.version, "clock": e.clock}
                            for e in self.entries]}


def configurations(patches: list[Patch], transitions) -> list[dict[int, int]]:
    """Function id -> version, for every configuration the system passes through."""
    by_name = {p.name: p for p in patches}

    def resolve(enabled):
        conf: dict[int, int] = {}
        for p in enabled:
            for _, f in p.funcs():
                if f.old is not None:
                    conf[f.old.id] = 0 if f.nop else p.index
        return conf

    enabled: list[Patch] = []
    out = [resolve(enabled)]
    for t in transitions:
        p = by_name[t.patch]
        if t.target == PATCHED:
            nxt = [p] if p.replace else [q for q in enabled if q is not p] + [p]
        else:
            nxt = [q for q in enabled if q is not p]
        out.append(resolve(nxt))
        if t.result == "completed":
            enabled = nxt
    return out


def trace_units(machine: Machine, unit: str) -> None:
    """Trace every entry into the unit function (an observing op, as the
    function tracer's), whatever the patches carry: a unit nobody traces is
    a unit nobody checks. Nothing to do for "syscall" units, or while the
    unit's module is not loaded."""
    if unit != "syscall" and unit in machine.by_name:
        machine.watch(machine.function(unit))


def check(machine: Machine, patches: list[Patch], transitions, *, unit: str = "syscall",
          functions: set[int] | None = None, stats: dict | None = None) -> list[Inconsistency]:
    """Inconsistent units of a finished run (machine.trace). stats, when
    given, gets "units": how many units the run had (0: the check checked
    nothing)."""
    if functions is None:
        functions = {f.old.id for p in patches for _, f in p.funcs() if f.old is not None}
    confs = configurations(patches, transitions)
    names = {fid: machine.functions[fid].name for fid in functions}
    tasks = machine.tasks
    bad: list[Inconsistency] = []
    memo: dict[frozenset, bool] = {}     # units repeat: (function, version) sets judged once
    ends = UNIT_ENDS

    def judge(task, label, start, end, entries):
        """entries: (clock, function id, version) in order."""
        key = frozenset((fid, v) for _, fid, v in entries)
        ok = memo.get(key)
        if ok is None:
            ok = memo[key] = any(all(conf.get(fid, 0) == v for fid, v in key) for conf in confs)
        if not ok:
            bad.append(Inconsistency(tasks[task].name, label, start, end,
                                     [Entry(c, names[fid], v) for c, fid, v in entries]))

    if unit == "syscall":
        open_units: dict[int, list] = {}
        count: dict[int, int] = {}
        for clock, kind, task, a, b, c in machine.trace.records():
            if kind == core.EV_ENTRY:
                if a in functions:
                    open_units.setdefault(task, []).append((clock, a, b))
            elif kind in ends and task >= 0:
                n = count[task] = count.get(task, 0) + 1
                entries = open_units.pop(task, None)
                if entries:
                    judge(task, f"syscall #{n}", entries[0][0], clock, entries)
        for task, entries in open_units.items():
            judge(task, f"syscall #{count.get(task, 0) + 1} (unfinished)", entries[0][0], entries[-1][0], entries)
        if stats is not None:
            stats["units"] = sum(count.values()) + len(open_units)
        return bad

    target = next((f for f in machine.functions if f.name == unit), None)
    if target is None:
        raise ValueError(f"check.unit: no function '{unit}'")
    names.setdefault(target.id, target.name)
    traced = functions | {target.id}
    active: dict[int, list] = {}        # task -> [rsp, start, entries, n]
    count = {}
    for clock, kind, task, a, b, c in machine.trace.records():
        act = active.get(task)
        if kind == core.EV_ENTRY:
            if act is not None and returned(c, act[0]):
                judge(task, f"{unit} #{act[3]}", act[1], clock, act[2])
                active.pop(task)
                act = None
            if a == target.id:
                count[task] = count.get(task, 0) + 1
                act = active[task] = [c, clock, [], count[task]]
            if act is not None and a in traced:
                act[2].append((clock, a, b))
        elif kind in ends and act is not None:
            judge(task, f"{unit} #{act[3]}", act[1], clock, act[2])
            active.pop(task)
    if stats is not None:
        stats["units"] = sum(count.values())
    return bad
