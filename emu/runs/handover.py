"""Value handovers: a value produced by one version of a patched function
reaches a function of the same patch in another version, in the same task.

The seed's bug without an assertion: `foo() { f = bar(); ...; baz(f); }`,
bar v0 returns 5, the task switches, baz v1 receives the 5 it reads as
thousandths. From the trace alone: every return of a patched function
carries rax (EV_RETURN), every traced entry its six argument registers
(EV_ARGS, EV_ARGS_HI). A returned value stays live in the task until its
next unit boundary (kernel exit, safe point, exit): in between it may sit
in any register or stack slot of the caller. An entry of a patched function
whose argument equals a live value returned by a function that one patch
carries together with it, where exactly one of the two ran that patch's
version, is a handover:

    baz v1 received 5 in its 1st argument, returned by bar v0 at t=20731

What it cannot see: a value that went through memory the caller does not
pass along (the heap, a global), or was transformed on the way (`baz(f+1)`,
`baz(f*1000)`): only the very bit pattern returned is followed. Only the
argument registers the consumer's code takes count (emu/images/argregs.py:
those live at its entry), so a stale copy of the value in a register it does
not take is not an argument it received. What it may still see that is not
there: two unrelated values can be equal; the lowest matching argument
register is reported. Since the producer and the
consumer run in one unit, a handover is also an inconsistent unit
(emu/runs/oracle.py), which judges the entries of a unit, unless the
producer was entered before the unit began (a kthread's safe point inside
it: the old producer's tail then returns in a unit of new entries); it
says which value crossed. What it also misses: a kthread's safe point ends
the liveness of every value, though the frames above it survive it, so a
value returned before a safe point inside a patched function and handed
on after it (kGraft migrates the kthread there) is not followed
(tests/data/heldout/kgraft-safepoint-inside).
"""
from __future__ import annotations

from dataclasses import dataclass

from emu.engine import core
from emu.errors import BuildError
from emu.images import argregs
from emu.kernel.patch import Patch
from emu.machine.machine import EV_EXIT, EV_KERNEL_EXIT, EV_SAFE_POINT, Machine

_MASK = (1 << 64) - 1
_ORDINALS = ("1st", "2nd", "3rd", "4th", "5th", "6th")


@dataclass(frozen=True)
class Handover:
    task: str
    consumer: str
    consumer_version: int
    arg: int                  # 0-based argument register (rdi, rsi, rdx, rcx, r8, r9)
    value: int
    producer: str
    producer_version: int
    produced_at: int          # clock of the producer's return
    at: int                   # clock of the consumer's entry

    def __str__(self):
        v = self.value - (1 << 64) if self.value >> 63 else self.value
        return (f"{self.consumer} v{self.consumer_version} received {v} in its {_ORDINALS[self.arg]} argument, "
                f"returned by {self.producer} v{self.producer_version} at t={self.produced_at} "
                f"(task {self.task}, t={self.at})")

    def to_json(self) -> dict:
        return {"task": self.task, "consumer": self.consumer, "consumer_version": self.consumer_version,
                "arg": self.arg + 1, "value": self.value, "producer": self.producer,
                "producer_version": self.producer_version, "produced_at": self.produced_at, "at": self.at,
                "text": str(self)}


def carriers_of(patches: list[Patch]) -> dict[int, set[int]]:
    """Function id -> {index of each patch that carries it} (nops left out)."""
    carriers: dict[int, set[int]] = {}
    for p in patches:
        for _, f in p.funcs():
            if f.old is not None and not f.nop:
                carriers.setdefault(f.old.id, set()).add(p.index)
    return carriers


def stacking_of(patches: list[Patch]) -> set[int]:
    """The indexes of the patches that stack on older ones: a version of
    theirs runs with every older patch that carries the function applied
    below it (livepatch's func_stack, kpatch's hash, kGraft's stacking).
    An atomic replace takes the older patches off instead."""
    return {p.index for p in patches if not p.replace}


def applied(stacking, idx: int, version: int) -> bool:
    """Whether a function that ran `version` ran with patch idx applied."""
    return version == idx or (version > idx and version in stacking)


def find(machine: Machine, patches: list[Patch], *, arity: dict | None = None, fast: bool = True,
         cache: dict | None = None) -> list[Handover]:
    """Every value handover of machine's finished run, in trace order: found
    by the C core (csrc/handover.c), or with fast=False by scan(), its twin.
    arity caches which argument registers each function's code takes
    (keyed by image and address: valid for every machine of one program);
    cache is where find keeps what it derives from patches for the next
    run: a dict whoever judges many runs keeps for patches made alike (one
    per patch.definition(patches))."""
    key = "handover"
    tables = cache.get(key) if cache is not None else None
    if tables is None:
        tables = _Tables(machine, patches, {} if arity is None else arity)
        if cache is not None:
            cache[key] = tables
    if fast:
        found = tables.finder.find(machine.trace)
    else:
        found = scan(machine.trace.records(), tables.carriers, tables.regs, tables.stacking)
    if not found:
        return []
    names, tasks = tables.names, machine.tasks
    return [Handover(tasks[task].name if 0 <= task < len(tasks) else str(task), names[fid], version, k, v,
                     names[pfid], pver, pclock, clock)
            for task, clock, fid, version, k, v, pfid, pver, pclock in found]


class _Tables:
    """What find() derives from patches: which patches carry each function,
    the argument registers each version that can run takes (any other
    version: all six), the stacking patches, the carried functions' names,
    and the C core's tables of them."""

    def __init__(self, machine: Machine, patches: list[Patch], arity: dict):
        self.carriers = carriers_of(patches)
        code: dict[tuple[int, int], object] = {}     # (function id, version) -> the FunctionRef that ran
        for p in patches:
            for _, f in p.funcs():
                if f.old is not None and not f.nop:
                    code[(f.old.id, p.index)] = f.new
                    code[(f.old.id, 0)] = f.old
        taken = _Arity(machine, arity)
        self.regs = {key: taken.of(fn) for key, fn in code.items()}
        self.stacking = stacking_of(patches)
        self.names = {fid: machine.functions[fid].name for fid in self.carriers}
        self.finder = core.HandoverFinder([(fid, idx) for fid, s in self.carriers.items() for idx in s],
                                          [(fid, v, sum(1 << k for k in regs)) for (fid, v), regs in self.regs.items()],
                                          self.stacking)


def scan(records, carriers: dict[int, set[int]], regs: dict[tuple[int, int], frozenset], stacking=()) \
        -> list[tuple[int, int, int, int, int, int, int, int, int]]:
    """The handovers of records ((clock, kind, task, a, b, c) tuples) as
    (task, clock, fid, version, arg, value, producer fid, producer version,
    produced_at), in trace order: the pure-Python twin of csrc/handover.c.
    carriers: carriers_of(patches); regs: (fid, version) -> the argument
    registers (0-5) that version takes (a version not in it: all six);
    stacking: stacking_of(patches)."""
    live: dict[int, dict[int, tuple[int, int, int]]] = {}    # task -> value -> (fid, version, clock)
    pending: dict[int, tuple[int, int, int, list[int]]] = {}  # task -> entry awaiting its arguments
    out: list[tuple] = []

    def judge(task, clock, fid, version, args):
        values = live.get(task)
        if not values:
            return
        taken = regs.get((fid, version), argregs.ALL)
        for k, v in enumerate(args):
            if k not in taken:
                continue
            hit = values.get(v)
            if hit is None:
                continue
            pfid, pver, pclock = hit
            shared = carriers[fid] & carriers[pfid]
            if any(applied(stacking, idx, pver) != applied(stacking, idx, version) for idx in shared):
                out.append((task, clock, fid, version, k, v, pfid, pver, pclock))
                return

    ev_entry, ev_args, ev_args_hi, ev_return = core.EV_ENTRY, core.EV_ARGS, core.EV_ARGS_HI, core.EV_RETURN
    unit_ends = (EV_KERNEL_EXIT, EV_SAFE_POINT, EV_EXIT)
    for clock, kind, task, a, b, c in records:
        if kind == ev_entry:
            pending.pop(task, None)
            if a in carriers:
                pending[task] = (clock, a, b, [])
        elif kind == ev_args or kind == ev_args_hi:
            p = pending.get(task)
            if p is None:
                continue
            p[3].extend((a & _MASK, b & _MASK, c & _MASK))
            if kind == ev_args_hi:
                del pending[task]
                judge(task, p[0], p[1], p[2], p[3][:6])
        elif kind == ev_return:
            if a in carriers:
                live.setdefault(task, {})[c & _MASK] = (a, b, clock)
        elif kind in unit_ends:
            live.pop(task, None)
    return out


class _Arity:
    """Which argument registers a function's code takes (argregs), through
    the functions it calls, memoized in cache."""

    def __init__(self, machine: Machine, cache: dict):
        self.m, self.cache = machine, cache
        self.images = {img.name: img for img in machine.images}

    def of(self, fn) -> frozenset:
        if fn is None:
            return argregs.ALL
        key = (fn.image, fn.start)
        got = self.cache.get(key)
        if got is None:
            img = self.images.get(fn.image)
            if img is None:
                return argregs.ALL
            self.cache[key] = argregs.ALL            # while in progress: recursion takes all
            try:
                code = img.read(fn.start, fn.end - fn.start)
            except BuildError:                       # not all mapped: nothing to analyse
                return argregs.ALL
            got = argregs.live_arguments(code, fn.start, fn.end, callee=self._callee)
            self.cache[key] = got
        return got

    def _callee(self, addr: int) -> frozenset | None:
        fn = self.m.function_at(addr)
        return self.of(fn) if fn is not None and fn.start == addr else None
