"""Tasks and CPUs of the emulated machine.

A task is a kernel thread of control with its own stack and saved CPU
context: a user task (loops: enter the kernel, run its entry function, return
to user), a kthread (never returns to user) or a CPU's idle task (runs no
guest code; it stands for the idle loop). Patch state and the pending flag
are livepatch's (`patch_state`, TIF_PATCH_PENDING); kGraft's universe flag
uses the same field.
"""
from __future__ import annotations

from enum import Enum

from emu.engine.core import PATCHED, SCHED, UNDEFINED, UNPATCHED  # noqa: F401 (the patch states live in the C header)



class Kind(str, Enum):
    USER = "user"
    KTHREAD = "kthread"
    IDLE = "idle"


class RunState(str, Enum):
    RUNNABLE = "runnable"
    SLEEPING = "sleeping"
    EXITED = "exited"


# Scheduling fields live in the scheduler's shared state (csrc/emu.h) once
# the machine starts; before that, in a list of the same layout.
_F = {k: v for k, v in SCHED.items() if k.startswith("TF_")}
_NTF = SCHED["TF_COUNT"]
_STATES = {SCHED["TS_RUNNABLE"]: "runnable", SCHED["TS_SLEEPING"]: "sleeping", SCHED["TS_EXITED"]: "exited"}
_LIVE = SCHED["SG_LIVE"]


def _field(name: str, conv=int, doc: str = ""):
    k = _F["TF_" + name]

    def get(self):
        return conv(self._s[self._o + k])

    def set(self, value):
        self._s[self._o + k] = int(value)
    return property(get, set, doc=doc)


class Task:
    """A task: identity and stack in attributes, scheduling state in the
    scheduler's shared array (see _field)."""

    def __init__(self, tid: int, name: str, kind: Kind, cpu: int, entry: str | None = None,
                 args: tuple[int, ...] = ()):
        self.tid = tid                # index of the saved context in the C core (-1 - cpu for idle tasks)
        self.name = name
        self.kind = kind
        self.cpu = cpu                # the CPU whose run queue holds the task
        self.entry = entry
        self.args = args
        self.stack_lo = self.stack_hi = 0
        self.end_ret = 0              # return address of the entry frame
        self.end_slot = 0             # where that return address sits
        self.patch_state = UNDEFINED
        self.extra: dict = {}
        self._s: "list | memoryview" = [0] * _NTF
        self._o = 0
        self._s[_F["TF_KIND"]] = SCHED["TK_KTHREAD"] if kind is Kind.KTHREAD else SCHED["TK_USER"]
        self._s[_F["TF_CPU"]] = cpu
        self._s[_F["TF_WAKE_AT"]] = -1
        self._s[_F["TF_INTERRUPTIBLE"]] = 1

    def bind(self, state: memoryview, offset: int) -> None:
        """Move the scheduling fields into the shared state at offset."""
        for k in range(_NTF):
            state[offset + k] = self._s[self._o + k]
        self._s, self._o = state, offset

    @property
    def state(self) -> RunState:
        return RunState(_STATES[self._s[self._o]])

    @state.setter
    def state(self, value: RunState) -> None:
        new = _STATE_CODES[RunState(value)]
        old = self._s[self._o]
        if isinstance(self._s, memoryview) and not self.is_idle:
            exited = SCHED["TS_EXITED"]
            self._s[_LIVE] += (old == exited) - (new == exited)
        self._s[self._o] = new

    @property
    def wake_at(self) -> int | None:
        """Virtual time of the wake-up, None = until woken."""
        w = self._s[self._o + _F["TF_WAKE_AT"]]
        return None if w < 0 else w

    @wake_at.setter
    def wake_at(self, value: int | None) -> None:
        self._s[self._o + _F["TF_WAKE_AT"]] = -1 if value is None else value

    @property
    def exit_code(self) -> int | None:
        return self._s[self._o + _F["TF_EXIT_CODE"]] if self._s[self._o + _F["TF_EXITED"]] else None

    @exit_code.setter
    def exit_code(self, value: int | None) -> None:
        self._s[self._o + _F["TF_EXITED"]] = value is not None
        self._s[self._o + _F["TF_EXIT_CODE"]] = value or 0

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


_STATE_CODES = {RunState(v): k for k, v in _STATES.items()}


class Cpu:
    """A CPU: its idle task, and (in the shared state once the machine
    starts) the task it runs, its run queue and its slice count."""

    def __init__(self, index: int, idle: Task):
        self.index = index
        self.idle = idle
        self._tasks: list[Task] = []
        self._queue: list[Task] = []    # before the machine starts
        self._s = None
        self._o = 0
        self._q = 0

    def enqueue(self, task: Task) -> None:
        """Put a task on the run queue (before the machine starts)."""
        if self._s is not None:
            raise RuntimeError("the run queue is the scheduler's once the machine has started")
        self._queue.append(task)

    def bind(self, state: memoryview, offset: int, queue: int, tasks: list[Task]) -> None:
        self._s, self._o, self._q, self._tasks = state, offset, queue, tasks
        state[offset + SCHED["CF_CURRENT"]] = -1
        state[offset + SCHED["CF_RQLEN"]] = len(self._queue)
        for k, t in enumerate(self._queue):
            state[queue + k] = t.tid

    @property
    def current(self) -> Task | None:
        """The task the CPU runs (None: idle)."""
        if self._s is None:
            return None
        tid = self._s[self._o]
        return None if tid < 0 else self._tasks[tid]

    @property
    def runqueue(self) -> list[Task]:
        """The run queue in order (a copy)."""
        if self._s is None:
            return list(self._queue)
        n = self._s[self._o + SCHED["CF_RQLEN"]]
        return [self._tasks[t] for t in self._s[self._q:self._q + n]]

    @property
    def slices(self) -> int:
        """Slices ended, for sync."""
        return 0 if self._s is None else self._s[self._o + SCHED["CF_SLICES"]]
