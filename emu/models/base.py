"""What every consistency model shares: the per-function stacks of
replacements with their ftrace ops (livepatch's klp_ops), the record of
each transition, and the listener hooks the machine calls.

A model is one object per machine. enable()/disable() start the operation
as a machine work and return at once; errors that the kernel returns from
the sysfs write or the module load (-EBUSY, -EINVAL) raise at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emu.engine import unwind
from emu.errors import Busy
from emu.kernel.ftrace import Ftrace, Ops
from emu.machine.machine import EV_TRANSITION, Machine
from emu.kernel.patch import Patch, PatchFunc
from emu.machine.task import Task

# transition event codes (EV_TRANSITION's a)
# (b = patch index, c = target patch state); T_SWITCH: stop_machine's switch
# instant, inside the stop (c = 1 when the activeness check was skipped by force)
T_START, T_COMPLETE, T_FAIL, T_REVERSE, T_CANCEL, T_STALL, T_SWITCH = range(7)


@dataclass(frozen=True)
class Attempt:
    """One try of a transition that did not complete: the attempt's number,
    when it ran and the tasks that blocked it with their symbolized stacks."""
    attempt: int
    clock: int
    blockers: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass
class Transition:
    """One patching or unpatching operation, as the fuzzer and reports see it."""
    patch: str
    target: int                     # PATCHED or UNPATCHED
    requested_at: int
    started_at: int | None = None
    completed_at: int | None = None
    result: str = "pending"         # pending, completed, failed, reversed, cancelled
    error: str | None = None
    attempts: int = 0
    pauses: list[tuple[int, int]] = field(default_factory=list)   # stop_machine (stopped, released)
    blockers: list[tuple[str, list[str]]] = field(default_factory=list)    # the current attempt's
    history: list[Attempt] = field(default_factory=list)                   # every blocked attempt's

    def block(self, clock: int, blockers) -> None:
        """The attempt in progress is blocked by blockers ([(task, stack)]):
        they become the current blockers and stay in history."""
        self.blockers = blockers
        self.history.append(Attempt(self.attempts, clock, tuple((n, tuple(s)) for n, s in blockers)))

    @property
    def latency(self) -> int | None:
        if self.completed_at is None:
            return None
        return self.completed_at - self.requested_at


class Model:
    """Base class: override enable(patch), disable(patch) and force(patch=None)
    (force acts on the transition in progress); call the helpers below."""
    name = "base"
    #: kpatch's handler skips the new function's own fentry NOP
    skip_fentry = False
    #: The machine calls the switch-point hooks only for tasks with `pending`
    #: set (TIF_PATCH_PENDING), so the scheduler stays in C otherwise.
    pending_only = True

    def __init__(self, machine: Machine, *, ftrace: Ftrace | None = None):
        self.m = machine
        self.ftrace = ftrace or Ftrace(machine)
        self.patches: list[Patch] = []
        self.stacks: dict[int, list[tuple[Patch, PatchFunc]]] = {}   # old function id -> newest first
        self.ops: dict[int, Ops] = {}
        self.transitions: list[Transition] = []
        machine.listeners.append(self)

    # ---- patches ---------------------------------------------------------------
    def add(self, patch: Patch) -> Patch:
        """Make a patch known to the model (as loading its module does)."""
        if patch not in self.patches:
            self.patches.append(patch)
            patch.index = patch.index or len(self.patches)
        return patch

    @property
    def transition(self) -> Transition | None:
        t = self.transitions[-1] if self.transitions else None
        return t if t is not None and t.result == "pending" else None

    def record(self, patch: Patch, target: int) -> Transition:
        self.m.start()      # tasks get their contexts (and patch states) now
        t = Transition(patch.name, target, self.m.now)
        self.transitions.append(t)
        self.m.emit(EV_TRANSITION, -1, T_START, self._index(patch.name), target)
        return t

    def finish(self, t: Transition, result: str, error: str | None = None) -> None:
        t.result = result
        t.error = error
        if result == "completed":
            t.completed_at = self.m.now
        code = {"completed": T_COMPLETE, "failed": T_FAIL, "reversed": T_REVERSE,
                "cancelled": T_CANCEL}.get(result, T_STALL)
        self.m.emit(EV_TRANSITION, -1, code, self._index(t.patch), t.target)

    def _index(self, name: str) -> int:
        return next((p.index for p in self.patches if p.name == name), 0)

    def printk(self, text: str) -> None:
        self.m.printk(text)

    # ---- the redirect: stacks of replacements per old function ------------------------
    def entries(self, fid: int):
        skip = 5 if self.skip_fentry else 0
        return [(0 if f.nop else f.new.start + skip, p.index, f.nop, f.transition)
                for p, f in self.stacks.get(fid, [])]

    def sync(self, func: PatchFunc) -> None:
        """Push func's old function's stack to the redirect (C and twin)."""
        self.m.set_entries(func.old, self.entries(func.old.id))

    def ensure_ops(self, func: PatchFunc):
        """Register the IPMODIFY ftrace ops of func's old function if it has
        none yet (the handler then finds an empty stack and runs the
        original). Raises Busy when another IP-modifying user owns it.
        Returns the text-update generator."""
        fid = func.old.id
        if fid in self.ops:
            return iter(())
        ops = Ops(f"{self.name}:{func.old.name}", ipmodify=True)
        update = self.ftrace.register(ops, [func.old])
        self.ops[fid] = ops
        return update

    def release_ops(self, func: PatchFunc):
        """Unregister the ops of func's old function when its stack is empty."""
        fid = func.old.id
        if self.stacks.get(fid) or fid not in self.ops:
            return iter(())
        self.stacks.pop(fid, None)
        return self.ftrace.unregister(self.ops.pop(fid))

    def push(self, patch: Patch, func: PatchFunc):
        """klp_patch_func: put func on top of its old function's stack,
        registering the ops on first use (Busy as ensure_ops). Returns the
        text-update generator."""
        update = self.ensure_ops(func)
        self.stacks.setdefault(func.old.id, []).insert(0, (patch, func))
        func.patched = True
        self.sync(func)
        return update

    def pop(self, patch: Patch, func: PatchFunc):
        """klp_unpatch_func: take func off its stack; the last one unregisters
        the ops (the site goes back to a NOP). Returns the text-update generator."""
        stack = self.stacks.get(func.old.id, [])
        stack[:] = [(p, f) for p, f in stack if f is not func]
        func.patched = False
        func.transition = False
        self.sync(func)
        return self.release_ops(func)

    def push_all(self, patch: Patch, funcs) -> list:
        """push() every func, undoing them all if one is refused (Busy)."""
        updates, done = [], []
        try:
            for f in funcs:
                updates.append(self.push(patch, f))
                done.append(f)
        except Busy:
            for f in done:
                self.pop(patch, f)
            raise
        return updates

    def loaded_funcs(self, patch: Patch) -> list[PatchFunc]:
        return [f for _, f in patch.funcs() if f.old is not None]

    def busy_check(self, patch: Patch) -> None:
        t = self.transition
        if t is not None:
            raise Busy(f"patch '{patch.name}': another transition ('{t.patch}') is in progress (-EBUSY)")

    def replaced_range(self, func: PatchFunc) -> tuple[int, int]:
        """The code func replaces: the entry directly below it on its old
        function's stack (the top one while func is not pushed yet), or the
        original when there is none or that entry is a nop."""
        stack = [f for _, f in self.stacks.get(func.old.id, [])]
        below = stack[stack.index(func) + 1:] if func in stack else stack
        if not below or below[0].nop:
            return func.old.start, func.old.end
        return below[0].new.start, below[0].new.end

    @staticmethod
    def own_range(func: PatchFunc) -> tuple[int, int]:
        """The code func sends tasks to (a nop's is the original)."""
        return (func.old.start, func.old.end) if func.nop else (func.new.start, func.new.end)

    # ---- stacks of tasks ----------------------------------------------------------------
    def all_tasks(self) -> list[Task]:
        return list(self.m.tasks) + [c.idle for c in self.m.cpus]

    def running(self, task: Task) -> bool:
        """task_curr(): on a CPU right now, as the kernel work in progress
        sees it (emu/machine/works.py). The work occupies its CPU, so the
        task it displaced is not running; a task on any other CPU is. An
        idle task runs when its CPU has no task and no kernel work on it."""
        if task.is_idle:
            cpu = self.m.cpus[-1 - task.tid]
            return cpu.current is None and not self.m.works.occupies(cpu.index)
        return any(c.current is task for c in self.m.cpus)

    def describe_stack(self, task: Task, entries) -> list[str]:
        return [self.m.symbolize(a) for a in entries]

    # ---- listener hooks (the machine calls them) ------------------------------------------
    def on_kernel_exit(self, task: Task) -> None:
        pass

    def on_safe_point(self, task: Task) -> None:
        pass

    def on_cond_resched(self, task: Task) -> None:
        pass

    def on_idle(self, cpu, idle: Task) -> None:
        pass

    # ---- status ---------------------------------------------------------------------------------
    def status(self) -> dict:
        """A view like /sys/kernel/livepatch: per patch and per task."""
        t = self.transition
        return {
            "model": self.name,
            "patches": [{
                "name": p.name, "enabled": p.enabled, "transition": t is not None and t.patch == p.name,
                "force": p.forced, "replace": p.replace, "stack_order": i + 1,
                "objects": {o.name: {"patched": o.patched} for o in p.objects},
            } for i, p in enumerate(p for p in self.patches if p.enabled or (t and t.patch == p.name))],
            "tasks": [{"name": x.name, "tid": x.tid, "patch_state": x.patch_state, "pending": x.pending}
                      for x in self.all_tasks()],
        }


def walk_ranges(machine: Machine, task: Task, ranges, *, max_entries: int, reliable: bool):
    """Walk task's stack and check it against ranges.

    Returns (ok, reason, entries): ok is False when an entry lies in a range
    (reason names the function) or, with reliable=True, when the walk is not
    reliable (reason from unwind.REASONS)."""
    code, entries = machine.stack(task, max_entries=max_entries)
    if code == unwind.WALK_TOO_DEEP or (reliable and code != unwind.WALK_OK):
        return False, unwind.REASONS.get(code, str(code)), entries
    for addr in entries:
        for lo, hi, name in ranges:
            if lo <= addr < hi:
                return False, name, entries
    return True, None, entries
