"""Tasks and CPUs of the emulated machine.

A task is a kernel thread of control with its own stack and saved CPU
context: a user task (loops: enter the kernel, run its entry function, return
to user), a kthread (never returns to user) or a CPU's idle task (runs no
guest code; it stands for the idle loop). Patch state and the pending flag
are livepatch's (`patch_state`, TIF_PATCH_PENDING); kGraft's universe flag
uses the same field.
"""
from __future__ import annotations

import operator
from enum import Enum

from emu.engine.core import PATCHED, UNDEFINED, UNPATCHED  # noqa: F401 (the patch states live in the C header)
from emu.engine.core import TaskKind, TaskRecord, TaskState

#: How a task's patch state changed, the b of its EV_PATCH_STATE event (the
#: index here): set by a transition's start or end ("init", "complete"), or
#: a task switched by one of the routes the kernels allow. The promise
#: oracle (emu/runs/promise.py) reads it; keep the codes stable.
ROUTES = ("init", "complete", "stack", "kernel_exit", "idle", "cond_resched", "force", "signal",
          "safe_point", "freezable_sleep")


#: The values a task's argument (a 64-bit register) can hold, signed or
#: unsigned: what Machine.add_task and a scenario's args accept.
INT64 = (-(1 << 63), (1 << 64) - 1)


class Kind(str, Enum):
    USER = "user"
    KTHREAD = "kthread"
    IDLE = "idle"


class RunState(str, Enum):
    RUNNABLE = "runnable"
    SLEEPING = "sleeping"
    EXITED = "exited"


_STATES = {TaskState.RUNNABLE: RunState.RUNNABLE, TaskState.SLEEPING: RunState.SLEEPING,
           TaskState.EXITED: RunState.EXITED}
_STATE_CODES = {v: int(k) for k, v in _STATES.items()}
_RUN_STATES = tuple(_STATES[TaskState(i)] for i in range(len(_STATES)))


class _Record:
    """A task's scheduling fields before the machine starts (the same names
    as core.TaskRecord, which holds them afterwards)."""

    __slots__ = TaskRecord.FIELDS

    def __init__(self, kind: int, cpu: int):
        for f in self.__slots__:
            setattr(self, f, 0)
        self.kind, self.cpu, self.wake_at, self.interruptible = kind, cpu, -1, 1


def _field(name: str, conv=int, doc: str = ""):
    name = name.lower()
    get = operator.attrgetter("_r." + name)

    def getter(self):
        return conv(get(self))

    def setter(self, value):
        setattr(self._r, name, int(value))
    return property(getter, setter, doc=doc)


class Task:
    """A task: identity and stack in attributes, scheduling state in its
    record of the scheduler's state (core.TaskRecord once the machine has
    started, a _Record of the same fields before)."""

    def __init__(self, tid: int, name: str, kind: Kind, cpu: int, entry: str | None = None,
                 args: tuple[int, ...] = ()):
        self.tid = tid                # index of the saved context in the C core (-1 - cpu for idle tasks)
        self.name = name
        self.kind = kind
        self.cpu = cpu                # the CPU whose run queue holds the task
        self.entry = entry
        self.entry_addr = 0           # address of the entry function
        self.args = args
        self.stack_lo = self.stack_hi = 0
        self.end_ret = 0              # return address of the entry frame
        self.end_slot = 0             # where that return address sits
        self.patch_state = UNDEFINED
        self.unborn = False           # a loader task of Machine.add_unborn: exists from fork() on
        self._r: "_Record | TaskRecord" = _Record(TaskKind.KTHREAD if kind is Kind.KTHREAD else TaskKind.USER, cpu)
        self._live = None             # the scheduler state, whose count of live tasks this one is in

    def bind(self, record: TaskRecord, sched=None) -> None:
        """Move the scheduling fields into the scheduler's record; a task
        (not an idle task) is then counted in sched.live."""
        for f in TaskRecord.FIELDS:
            setattr(record, f, getattr(self._r, f))
        self._r = record
        self._live = None if self.is_idle else sched

    @property
    def state(self) -> RunState:
        return _RUN_STATES[self._r.state]

    @state.setter
    def state(self, value: RunState) -> None:
        new = _STATE_CODES[RunState(value)]
        old = self._r.state
        if self._live is not None:
            exited = TaskState.EXITED
            self._live.live += (old == exited) - (new == exited)
        self._r.state = new

    @property
    def wake_at(self) -> int | None:
        """Virtual time of the wake-up, None = until woken."""
        w = self._r.wake_at
        return None if w < 0 else w

    @wake_at.setter
    def wake_at(self, value: int | None) -> None:
        self._r.wake_at = -1 if value is None else value

    @property
    def exit_code(self) -> int | None:
        return self._r.exit_code if self._r.exited else None

    @exit_code.setter
    def exit_code(self, value: int | None) -> None:
        self._r.exited = value is not None
        self._r.exit_code = value or 0

    interruptible = _field("INTERRUPTIBLE", bool)
    preempted = _field("PREEMPTED", bool, "stopped at an arbitrary instruction, not at a switch point")
    need_resched = _field("NEED_RESCHED", bool)
    pending = _field("NOTIFY", bool, "TIF_PATCH_PENDING: its switch points go to the models")
    kernel_entries = _field("KERNEL_ENTRIES", doc="how many times it entered the kernel (units of the oracle)")
    since_schedule = _field("SINCE", doc="instructions since the last scheduling point (soft lockup)")

    @property
    def is_idle(self) -> bool:
        return self.kind is Kind.IDLE

    def __repr__(self) -> str:
        return f"<Task {self.tid} {self.name} {self.kind.value} {self.state.value}>"



class Cpu:
    """A CPU: its idle task, and (in the scheduler's state once the machine
    starts) the task it runs, its run queue and its slice count."""

    def __init__(self, index: int, idle: Task):
        self.index = index
        self.idle = idle
        self._tasks: list[Task] = []
        self._queue: list[Task] = []    # before the machine starts
        self._r = None                  # its core.CpuRecord, once bound

    def enqueue(self, task: Task) -> None:
        """Put a task on the run queue (before the machine starts)."""
        if self._r is not None:
            raise RuntimeError("the run queue is the scheduler's once the machine has started")
        self._queue.append(task)

    def bind(self, record, tasks: list[Task]) -> None:
        """Move the run queue into the scheduler's record for this CPU."""
        self._tasks = tasks
        record.current = -1
        record.queue = [t.tid for t in self._queue]
        self._r = record

    def requeue(self, task: Task) -> None:
        """Put a task born (Machine.fork) at the end of the run queue."""
        if self._r is None:
            self._queue.append(task)
        elif task.tid not in self._r.queue:
            self._r.queue = [*self._r.queue, task.tid]

    @property
    def current(self) -> Task | None:
        """The task the CPU runs (None: idle)."""
        if self._r is None:
            return None
        tid = self._r.current
        return None if tid < 0 else self._tasks[tid]

    @property
    def runqueue(self) -> list[Task]:
        """The run queue in order (a copy)."""
        if self._r is None:
            return list(self._queue)
        return [self._tasks[t] for t in self._r.queue]

    @property
    def slices(self) -> int:
        """Slices ended, for sync."""
        return 0 if self._r is None else self._r.slices
