"""What every consistency model shares: the per-function stacks of
replacements with their ftrace ops (livepatch's klp_ops), the record of
each transition, and the listener hooks the machine calls.

A model is one object per machine. enable()/disable() start the operation
as a machine work and return at once; errors that the kernel returns from
the sysfs write or the module load (-EBUSY, -EINVAL) raise at once.

What must agree with this module: entries() is the layout of a site's
stack of replacements that Machine.set_entries hands to the redirect
(csrc/redirect.c and its twin); the listener hooks are the ones the machine
calls (emu/machine/machine.py); T_* are the codes of EV_TRANSITION events
that emu/app/report.py reads.
"""
from __future__ import annotations

import errno
import functools
from dataclasses import dataclass, field

from emu.engine import unwind
from emu.errors import Busy, EmuError, EngineClosed, check_callable, check_type
from emu.kernel.ftrace import Ftrace, Ops
from emu.images.image import Image
from emu.machine.machine import EV_TRANSITION, Machine
from emu.kernel.patch import Patch, PatchFunc, PatchObject, loaded_objects, resolve
from emu.kernel import versions
from emu.machine.task import PATCHED, UNDEFINED, UNPATCHED, RunState, Task
from emu.models.refusals import NothingToForce, refusal
from emu.models.stacks import StackChecks

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
    # when the model first looked at the tasks (a run's observer meets them
    # from then on): livepatch's first check, stop_machine's first stop
    # that checked (a forced one looks at no task), kGraft's and
    # immediate's start
    checked_at: int | None = None
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


# ---- what a caller hands the model's public methods --------------------------------------
# Checked before the method runs (Model.__init_subclass__ wraps every
# definition of these names, the base's and each model's), so that a wrong
# argument is a TypeError naming it and the model is left as it was.

def _a_patch(model, method: str, patch, *args, **kwargs) -> None:
    check_type(patch, Patch, f"{model.name}.{method}: patch", "make_patch gives one")


def _a_patch_or_none(model, method: str, patch=None, *args, **kwargs) -> None:
    if patch is not None:
        _a_patch(model, method, patch)


def _a_module(model, method: str, image, *args, init=None, exit=None, **kwargs) -> None:
    check_type(image, Image, f"{model.name}.{method}: image", "build_c gives one")
    for key, fn in (("init", init), ("exit", exit)):
        if fn is not None:
            check_callable(fn, f"{model.name}.{method}: {key}")


ARGUMENT_CHECKS = {"add": _a_patch, "enable": _a_patch, "disable": _a_patch, "force": _a_patch_or_none,
                   "signal": _a_patch_or_none, "remove": _a_patch, "load_module": _a_module,
                   "unload_module": _a_module}


def _checked(cls) -> None:
    for method, check in ARGUMENT_CHECKS.items():
        fn = cls.__dict__.get(method)
        if fn is None or getattr(fn, "checks_arguments", False):
            continue

        def checked(self, *args, _fn=fn, _check=check, _method=method, **kwargs):
            _check(self, _method, *args, **kwargs)
            if _method != "add" and self.m.engine.closed:
                # before anything changes: a transition recorded, then the
                # engine refusing its first event, is a model half-changed
                raise EngineClosed(f"{self.name}.{_method}: the machine's engine is closed")
            return _fn(self, *args, **kwargs)
        functools.update_wrapper(checked, fn)
        checked.checks_arguments = True
        setattr(cls, method, checked)


class Model:
    """Base class: override enable(patch), disable(patch) and force(patch=None)
    (force acts on the transition in progress, and with none refuses:
    force_check); call the helpers below.
    The public methods' arguments are checked before they run
    (ARGUMENT_CHECKS)."""
    name = "base"
    #: kpatch's handler skips the new function's own fentry NOP
    skip_fentry = False
    #: whether the model's ftrace ops are PERMANENT (ftrace_enabled must stay on)
    permanent_ops = False
    #: The machine calls the switch-point hooks only for tasks with `pending`
    #: set (TIF_PATCH_PENDING), so the scheduler stays in C otherwise.
    pending_only = True
    #: what the model's own kernel messages start with
    prefix = ""
    #: the checks the promise oracle (emu/runs/promise.py) holds the model
    #: to: a function its patch marks force is left out of the stack
    #: checks (kpatch's KPATCH_FORCE_UNSAFE; Ksplice's check_address() has
    #: no such exception, livepatch and kGraft no such flag) ...
    honours_force = False
    #: ... and unpatching checks the active version of each function (a
    #: newer patch's when one is on top) besides the patch's own (kpatch)
    unpatch_checks_active = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _checked(cls)

    def __init__(self, machine: Machine, *, ftrace: Ftrace | None = None, kernel: str | None = None):
        check_type(machine, Machine, f"{self.name}: machine")
        if ftrace is not None:
            check_type(ftrace, Ftrace, f"{self.name}: ftrace")
        self.m = machine
        #: the kernel version whose livepatch semantics apply (emu/kernel/versions.py)
        self.kernel = versions.kernel(kernel)
        self.ftrace = ftrace or Ftrace(machine)
        self.patches: list[Patch] = []
        self.stacks: dict[int, list[tuple[Patch, PatchFunc]]] = {}   # old function id -> newest first
        self.ops: dict[int, Ops] = {}
        self.transitions: list[Transition] = []
        self.unlock_waiters: list = []     # writers blocked on the mutex (after_unlock)
        self.loading: set[str] = set()     # modules whose coming notifier waits on the mutex
        # module -> "coming" or "going" while its loader task (insmod, rmmod)
        # runs its init or exit (the module's state, MODULE_STATE_COMING or
        # _GOING; emu/runs/fuzz.py's Runner runs the loaders)
        self.loaders: dict[str, str] = {}
        # (patch index, module name): an enabled patch's object for a module
        # whose functions the coming notifier left out when the module came
        # (kpatch links one patch per load, StopMachine.coming_patches, and
        # keeps a refused pre_patch's functions out of its hash); the
        # promise oracle takes those functions as not carried by that patch
        self.unlinked: set[tuple[int, str]] = set()
        self.stack_checks = StackChecks(machine)
        # klp_shadow_* (kernel/livepatch/shadow.c) under every model: kpatch
        # had the same idea as kpatch_shadow_*; upstream's semantics serve
        # all, and the machine has them whether or not a model exists
        self.shadow = machine.shadow
        machine.listeners.append(self)

    # ---- patches ---------------------------------------------------------------
    def add(self, patch: Patch) -> Patch:
        """Make a patch known to the model (as loading its module does): its
        functions bound to the objects loaded now (PatchError as resolve)."""
        resolve(self.m, patch)
        if patch not in self.patches:
            self.patches.append(patch)
            patch.index = patch.index or len(self.patches)
        return patch

    # ---- the mutex of the patching core ----------------------------------------------
    @property
    def locked(self) -> bool:
        """Whether the core's mutex is held where a writer would block on it
        (livepatch's klp_mutex across text changes; the other models take
        theirs only inside one step of kernel work)."""
        return False

    def after_unlock(self, fn) -> None:
        """Call fn() when the mutex is free: at once, or, as a writer
        blocked in mutex_lock(), once the holder released it (at the next
        instruction boundary after the release)."""
        if not self.locked:
            fn()
        else:
            self.unlock_waiters.append(fn)

    def unlocked(self) -> None:
        """The holder released the mutex: the blocked writers go on, in
        the order they came."""
        waiters, self.unlock_waiters = self.unlock_waiters, []
        for fn in waiters:
            self.m.at(self.m.now, fn)

    @property
    def transition(self) -> Transition | None:
        t = self.transitions[-1] if self.transitions else None
        return t if t is not None and t.result == "pending" else None

    def force_check(self, patch: Patch | None, current: Patch | None) -> None:
        """What every model's force checks first, as the kernel's force_store
        does (kernel/livepatch/core.c): a force reaches only the transition
        in progress, that of current (None: none is), and with patch named,
        only if it is current. Raises NothingToForce (-EINVAL), having
        changed nothing."""
        if current is None or (patch is not None and patch is not current):
            raise NothingToForce(patch.name if patch is not None else None)

    def transition_patch_of(self) -> Patch | None:
        """The patch of the transition in progress (None: none is)."""
        t = self.transition
        return None if t is None else next((p for p in self.patches if p.name == t.patch), None)

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
        skip = self.skip_fentry
        return [(0 if f.nop else f.new.site + 5 if skip and f.new.site is not None else f.new.start,
                 p.index, f.nop, f.transition)
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
        ops = Ops(f"{self.name}:{func.old.name}", ipmodify=True, permanent=self.permanent_ops)
        update = self.ftrace.register(ops, [func.old])
        self.ops[fid] = ops
        return update

    def release_ops(self, func: PatchFunc):
        """Unregister the ops of func's old function when its stack is empty.
        Nothing for a function of a module that went (module_going released
        its ops and unbound it: func.old is None)."""
        if func.old is None:
            return iter(())
        fid = func.old.id
        if self.stacks.get(fid) or fid not in self.ops:
            return iter(())
        self.stacks.pop(fid, None)
        return self.ftrace.unregister(self.ops.pop(fid))

    def link(self, patch: Patch, func: PatchFunc) -> None:
        """Put func on top of its old function's stack (its ops registered)."""
        self.stacks.setdefault(func.old.id, []).insert(0, (patch, func))
        func.patched = True
        self.sync(func)

    def unlink(self, func: PatchFunc) -> None:
        """Take func off its old function's stack (its ops stay)."""
        stack = self.stacks.get(func.old.id, [])
        stack[:] = [(p, f) for p, f in stack if f is not func]
        func.patched = False
        func.transition = False
        self.sync(func)

    def push(self, patch: Patch, func: PatchFunc):
        """klp_patch_func: link func, registering the ops on first use (Busy
        as ensure_ops). Returns the text-update generator."""
        update = self.ensure_ops(func)
        self.link(patch, func)
        return update

    def pop(self, patch: Patch, func: PatchFunc):
        """klp_unpatch_func: unlink func; the last one unregisters the ops
        (the site goes back to a NOP). Returns the text-update generator."""
        self.unlink(func)
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

    @staticmethod
    def together(updates):
        """Run text-update generators in lockstep: every one to its next
        wait, then one wait for all, so that their sites change in the same
        syncs (one batch, as ftrace_replace_code does for one ops)."""
        live = [iter(u) for u in updates]
        while live:
            waits = []
            for u in list(live):
                try:
                    waits.append(next(u))
                except StopIteration:
                    live.remove(u)
            if waits:
                yield waits[0]

    def loaded_funcs(self, patch: Patch) -> list[PatchFunc]:
        return [f for _, f in patch.funcs() if f.old is not None]

    @property
    def checks_at_cond_resched(self) -> bool:
        """Whether a task pending in a transition is checked at a
        cond_resched() it passes on its CPU (the transition meets it there
        without its leaving the CPU). Default: never."""
        return False

    # ---- modules coming and going ----------------------------------------------------------
    def notifier_waits(self) -> bool:
        """Whether a module's coming or going notifier blocks now on the
        core's mutex, held by a work of the model that links, checks or
        switches the functions loaded when it began (kpatch's attempts
        hold kpatch_mutex): a module then neither comes nor goes under it.
        Default: never."""
        return False

    def check_load(self, image) -> None:
        """load_module's check before anything else: a module of that name
        loaded already is not loaded again (-EEXIST); nor is one whose first
        load still waits in its coming notifier (the kernel's second insmod
        waits for the first to finish, then finds it loaded)."""
        if image.name in loaded_objects(self.m) or image.name in self.loading:
            raise refusal(f"module '{image.name}' is already loaded", errno.EEXIST)

    def load_module(self, image, *, init=None) -> None:
        """Load a module (check_load first; mapping it unless it is mapped already) and link
        into it every patch that covers it, as the model's system does
        (module_coming); then call init() (its module_init): at once, or,
        when sites of the module must first be enabled, from a machine work
        once they are. PatchError (the module is then not loaded) when a
        patch names a function the module lacks. While the notifier waits
        (notifier_waits), all of it comes when the mutex is released (its
        init comes after the notifier), and a refusal is printed: the load
        fails then, the run goes on."""
        self.check_load(image)
        if not self.notifier_waits():
            self._coming(image, init)
            return

        def coming() -> None:
            self.loading.discard(image.name)
            try:
                self._coming(image, init)
            except EmuError as exc:
                self.printk(f"{self.prefix}module '{image.name}': {exc}")
        self.loading.add(image.name)
        self.unlock_waiters.append(coming)

    def _coming(self, image, init) -> None:
        self.m.load(image)
        updates: list = []
        linked: list[tuple[Patch, PatchFunc]] = []
        coming = self.coming_patches(image.name)
        self.unlinked |= {(p.index, image.name) for p in self.module_patches()
                          if p.enabled and p.object(image.name) is not None and p not in coming}
        try:
            for patch in coming:
                obj = patch.object(image.name)
                resolve(self.m, patch)
                funcs = [f for f in obj.funcs if f.old is not None]
                updates += self.module_coming(patch, obj, funcs)
                linked += [(patch, f) for f in funcs]
        except BaseException:
            for patch, f in linked:
                if f.patched:
                    self.pop(patch, f)
            self.m.unload(image)
            raise
        if updates:
            self.m.spawn(self._module_work(updates, init))
        elif init is not None:
            init()

    def check_remove(self, image) -> None:
        """delete_module's checks before a module's exit runs (rmmod): a
        module that is not loaded cannot go (-ENOENT); a model whose system
        holds a reference on the module refuses it too (in use), and the
        module stays. Default: no reference is held."""
        if image.name not in loaded_objects(self.m):
            raise refusal(f"module '{image.name}' is not loaded", errno.ENOENT)

    def unload_module(self, image, *, exit=None, check: bool = True) -> None:
        """Unload a module (rmmod): check_remove first (check=False: a
        module whose exit ran already, or whose init failed and which goes
        whatever holds it), then exit() (its module_exit), then take every
        patch out of it (module_going), then unmap it by name. While the
        going notifier waits (notifier_waits), the exit runs (delete_module
        calls it before the going notifier) and the rest comes when the
        mutex is released: the module's functions stay bound and mapped
        until then (its memory is freed after the notifier)."""
        if check:
            self.check_remove(image)
        if exit is not None:
            exit()
        if not self.notifier_waits():
            self._going(image)
            return

        def going() -> None:
            try:
                self._going(image)
            except EmuError as exc:
                self.printk(f"{self.prefix}module '{image.name}': {exc}")
        self.unlock_waiters.append(going)

    def _going(self, image) -> None:
        updates = []
        for patch in self.module_patches():
            obj = patch.object(image.name)
            if obj is not None:
                updates += self.module_going(patch, obj)
        self.m.unload(image)
        if updates:
            self.m.spawn(self._module_work(updates, None))

    def mark_objects(self, patch: Patch, patched: bool) -> None:
        """The objects' `patched` after a switch: the loaded ones follow it,
        a module that is not loaded is never patched."""
        loaded = loaded_objects(self.m)
        for obj in patch.objects:
            obj.patched = patched and obj.name in loaded

    def module_patches(self) -> list[Patch]:
        """The patches a coming or going module concerns: the enabled ones
        and the one in transition, oldest first."""
        t = self.transition
        return [p for p in self.patches if p.enabled or (t is not None and t.patch == p.name)]

    def coming_patches(self, name: str) -> list[Patch]:
        """The patches whose object for the coming module name the coming
        notifier links, in its order. Default: every one of module_patches
        that has such an object."""
        return [p for p in self.module_patches() if p.object(name) is not None]

    def module_coming(self, patch: Patch, obj: PatchObject, funcs: list[PatchFunc]) -> list:
        """Link patch's funcs of a coming module (their old functions just
        bound); returns text updates. Default: an enabled patch is linked at
        once (immediate; kpatch's module notifier); a patch in transition
        is linked by the transition itself (kpatch's switch takes every
        object loaded by then)."""
        if not patch.enabled:
            return []
        updates = self.push_all(patch, funcs)
        obj.patched = True
        return updates

    def module_going(self, patch: Patch, obj: PatchObject) -> list:
        """Take patch's object for a going module off its functions (their
        ftrace ops released when nothing else patches them); returns text
        updates."""
        updates = []
        for f in obj.funcs:
            if f.old is not None:
                updates.append(self.pop(patch, f) if f.patched else self.release_ops(f))
                f.old = None
        obj.patched = False
        return updates

    def _module_work(self, updates, init):
        for update in updates:
            yield from update
        if init is not None:
            init()

    # ---- atomic replace ------------------------------------------------------------------
    def replaced(self, patch: Patch) -> list[Patch]:
        """The patches an atomic replace by patch takes over: every other
        enabled one, oldest first (livepatch's override: the patches
        installed before it)."""
        return [p for p in self.patches if p is not patch and p.enabled]

    def retire(self, patch: Patch) -> None:
        """A patch that was replaced is off: disabled, its objects unpatched."""
        patch.enabled = False
        for obj in patch.objects:
            obj.patched = False

    def busy_check(self, patch: Patch) -> None:
        t = self.transition
        if t is not None:
            raise Busy(f"patch '{patch.name}': another transition ('{t.patch}') is in progress (-EBUSY)")

    #: what enabling a patch that is enabled already answers (enable_check)
    enable_again_errno = errno.EINVAL

    def enable_check(self, patch: Patch) -> None:
        """What every model checks before enabling: no transition in
        progress (Busy), and the patch not enabled already (PatchRefused,
        enable_again_errno: kpatch_register() refuses an enabled patch
        module with -EINVAL, as livepatch's sysfs write of 1 does)."""
        self.busy_check(patch)
        if patch.enabled:
            raise refusal(f"patch '{patch.name}' is already enabled", self.enable_again_errno)

    def disable_check(self, patch: Patch) -> None:
        """What every model checks before disabling: no transition in
        progress (Busy), and the patch enabled (PatchRefused, -EINVAL: a
        patch module that never loaded, or was unloaded, cannot be
        unloaded; livepatch's sysfs write of 0 to `enabled` refuses the same)."""
        self.busy_check(patch)
        if patch not in self.patches or not patch.enabled:
            raise refusal(f"patch '{patch.name}' is not enabled", errno.EINVAL)

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
        idle task runs when its CPU has no task, no kernel work on it and
        nothing runnable in its run queue: a CPU between two of its tasks
        (the last one went to sleep, the next is about to be picked) is in
        the scheduler, which switches to the next task, not to idle."""
        if task.is_idle:
            cpu = self.m.cpus[-1 - task.tid]
            return cpu.current is None and not self.m.works.occupies(cpu.index) and not self.m.runnable(cpu)
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

    def on_freezable_sleep(self, task: Task) -> None:
        """A pending task is about to go to a freezable sleep."""

    def on_fork(self, task: Task) -> None:
        """A task is born (a module's loader, Machine.fork). The kernel gives
        a child its parent's patch state and pending flag (klp_copy_process;
        kGraft copied the universe flag the same way), and the child returns
        to user from fork and again from exec before its first system call
        (init_module): it is what a task that has just passed a kernel exit
        is. So it starts as every task did when the transition in progress
        began, then passes a kernel exit; outside a transition it has the
        state the other tasks have."""
        target = self.fork_target()
        others = [x.patch_state for x in self.m.tasks if x is not task and x.state is not RunState.EXITED]
        if target is None:
            self.m.set_patch_state(task, others[0] if others else UNDEFINED, "init")
            task.pending = False
            return
        self.m.set_patch_state(task, UNPATCHED if target == PATCHED else PATCHED, "init")
        task.pending = True
        self.on_kernel_exit(task)

    def fork_target(self) -> int | None:
        """The target state of a per-task transition in progress (None: no
        transition, or a model without per-task states)."""
        return None

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


_checked(Model)


def first_hit(code: int, entries, ranges) -> str | None:
    """kpatch's verdict on a walk: the reason it fails (a trace too deep),
    the name of the range its first entry in a range lies in, or None."""
    if code == unwind.WALK_TOO_DEEP:
        return unwind.REASONS[code]
    for addr in entries:
        for lo, hi, name in ranges:
            if lo <= addr < hi:
                return name
    return None
