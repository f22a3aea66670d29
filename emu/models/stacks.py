"""The stack checks the consistency models make of many tasks at once:
each task's stack walked (or, for Ksplice, scanned) and searched for the
code that must not be on it.

One check covers every task of the machine, in machine.tasks order, in one
call into the C core (emu_check_stacks, csrc/stacks.c); a model reads the
results of the tasks it asks about and ignores the others. The tasks are
packed once per machine: their preempted flags are read from the
scheduler's state at each check. With accel "python" each task goes through
the Python twin (emu.engine.unwind.check_stack) instead, with the same
results.

What must agree with this module: a walk here returns what Machine.stack
returns for the task (just the rip for a task between kernel entries: the
runtime is the `empty` range), and `lpemu bench` times this very path for
its unwind_ratio (emu/app/bench/stacks.py).
"""
from __future__ import annotations

from emu.engine import core, unwind


class TwinResults:
    """The Python twin's results, read as core.StackResults are: failed,
    failing(), and each task's unwind.StackCheck by index."""

    def __init__(self, checks: list[unwind.StackCheck], reliable: bool):
        self.checks = checks
        self.reliable = reliable
        self.failed = sum(not passed(c, reliable) for c in checks)

    def failing(self) -> list[int]:
        return [i for i, c in enumerate(self.checks) if not passed(c, self.reliable)]

    def __len__(self) -> int:
        return len(self.checks)

    def __getitem__(self, i: int) -> unwind.StackCheck:
        return self.checks[i]


def passed(check: unwind.StackCheck, reliable: bool) -> bool:
    """Whether one task's check passes, by emu_check_stacks's rule: no entry
    in a checked range, a walk not too deep and (reliable) a reliable one."""
    return check.hit < 0 and check.code >= 0 and check.code != unwind.WALK_TOO_DEEP \
        and not (reliable and check.code != unwind.WALK_OK)


class StackChecks:
    """The stack checks of one machine's tasks (the machine must have
    started: its tasks have their stacks then)."""

    def __init__(self, machine):
        self.m = machine
        self._tasks: core.StackTasks | None = None
        self._checkers: dict[tuple, tuple] = {}      # (kind, max_entries, reliable) -> (text, checker)
        self._ranges: dict[tuple, core.Ranges] = {}

    def check(self, ranges, *, kind: str, max_entries: int, reliable: bool, accel: str | None = None):
        """Check every task of the machine against ranges ((start, end)
        pairs, a tuple) -> results indexed like machine.tasks: failed (how
        many tasks failed), failing() (their indices), results[i] (task i's
        unwind.StackCheck). kind: "fp", "orc" or "scan". accel (default the
        machine's): "c" for one C call, "python" for the twin."""
        m = self.m
        if (accel or m.accel) == "python":
            return self._twin(ranges, kind, max_entries, reliable)
        # The models check at every retry: what stays the same is prepared once.
        prepared = self._checkers.get((kind, max_entries, reliable))
        if prepared is None or prepared[0] is not m.text_ranges:    # a module was loaded: new text, new ORC
            prepared = self._prepare(kind, max_entries, reliable)
        checked = self._ranges.get(ranges)
        if checked is None:
            checked = self._checked(ranges)
        return prepared[1].check(prepared[2], checked)

    def _prepare(self, kind: str, max_entries: int, reliable: bool) -> tuple:
        m = self.m
        if self._tasks is None:
            self._tasks = core.StackTasks([(t.tid, None, t.stack_lo, t.stack_hi, t.end_ret, t.end_slot)
                                           for t in m.tasks])
        checker = m.engine.stack_checker(kind, m.text_ranges, orc=m.orc_arrays, empty=self._empty(),
                                         regs=m.runtime.regs, max_entries=max_entries, reliable=reliable)
        prepared = self._checkers[(kind, max_entries, reliable)] = (m.text_ranges, checker, self._tasks)
        return prepared

    def _checked(self, ranges) -> core.Ranges:
        if len(self._ranges) > 64:
            self._ranges.clear()
        checked = self._ranges[ranges] = core.Ranges(ranges)
        return checked

    def _empty(self) -> tuple[int, int]:
        """The task loops of the runtime: a task there is between kernel
        entries. (Not the whole page: a task at the ftrace trampoline is in
        a traced function's call, and its walk goes on from there.)"""
        return self.m.runtime.empty

    def _twin(self, ranges, kind: str, max_entries: int, reliable: bool) -> TwinResults:
        m = self.m
        empty = self._empty()
        checked = core.Ranges(ranges).ranges
        out = []
        for t in m.tasks:
            rip, rsp, rbp = m.regs(t)
            mem = bytes(m.engine.view(t.stack_lo, t.stack_hi - t.stack_lo))
            graph = m.engine.graph_of(t.tid)
            out.append(unwind.check_stack(mem, t.stack_lo, t.stack_hi, m.text_ranges.ranges, rip, rsp, rbp,
                                          kind=kind, orc_ips=m.orc.ips, orc_entries=m.orc.entries,
                                          preempted=t.preempted, max_entries=max_entries, end_ret=t.end_ret,
                                          end_slot=t.end_slot, empty=empty, regs=m.runtime.regs,
                                          check=checked, graph=(graph.ret, bytes(graph.data))))
        return TwinResults(out, reliable)
