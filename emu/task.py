"""Tasks and CPUs of the emulated machine.

A task is a kernel thread of control with its own stack and saved CPU
context: a user task (loops: enter the kernel, run its entry function, return
to user), a kthread (never returns to user) or a CPU's idle task (runs no
guest code; it stands for the idle loop). Patch state and the pending flag
are livepatch's (`patch_state`, TIF_PATCH_PENDING); kGraft's universe flag
uses the same field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

UNDEFINED, UNPATCHED, PATCHED = -1, 0, 1


class Kind(str, Enum):
    USER = "user"
    KTHREAD = "kthread"
    IDLE = "idle"


class RunState(str, Enum):
    RUNNABLE = "runnable"
    SLEEPING = "sleeping"
    EXITED = "exited"


@dataclass(eq=False)
class Task:
    tid: int                      # index of the saved context in the C core (-1 - cpu for idle tasks)
    name: str
    kind: Kind
    cpu: int                      # the CPU whose run queue holds the task
    entry: str | None = None
    args: tuple[int, ...] = ()
    stack_lo: int = 0
    stack_hi: int = 0
    end_ret: int = 0              # return address of the entry frame
    end_slot: int = 0             # where that return address sits
    state: RunState = RunState.RUNNABLE
    wake_at: int | None = None    # virtual time of the wake-up, None = until woken
    interruptible: bool = True
    patch_state: int = UNDEFINED
    pending: bool = False         # TIF_PATCH_PENDING
    preempted: bool = False       # stopped at an arbitrary instruction, not at a switch point
    need_resched: bool = False
    kernel_entries: int = 0       # how many times it entered the kernel (units of the oracle)
    exit_code: int | None = None
    since_schedule: int = 0       # instructions since the last scheduling point (soft lockup)
    extra: dict = field(default_factory=dict)

    @property
    def is_idle(self) -> bool:
        return self.kind is Kind.IDLE

    def __repr__(self) -> str:
        return f"<Task {self.tid} {self.name} {self.kind.value} {self.state.value}>"


@dataclass(eq=False)
class Cpu:
    index: int
    idle: Task
    current: Task | None = None   # the task the CPU runs (None: idle)
    runqueue: list[Task] = field(default_factory=list)
    slices: int = 0               # slices ended, for sync
