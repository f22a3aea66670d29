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

Function units are activations of the named function, which end where
the function returns: its EV_RETURN, or its EV_UNWOUND when a stack switch
left it (the function exits, csrc/emu.h). activations() is the one home of
that rule (emu/app/report.py draws its spans with it). An activation whose
return the full return stack left untraced (EV_RET_UNTRACED) ends at the
first proof that it returned: a later entry of the task at the same or a
higher rsp, the return of a function that called it, or the task's kernel
exit or exit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from emu.engine import core
from emu.machine.machine import EV_EXIT, EV_KERNEL_EXIT, EV_SAFE_POINT, Machine
from emu.kernel.patch import Patch
from emu.machine.task import PATCHED, Kind


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
    unit: str                 # "syscall #n", a kthread's "safe-point round #n", or "foo #n"
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
          functions: set[int] | None = None, stats: dict | None = None, fast: bool = True,
          cache: dict | None = None) -> list[Inconsistency]:
    """Inconsistent units of a finished run (machine.trace). stats, when
    given, gets "units": how many units the run had (0: the check checked
    nothing). System-call units are judged by the C core (csrc/units.c), or
    with fast=False by scan_syscall_units(), its twin. cache is where check
    keeps what it derives from the patches and transitions for the next
    run with the same transitions' patches, targets and completions: a
    dict whoever judges many runs keeps for patches made alike (one per
    patch.definition(patches))."""
    key = ("units", tuple((t.patch, t.target, t.result == "completed") for t in transitions),
           None if functions is None else frozenset(functions))
    tables = cache.get(key) if cache is not None else None
    if tables is None:
        tables = _Tables(machine, patches, transitions, functions)
        if cache is not None:
            cache[key] = tables
    functions, confs, names = tables.functions, tables.confs, tables.names
    tasks = machine.tasks
    bad: list[Inconsistency] = []
    memo: dict[frozenset, bool] = {}     # units repeat: (function, version) sets judged once

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
        if fast:
            units, found = tables.checker.check(machine.trace)
        else:
            units, found = scan_syscall_units(machine.trace.records(), functions, confs)
        for task, n, unfinished, start, end, entries in found:
            # a kthread never enters or leaves the kernel: its unit runs from
            # safe point to safe point, and is named so
            what = "safe-point round" if tasks[task].kind is Kind.KTHREAD else "syscall"
            label = f"{what} #{n} (unfinished)" if unfinished else f"{what} #{n}"
            bad.append(Inconsistency(tasks[task].name, label, start, end,
                                     [Entry(c, names[fid], v) for c, fid, v in entries]))
        if stats is not None:
            stats["units"] = units
        return bad

    # "f" or a module's "module:f" (found even after the module went)
    obj, _, fname = unit.rpartition(":")
    target = next((f for f in machine.functions if f.name == fname and (not obj or f.image == obj)), None)
    if target is None:
        raise ValueError(f"check.unit: no function '{unit}'")
    names = {**names, target.id: names.get(target.id, target.name)}
    traced = functions | {target.id}
    records = machine.trace.records()
    count: dict[int, int] = {}
    for act in activations(machine.trace, machine.now):
        if act.function != target.id:
            continue
        n = count[act.task] = count.get(act.task, 0) + 1
        if not act.finished:
            continue
        entries = [(clock, a, b) for clock, kind, task, a, b, _ in records[act.entry:act.exit]
                   if kind == core.EV_ENTRY and task == act.task and a in traced]
        judge(act.task, f"{unit} #{n}", act.start, act.end, entries)
    if stats is not None:
        stats["units"] = sum(count.values())
    return bad


class _Tables:
    """What check() derives from the patches and transitions: the checked
    functions, every configuration, the functions' names, and (made when
    first needed) the C core's tables of them."""

    def __init__(self, machine: Machine, patches: list[Patch], transitions, functions: set[int] | None):
        if functions is None:
            functions = {f.old.id for p in patches for _, f in p.funcs() if f.old is not None}
        self.functions = functions
        self.confs = configurations(patches, transitions)
        self.names = {fid: machine.functions[fid].name for fid in functions}

    @cached_property
    def checker(self) -> core.UnitsChecker:
        return core.UnitsChecker(self.functions, self.confs)


def scan_syscall_units(records, functions: set[int], confs: list[dict[int, int]]) -> tuple[int, list[tuple]]:
    """The system-call units of records ((clock, kind, task, a, b, c)
    tuples) that no configuration of confs explains: (how many units there
    are, [(task, number, unfinished, start, end, [(clock, fid, version)])]),
    finished units in the order they end, then the unfinished ones in the
    order they began. The pure-Python twin of csrc/units.c."""
    memo: dict[frozenset, bool] = {}     # units repeat: (function, version) sets judged once
    bad: list[tuple] = []

    def judge(task, n, unfinished, start, end, entries):
        key = frozenset((fid, v) for _, fid, v in entries)
        ok = memo.get(key)
        if ok is None:
            ok = memo[key] = any(all(conf.get(fid, 0) == v for fid, v in key) for conf in confs)
        if not ok:
            bad.append((task, n, unfinished, start, end, entries))

    open_units: dict[int, list] = {}
    count: dict[int, int] = {}
    ev_entry, ends = core.EV_ENTRY, UNIT_ENDS
    for clock, kind, task, a, b, c in records:
        if kind == ev_entry:
            if a in functions:
                open_units.setdefault(task, []).append((clock, a, b))
        elif kind in ends and task >= 0:
            n = count[task] = count.get(task, 0) + 1
            entries = open_units.pop(task, None)
            if entries:
                judge(task, n, False, entries[0][0], clock, entries)
    for task, entries in open_units.items():
        judge(task, count.get(task, 0) + 1, True, entries[0][0], entries[-1][0], entries)
    return sum(count.values()) + len(open_units), bad


@dataclass(frozen=True)
class Activation:
    """One activation of a traced function by a task: entry and exit are
    indices into the trace (the entry event; the event that ended it, or
    len(trace) when the trace ended first), start and end their clocks."""
    task: int
    function: int
    version: int
    rsp: int
    start: int
    end: int
    entry: int
    exit: int
    finished: bool = True


def activations(trace, now: int) -> list[Activation]:
    """Every activation in trace (a machine's core.EventLog; now: its end
    clock), ended by the rule in the module docstring, in the order of their
    entries."""
    out: list[Activation] = []
    open_: dict[int, list[list]] = {}    # task -> [[fid, version, rsp, start, index, exit traced]]

    def close(task, fr, end, index, finished=True):
        fid, version, rsp, start, entry, _ = fr
        out.append(Activation(task, fid, version, rsp, start, end, entry, index, finished))

    records = trace.records()
    for i, (clock, kind, task, a, b, c) in enumerate(records):
        if kind == core.EV_ENTRY:
            stack = open_.setdefault(task, [])
            while stack and not stack[-1][5] and c >= stack[-1][2]:
                close(task, stack.pop(), clock, i)
            stack.append([a, b, c, clock, i, True])
        elif kind == core.EV_RET_UNTRACED:
            stack = open_.get(task)
            if stack:
                stack[-1][5] = False
        elif kind == core.EV_RETURN or kind == core.EV_UNWOUND:
            stack = open_.get(task)
            while stack and not stack[-1][5]:       # deeper calls with untraced returns are over
                close(task, stack.pop(), clock, i)
            if stack:
                close(task, stack.pop(), clock, i)
        elif kind == EV_KERNEL_EXIT or kind == EV_EXIT:
            stack = open_.get(task)
            while stack:
                close(task, stack.pop(), clock, i)
    for task, stack in open_.items():
        while stack:
            close(task, stack.pop(), now, len(records), finished=False)
    out.sort(key=lambda x: x.entry)
    return out
