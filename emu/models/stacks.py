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
    started: its tasks have their stacks then). What stays the same from
    check to check, and from run to run of a pooled machine, is prepared
    once and kept by the machine (Machine.walkers)."""

    def __init__(self, machine):
        self.m = machine

    def check(self, ranges, *, kind: str, max_entries: int, reliable: bool, accel: str | None = None):
        """Check every task of the machine against ranges ((start, end)
        pairs, a tuple) -> results indexed like machine.tasks: failed (how
        many tasks failed), failing() (their indices), results[i] (task i's
        unwind.StackCheck). kind: "fp", "orc" or "scan". accel (default the
        machine's): "c" for one C call, "python" for the twin."""
        m = self.m
        if (accel or m.accel) == "python":
            return self._twin(ranges, kind, max_entries, reliable)
        checker, tasks = m.walkers.checker(kind, max_entries, reliable)
        return checker.check(tasks, m.walkers.ranges(ranges))

    def _twin(self, ranges, kind: str, max_entries: int, reliable: bool) -> TwinResults:
        m = self.m
        # the task loops of the runtime: a task there is between kernel entries
        # (not the whole page: a task at the ftrace trampoline is in a traced
        # function's call, and its walk goes on from there)
        empty = m.runtime.empty
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
