"""The function tracer (kernel/trace/trace_functions.c) as tracefs drives it:
`current_tracer` = function with `set_ftrace_filter` naming functions
registers an ftrace ops without IPMODIFY on them, so it coexists with a live
patch on the same function: ftrace calls every ops of a site, the tracer's
records the call, livepatch's changes the IP (test-ftrace.sh checks both
orders). `tracing_on` gates the ring buffer; writing `trace` empties it.

What the tracer recorded is derived from the machine's trace: every entry
into a filtered function (EV_ENTRY) at a time when ftrace called the
tracer's handler (its ops' windows, emu/kernel/ftrace.py: registered and
ftrace_enabled on) and tracing was on. A function reached through a live
patch's redirect is entered at its first byte, its own fentry site
included, so tracing a patch's new function records the calls that the
patch sends there.

The lines read as the trace file with the `noprint-parent` option:
`<task>-<tid> [<cpu>] <seconds>: <function>`; a task's tid stands for its pid.

The filter is set before the tracer is switched on (the end state of
functions.sh's `echo function > current_tracer; echo f > set_ftrace_filter`,
without its moment of tracing every function in between).
"""
from __future__ import annotations

from emu.engine import core
from emu.errors import StateError, check_type
from emu.kernel.ftrace import Ftrace, Ops
from emu.machine.machine import FunctionRef, Machine


class FunctionTracer:
    def __init__(self, machine: Machine, ftrace: Ftrace):
        check_type(machine, Machine, "FunctionTracer: machine")
        check_type(ftrace, Ftrace, "FunctionTracer: ftrace")
        self.m = machine
        self.ftrace = ftrace
        self.ops: Ops | None = None
        self.on: list[list] = []        # tracing_on windows [start, end)
        self.cleared_at = 0

    @property
    def current_tracer(self) -> str:
        return "nop" if self.ops is None else "function"

    def start(self, functions: list[FunctionRef]):
        """echo function > current_tracer (filtered on functions); echo 1 >
        tracing_on. Raises UserError/PatchError for a function without a
        fentry site (as set_ftrace_filter refuses it). Returns the
        text-update generator. StateError (nothing changed) while it is the
        current tracer already: stop() it first."""
        if self.ops is not None:
            raise StateError("function tracer start: it is the current tracer already (stop() it first)")
        self.stop_tracing()
        ops = Ops("function")
        update = self.ftrace.register(ops, functions)
        self.ops = ops
        self.on.append([self.m.now, None])
        return update

    def stop_tracing(self) -> None:
        """echo 0 > tracing_on"""
        if self.on and self.on[-1][1] is None:
            self.on[-1][1] = self.m.now

    def stop(self):
        """echo 0 > tracing_on; echo nop > current_tracer. Returns the
        text-update generator."""
        self.stop_tracing()
        ops, self.ops = self.ops, None
        return _nothing() if ops is None else self.ftrace.unregister(ops)

    def clear(self) -> None:
        """echo '' > trace"""
        self.cleared_at = self.m.now

    def trace(self) -> list[str]:
        """The trace file's lines (noprint-parent), oldest first."""
        ops = self.ops
        if ops is None:
            return []
        self.m.drain()
        lines = []
        for e in self.m.trace:
            if e.kind != core.EV_ENTRY or e.a not in ops.functions or e.clock < self.cleared_at:
                continue
            if not (ops.called_at(e.clock) and _within(self.on, e.clock)):
                continue
            task = self.m.tasks[e.task] if 0 <= e.task < len(self.m.tasks) else None
            who = f"{task.name}-{task.tid}" if task is not None else "<idle>-0"
            cpu = task.cpu if task is not None else 0
            secs = e.clock / self.m.seconds(1)
            lines.append(f"{who:>16} [{cpu:03d}] {secs:12.6f}: {self.m.functions[e.a].name}")
        return lines


def _nothing():
    """A text update with nothing to change."""
    return
    yield


def _within(windows, clock: int) -> bool:
    return any(start <= clock and (end is None or clock < end) for start, end in windows)
