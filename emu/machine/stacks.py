"""A machine's task stacks: a stopped task's registers, walking its stack
(ORC or frame pointers, in C or in the Python twins of emu/engine/unwind.py),
Ksplice's conservative scan, and backtraces for people."""
from __future__ import annotations

from unicorn.x86_const import UC_X86_REG_RBP, UC_X86_REG_RIP, UC_X86_REG_RSP

from emu.engine import core, unwind
from emu.machine.task import RunState, Task


def regs(m, task: Task) -> tuple[int, int, int]:
    """(rip, rsp, rbp) of a task that is not running."""
    m.engine.switch(task.tid)
    uc = m.engine.uc
    return uc.reg_read(UC_X86_REG_RIP), uc.reg_read(UC_X86_REG_RSP), uc.reg_read(UC_X86_REG_RBP)


def walk(m, task: Task, *, unwinder: str | None = None, max_entries: int = 100,
         accel: str | None = None) -> tuple[int, tuple[int, ...]]:
    """Walk a task's stack: (unwind.WALK_* code, return addresses with the
    current RIP first). A task in its runtime loop (between kernel entries)
    has an empty kernel stack: reliable, just its RIP. Elsewhere in the
    runtime page the walk follows its unwind information (emu/machine/
    runtime.py): a task in the ftrace trampoline is at a register frame
    (unreliable to frame pointers), diverted return addresses are read
    back from the task's return stack. With accel "c" it is one C call
    (Walkers); the Python twins of emu/engine/unwind.py otherwise."""
    if task.is_idle or task.state is RunState.EXITED:
        return unwind.WALK_OK, ()
    kind = unwinder or m.unwinder
    if (accel or m.accel) == "c":
        return m.walkers.get(kind, max_entries).walk(task.tid, task.stack_lo, task.stack_hi,
                                                     preempted=task.preempted, end_ret=task.end_ret,
                                                     end_slot=task.end_slot)
    rip, rsp, rbp = regs(m, task)
    rt = m.runtime
    if rt.empty[0] <= rip < rt.empty[1]:
        return unwind.WALK_OK, (rip,)
    lo, hi = task.stack_lo, task.stack_hi
    sym = m.symbols
    preempted = task.preempted or rt.regs[0] <= rip < rt.regs[1]
    graph = m.engine.graph_of(task.tid)
    mem = bytes(m.engine.view(lo, hi - lo))
    text = list(sym.text_ranges.ranges)
    pygraph = (graph.ret, bytes(graph.data))
    if kind == "fp":
        return unwind.walk_fp(mem, lo, hi, text, rip, rsp, rbp, preempted=preempted,
                              max_entries=max_entries, end_ret=task.end_ret, end_slot=task.end_slot,
                              graph=pygraph)
    if kind != "orc":
        raise ValueError(f"unknown unwinder {kind!r}")
    return unwind.walk_orc(mem, lo, hi, text, sym.orc.ips, sym.orc.entries, rip, rsp, rbp,
                           preempted=preempted, max_entries=max_entries, end_ret=task.end_ret,
                           end_slot=task.end_slot, graph=pygraph)


class Walkers:
    """A machine's prepared C walks (core.TaskWalker: the task's registers
    read in C, no switch), one per unwinder and depth, and its prepared
    checks of every task's stack at once (core.StackChecker, the models'
    batched checks: emu/models/stacks.py), made again when a module's load
    brings new text and ORC tables. Kept by the machine, so that the models
    made anew for each run of a pooled machine find them made."""

    def __init__(self, m):
        self.m = m
        self._made: dict[tuple[str, int], tuple] = {}   # (kind, max_entries) -> (text, orc, walker)
        self._checkers: dict[tuple, tuple] = {}          # (kind, max_entries, reliable) -> (text, orc, checker)
        self._tasks: core.StackTasks | None = None
        self._ranges: dict[tuple, core.Ranges] = {}

    def checker(self, kind: str, max_entries: int, reliable: bool) -> tuple[core.StackChecker, core.StackTasks]:
        """The prepared check of every task's stack (kind "fp", "orc" or
        "scan"), and the machine's tasks packed for it (machine.tasks order;
        their preempted flags read from the scheduler's state at each check).
        The machine must have started: its tasks have their stacks then."""
        m, sym = self.m, self.m.symbols
        if self._tasks is None:
            self._tasks = core.StackTasks([(t.tid, None, t.stack_lo, t.stack_hi, t.end_ret, t.end_slot)
                                           for t in m.tasks])
        made = self._checkers.get((kind, max_entries, reliable))
        if made is None or made[0] is not sym.text_ranges or made[1] is not sym.orc_arrays:
            rt = m.runtime
            checker = m.engine.stack_checker(kind, sym.text_ranges, orc=sym.orc_arrays, empty=rt.empty,
                                             regs=rt.regs, max_entries=max_entries, reliable=reliable)
            made = self._checkers[(kind, max_entries, reliable)] = (sym.text_ranges, sym.orc_arrays, checker)
        return made[2], self._tasks

    def ranges(self, ranges: tuple) -> core.Ranges:
        """ranges ((start, end) pairs, a tuple) prepared for the checks (at
        most 64 kept)."""
        checked = self._ranges.get(ranges)
        if checked is None:
            if len(self._ranges) > 64:
                self._ranges.clear()
            checked = self._ranges[ranges] = core.Ranges(ranges)
        return checked

    def get(self, kind: str, max_entries: int) -> core.TaskWalker:
        sym = self.m.symbols
        made = self._made.get((kind, max_entries))
        if made is None or made[0] is not sym.text_ranges or made[1] is not sym.orc_arrays:
            rt = self.m.runtime
            walker = self.m.engine.task_walker(kind, sym.text_ranges, orc=sym.orc_arrays, empty=rt.empty,
                                               regs=rt.regs, max_entries=max_entries)
            made = self._made[(kind, max_entries)] = (sym.text_ranges, sym.orc_arrays, walker)
        return made[2]


def scan(m, task: Task, ranges) -> tuple[int, int, tuple[int, int] | None]:
    """Ksplice's conservative check: (rip, rsp, (address, value) of the
    first stack word above rsp that lies in one of ranges, or None)."""
    rip, rsp, _ = regs(m, task)
    lo, hi = task.stack_lo, task.stack_hi
    mem = bytes(m.engine.view(lo, hi - lo))
    graph = m.engine.graph_of(task.tid)
    if m.accel == "c":
        hit = core.stack_scan(mem, lo, hi, rsp, core.Ranges(ranges), graph)
    else:
        hit = unwind.stack_scan(mem, lo, hi, rsp, sorted(core.Ranges(ranges).ranges),
                                graph=(graph.ret, bytes(graph.data)))
    return rip, rsp, hit


def backtrace(m, task: Task) -> list[str]:
    code, entries = walk(m, task, unwinder="orc")
    lines = [m.symbols.symbolize(a) for a in entries]
    if code != unwind.WALK_OK:
        lines.append(f"(unreliable: {unwind.REASONS.get(code, code)})")
    return lines


def fault_backtrace(m, task: Task, rip: int) -> list[str]:
    """The backtrace of a task stopped at an arbitrary instruction (a fault),
    saying where the walk ended if it did not end well."""
    m.engine.switch(task.tid)
    uc = m.engine.uc
    rsp, rbp = uc.reg_read(UC_X86_REG_RSP), uc.reg_read(UC_X86_REG_RBP)
    lo, hi = task.stack_lo, task.stack_hi
    sym = m.symbols
    if not lo <= rsp <= hi:
        return [f"{sym.symbolize(rip)}", f"(rsp {rsp:#x} is outside the stack {lo:#x}-{hi:#x})"]
    code, entries = m.engine.walk("orc", lo, hi, sym.text_ranges, rip, rsp, rbp, preempted=True,
                                  max_entries=64, end_ret=task.end_ret, end_slot=task.end_slot,
                                  orc=sym.orc_arrays, graph=m.engine.graph_of(task.tid))
    out = [sym.symbolize(a) for a in entries] or [sym.symbolize(rip)]
    if code != unwind.WALK_OK:
        out.append(f"(walk ended: {unwind.REASONS.get(code, code)})")
    return out
