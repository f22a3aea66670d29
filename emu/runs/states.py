"""Transition-relevant task states: what a transition can meet in a task.

What a transition does to a task depends on the task's state at the moments
the model looks at it: which functions are on its stack and whether it is
stopped at a scheduling point of its own (a sleep, cond_resched; asleep or
woken and not yet running again: the same place in its code), preempted at
an arbitrary instruction, or back in user mode between system calls. A state
is that pair, written as one string so that it can be stored, compared and
printed:

    stopped: user_entry > foo > something_else

the stack outermost first, as functions. A stack walk that did not reach the
task's entry frame ends in " > ?".

The stack comes from a StackSource. UnwinderStacks walks the stack with the
ORC unwinder; a source built on exact function exits (the function-graph
return stack) can replace it without changing anything else here: it only
has to name, outermost first, the functions a not-running task is inside.

Observations are made between slices, only of tasks that are not on a CPU:
a running task is met by a transition at its next stop, which is observed
then. Observing reads registers and stack memory; it changes nothing in the
run (the trace hash of an observed run is the hash of the same run
unobserved; tests/test_coverage.py holds it to that).

A task can also be met where it does not stop in a run without the patch:
at a cond_resched() it passes while nothing else is runnable on its CPU.
The kernel's cond_resched() schedules when need_resched is set, and a
transition's stopper thread (stop_machine) or kworker waiting for that CPU
sets it, so the task is off its CPU there in a run with the transition
(kernel/sched/core.c: __cond_resched -> __schedule). Passes hears each such
point (the scheduler's SR_COND_RESCHED) and names the task's state there:
the state it has once it is off its CPU there, walked with the same
StackSource.
"""
from __future__ import annotations

from typing import Protocol

from emu.engine import unwind
from emu.machine.machine import EV_KERNEL_EXIT, EV_SCHED_IN, Machine
from emu.machine.task import Kind, RunState, Task

STOPPED, PREEMPTED, USER, EXITED = "stopped", "preempted", "user", "exited"
UNRELIABLE = "?"


class StackSource(Protocol):
    def __call__(self, machine: Machine, task: Task) -> tuple[str, ...]:
        """The functions a task that is off its CPU is inside, outermost first
        (UNRELIABLE last when the walk could not reach the entry frame); ()
        when it has no kernel stack (between system calls)."""


class UnwinderStacks:
    """Stacks from the ORC unwinder (the walk livepatch's checks use)."""

    def __call__(self, machine: Machine, task: Task) -> tuple[str, ...]:
        code, entries = machine.stack(task, unwinder="orc")
        if len(entries) == 1 and machine.runtime.contains(entries[0]):
            return ()
        names = []
        for k, addr in enumerate(entries):
            # a return address may sit just past its call at a function's end
            fn = machine.function_at(addr if k == 0 else addr - 1)
            if fn is not None:
                names.append(fn.name)
            elif not machine.runtime.contains(addr):
                names.append(f"{addr:#x}")
        names.reverse()
        if code != unwind.WALK_OK:
            names.append(UNRELIABLE)
        return tuple(names)


def key(where: str, stack: tuple[str, ...]) -> str:
    return f"{where}: {' > '.join(stack)}" if stack else where


def stack_of(state: str) -> list[str]:
    """The functions of a state's stack, outermost first."""
    _, _, rest = state.partition(": ")
    return [f for f in rest.split(" > ") if f] if rest else []


def open_functions(state: str, functions: set[str]) -> list[str]:
    """Which of functions (the patched ones) are open on a state's stack."""
    return [f for f in stack_of(state) if f in functions]


def running(machine: Machine) -> set[int]:
    """Tids of the tasks on a CPU now."""
    out = set()
    for cpu in machine.cpus:
        t = cpu.current
        if t is not None:
            out.add(t.tid)
    return out


def state_of(machine: Machine, task: Task, stacks: StackSource) -> str:
    """The state of a task that is off its CPU."""
    if task.state is RunState.EXITED:
        return EXITED
    stack = stacks(machine, task)
    if not stack:
        return USER
    return key(PREEMPTED if task.state is RunState.RUNNABLE and task.preempted else STOPPED, stack)


class Observer:
    """Observes a machine's tasks between slices (observe() on every call),
    walking again only the stacks of tasks that ran since the last call
    (their EV_SCHED_IN in the trace, or on a CPU then): a task's stack
    changes only while it runs."""

    def __init__(self, machine: Machine, stacks: StackSource):
        self.m = machine
        self.stacks = stacks
        self._seen = 0                     # events of machine.trace already read
        self._known: dict[int, str] = {}   # tid -> state, while the task has not run since
        self._was_on: set[int] = set()

    def observe(self, *, skip=frozenset()) -> dict[str, str]:
        """Task name -> state, for every task (no idle task, no loader task
        of Machine.add_unborn outside its life) that is off its CPU and
        whose name is not in skip."""
        m = self.m
        m.drain()
        trace = m.trace
        if self._known and len(trace) > self._seen:     # (nothing known: nothing to forget)
            for ev in trace.of_kind(EV_SCHED_IN, self._seen):
                self._known.pop(ev[2], None)
        self._seen = len(trace)
        for tid in self._was_on:
            self._known.pop(tid, None)
        on = self._was_on = running(m)
        out = {}
        for t in m.tasks:
            if t.kind is Kind.IDLE or t.tid in on or t.name in skip:
                continue
            if t.unborn and t.state is RunState.EXITED:
                continue        # a loader task not forked yet, or gone: no task a transition meets
            st = self._known.get(t.tid)
            if st is None:
                st = self._known[t.tid] = state_of(m, t, self.stacks)
            out[t.name] = st
        return out


class _CondReschedListener:
    """A listener that hears only cond_resched() (Machine.listeners' other
    hooks do nothing)."""

    def on_kernel_exit(self, task: Task) -> None:
        pass

    def on_safe_point(self, task: Task) -> None:
        pass

    def on_idle(self, cpu, idle: Task) -> None:
        pass


class CheckedPasses(_CondReschedListener):
    """A machine listener (first in Machine.listeners, before the model's)
    that keeps the state of each task at the first cond_resched() at which a
    transition checks it on its CPU (a model whose checks_at_cond_resched:
    the task is pending there, and `active()` says a transition has begun),
    by task name in `met`. It hears only the hooks the scheduler brings
    back for pending tasks: it changes nothing in the run."""

    pending_only = True

    def __init__(self, machine: Machine, stacks: StackSource, active):
        self.m = machine
        self.stacks = stacks
        self.active = active
        self.met: dict[str, str] = {}

    def on_cond_resched(self, task: Task) -> None:
        if task.pending and task.name not in self.met and self.active():
            self.met[task.name] = state_of(self.m, task, self.stacks)


class Passes(_CondReschedListener):
    """A machine listener (Machine.listeners) that hears every cond_resched()
    a task passes on its CPU and keeps (task, state there, clock) in
    `passed`, in order; the caller takes them (take()). The scheduler comes
    back to Python at every cond_resched() for it (every_cond_resched:
    csrc/sched.c's notify_yield) and at no other switch point. It changes
    nothing in the run."""

    pending_only = True          # no hook for the pending tasks' other switch points ...
    every_cond_resched = True    # ... but every task's cond_resched()

    def __init__(self, machine: Machine, stacks: StackSource):
        self.m = machine
        self.stacks = stacks
        self.passed: list[tuple[Task, str, int]] = []
        self._seen = 0                        # events of machine.trace already read
        self._entered: dict[int, int] = {}    # tid -> its last sched-in or kernel exit
        self._passes: dict[int, tuple[int, int]] = {}    # tid -> its last two passes (-1: none)

    def take(self) -> list[tuple[Task, str, int]]:
        """The passes heard since the last call, oldest first."""
        out, self.passed = self.passed, []
        return out

    def since(self, task: Task, at: int) -> int:
        """The task's last scheduling point before its pass at `at` (the
        last one heard): when it came on its CPU, or passed a kernel exit
        or a cond_resched; -1 if none since the listener came. Kernel work
        that asks for the CPU after it finds the task at that pass first."""
        m = self.m
        m.drain()
        entered, trace = self._entered, m.trace
        # a kernel exit is a scheduling point too: kernel work that asked
        # for the CPU before it took the task there, in user mode
        for kind in (EV_SCHED_IN, EV_KERNEL_EXIT):
            for ev in trace.of_kind(kind, self._seen):
                if ev[0] > entered.get(ev[2], -1):
                    entered[ev[2]] = ev[0]
        self._seen = len(trace)
        last, prev = self._passes.get(task.tid, (-1, -1))
        return max(entered.get(task.tid, -1), prev if last >= at else last)

    def on_cond_resched(self, task: Task) -> None:
        m = self.m
        now = m.now
        self.passed.append((task, state_of(m, task, self.stacks), now))
        self._passes[task.tid] = (now, self._passes.get(task.tid, (-1, -1))[0])
