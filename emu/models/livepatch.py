"""Upstream livepatch: the hybrid per-task consistency model
(kernel/livepatch/{core,patch,transition}.c).

A transition moves every task, one at a time, from the initial patch state
to the target one. The ftrace handler sends a task to the new or the old
code by its own patch_state while the patch's functions are in transition,
so each task sees one consistent set of functions. A task switches
- when the transition work finds its stack reliable and free of the
  functions being replaced (try_complete: at once, then every second);
- when it returns to user space (klp_update_patch_state at kernel exit),
  with no stack check: it holds no kernel frame then;
- an idle task, in its idle loop;
- any task at cond_resched(), after a check of its own stack (this is how
  CPU-bound kthreads get patched).
A task running on a CPU cannot be checked; from the 15th retry on, every
15 retries, the tasks still pending get a fake signal (user tasks) or a
wake-up (kthreads). When every task has switched, the transition completes.

The operations follow the sysfs and module interfaces: enable() is loading
the patch module (klp_enable_patch) or writing 1 to `enabled` during an
unpatching transition (a reversal); disable() is writing 0; force() is
writing 1 to `force`; remove() is unloading the patch module;
load_module()/unload_module() are the klp_module_coming/going notifiers of
a patched module. Errors the kernel returns from those writes raise at once:
Busy (-EBUSY) and PatchRefused (-EINVAL, -ENODEV, ...), after the same log
lines as the kernel. The log lines are the kernel's, with its "livepatch: "
prefix, so the selftests' transcripts compare line by line.

The model's klp_mutex is only visible where a work has to wait for text
modification (the ftrace sites of a patch being enabled, of functions whose
last patch goes away): an operation requested then raises Busy instead of
blocking.
"""
from __future__ import annotations

import errno as _errno
import os
from collections import Counter

from emu.kernel import state as klp_state
from emu.engine import unwind
from emu.errors import Busy, PatchError
from emu.machine.machine import Delay, Sync
from emu.kernel.patch import VMLINUX, Patch, PatchFunc, PatchObject, loaded_objects, resolve
from emu.kernel.shadow import ShadowVars
from emu.machine.task import PATCHED, UNDEFINED, UNPATCHED, Kind, RunState, Task
from emu.models.base import Model

MAX_STACK_ENTRIES = 100      # a reliable trace of this many entries counts as failure
SIGNALS_TIMEOUT = 15         # retries between two rounds of fake signals

MODULE_COMING, MODULE_LIVE, MODULE_GOING = "COMING", "LIVE", "GOING"


class PatchRefused(PatchError):
    """A livepatch operation refused with -errno (EINVAL, ENODEV, ...)."""

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


def _refusal(message: str, err: int) -> Exception:
    """The exception for -err: Busy for EBUSY, PatchRefused otherwise."""
    err = abs(err)
    text = f"{message} (-{_errno.errorcode.get(err, err)}: {os.strerror(err)})"
    return Busy(text) if err == _errno.EBUSY else PatchRefused(text, err)


def _verb(target: int) -> str:
    return "patching" if target == PATCHED else "unpatching"


class Livepatch(Model):
    name = "livepatch"
    prefix = "livepatch: "

    def __init__(self, machine, *, retry_period: float = 1.0, **kw):
        super().__init__(machine, **kw)
        self.retry_period = retry_period
        self.installed: list[Patch] = []          # klp_patches: enabled or in transition, oldest first
        self.transition_patch: Patch | None = None
        self.target = UNDEFINED
        self.signals_cnt = 0
        self.module_states: dict[str, str] = {}   # modules between their notifiers (COMING, GOING)
        self.switches: list[tuple[int, str, int, str]] = []   # (time, task, state, how)
        self.shadow = ShadowVars.for_machine(machine)
        self._t = None                 # the Transition record of the transition in progress
        self._gen = 0                  # bumped by every init: a work of an older transition stops
        self._locked = False           # klp_mutex held across text modification
        # per patch, the nops atomic replace added: (object, its nops), or
        # (object, None) for an object made only to hold nops
        self._dynamic: dict[Patch, list[tuple[PatchObject, list[PatchFunc] | None]]] = {}

    # ---- user operations ---------------------------------------------------------------
    def enable(self, patch: Patch) -> None:
        """Load the patch (klp_enable_patch), or reverse its unpatching
        transition. Raises Busy or PatchRefused as the kernel fails."""
        self._check_unlocked(patch)
        if patch is self.transition_patch:
            if self.target == PATCHED:
                raise _refusal(f"patch '{patch.name}' is already being enabled", _errno.EINVAL)
            self._reverse()
            return
        if patch in self.installed:
            raise _refusal(f"patch '{patch.name}' is already enabled", _errno.EINVAL)
        self.add(patch)
        if not klp_state.is_patch_compatible(self.installed, patch):
            self.printk(f"{self.prefix}Livepatch patch ({patch.name}) is not compatible with the "
                        f"already installed livepatches.")
            raise _refusal(f"patch '{patch.name}': its system states do not fit the installed patches",
                           _errno.EINVAL)
        if self.transition_patch is not None:
            raise _refusal(f"patch '{patch.name}': '{self.transition_patch.name}' is in transition",
                           _errno.EBUSY)
        self._init_patch(patch)
        self.printk(f"{self.prefix}enabling patch '{patch.name}'")
        self._init_transition(patch, PATCHED)
        updates, err = [], 0
        for obj in patch.objects:
            if not self._is_loaded(obj):
                continue
            err = self._pre_patch(patch, obj)
            if err:
                self.printk(f"{self.prefix}pre-patch callback failed for object '{obj.name}'")
                break
            try:
                updates += self._patch_object(patch, obj)
            except Busy:
                self.printk(f"{self.prefix}failed to patch object '{obj.name}'")
                err = -_errno.EBUSY
                break
        if err:
            # Nothing of the text was changed yet: the updates are dropped.
            self.printk(f"{self.prefix}failed to enable patch '{patch.name}'")
            self._cancel()
            self._free_patch(patch)
            raise _refusal(f"patch '{patch.name}' could not be enabled", err)
        self._locked = bool(updates)       # the writer holds klp_mutex until its text is done
        self.m.spawn(self._transition_work(self._gen, updates))

    def disable(self, patch: Patch) -> None:
        """Write 0 to the patch's `enabled`: an unpatching transition, or the
        reversal of its patching transition. Raises Busy while another patch
        is in transition, PatchRefused (-EINVAL) when it is not enabled."""
        self._check_unlocked(patch)
        if patch is self.transition_patch:
            if self.target == UNPATCHED:
                raise _refusal(f"patch '{patch.name}' is already being disabled", _errno.EINVAL)
            self._reverse()
            return
        if patch not in self.installed or not patch.enabled:
            raise _refusal(f"patch '{patch.name}' is not enabled", _errno.EINVAL)
        if self.transition_patch is not None:
            raise _refusal(f"patch '{patch.name}': '{self.transition_patch.name}' is in transition",
                           _errno.EBUSY)
        self._init_transition(patch, UNPATCHED)
        for obj in patch.objects:
            if obj.patched:
                self._pre_unpatch(patch, obj)
        self.m.spawn(self._transition_work(self._gen, []))

    def force(self, patch: Patch | None = None) -> None:
        """Write 1 to `force` of the patch in transition: every task gets the
        target state now, checked or not (the next retry completes the
        transition). The patches this removes (the patch itself when
        unpatching, the replaced ones with atomic replace) are marked
        forced: their modules can never be removed, since a task may still
        run their code. PatchRefused (-EINVAL) when no such transition."""
        tp = self.transition_patch
        if tp is None or (patch is not None and patch is not tp):
            what = f"patch '{patch.name}' is" if patch is not None else "no patch is"
            raise _refusal(f"{what} not in transition", _errno.EINVAL)
        self._check_unlocked(tp)
        self.printk(f"{self.prefix}forcing remaining tasks to the patched state")
        for task in self._live_tasks():
            self._update_patch_state(task, "force")
        if self.target == UNPATCHED:
            tp.forced = True
        elif tp.replace:
            for p in self.installed:
                if p is not tp:
                    p.forced = True

    def remove(self, patch: Patch) -> None:
        """Unload the patch module (rmmod): Busy while the patch is enabled
        or in transition, or forever once it was forced."""
        if patch in self.installed:
            raise Busy(f"Module {patch.name} is in use (the patch is enabled or in transition)")
        if patch.forced:
            raise Busy(f"Module {patch.name} is in use (the patch was forced: tasks may still run its code)")
        if patch.image is not None and patch.image.name not in self.m.unloaded:
            self.m.unload(patch.image)

    def load_module(self, image, *, init=None) -> None:
        """Load a module (mapping it unless it is mapped already) and apply
        the installed patches to it (klp_module_coming); then call init()
        (its module_init): at once, or, when patched sites of the module
        must first be enabled, from a machine work once they are (init must
        then not run the machine itself). Raises Busy / PatchRefused when a
        patch refuses the module; it is then not loaded."""
        self._check_unlocked(None)
        self.m.load(image)          # maps it, or makes an unloaded module known again
        name = image.name
        self.module_states[name] = MODULE_COMING
        updates: list = []
        failed = None
        for patch in list(self.installed):
            obj = patch.object(name)
            if obj is None:
                continue
            try:
                resolve(self.m, patch)
            except PatchError:
                self.printk(f"{self.prefix}failed to initialize patch '{patch.name}' for module '{name}' "
                            f"({-_errno.EINVAL})")
                failed = (patch, obj, -_errno.EINVAL)
                break
            self.printk(f"{self.prefix}applying patch '{patch.name}' to loading module '{name}'")
            err = self._pre_patch(patch, obj)
            if err:
                self.printk(f"{self.prefix}pre-patch callback failed for object '{obj.name}'")
                failed = (patch, obj, err)
                break
            try:
                updates += self._patch_object(patch, obj)
            except Busy:
                self.printk(f"{self.prefix}failed to apply patch '{patch.name}' to module '{name}' "
                            f"({-_errno.EBUSY})")
                self._post_unpatch(patch, obj)
                failed = (patch, obj, -_errno.EBUSY)
                break
            if patch is not self.transition_patch:
                self._post_patch(patch, obj)
        if failed is not None:
            patch, obj, err = failed
            self.printk(f"{self.prefix}patch '{patch.name}' failed for module '{name}', "
                        f"refusing to load module '{name}'")
            for f in obj.funcs:
                f.old = None
            self._cleanup_module(name, limit=patch)   # its text was never changed: drop the updates
            self.module_states.pop(name, None)
            self.m.unload(image)
            raise _refusal(f"module '{name}' refused by patch '{patch.name}'", err)
        if updates:
            # module_init runs once the module's patched sites are ready
            self._locked = True            # the loader holds klp_mutex until its text is done
            self.m.spawn(self._coming_work(name, updates, init))
            return
        if init is not None:
            init()
        self.module_states.pop(name, None)

    def unload_module(self, image, *, exit=None) -> None:
        """Unload a module: exit() (its module_exit), then revert every
        patch from it (klp_module_going), then unmap it by name."""
        self._check_unlocked(None)
        name = image.name
        self.module_states[name] = MODULE_GOING
        if exit is not None:
            exit()
        updates = self._cleanup_module(name, limit=None)
        self.module_states.pop(name, None)
        self.m.unload(image)
        self._spawn_text(updates)

    # ---- what callbacks may ask -----------------------------------------------------------
    def module_state(self, name: str) -> str | None:
        """A module's state as its callbacks see it: "COMING" or "GOING"
        inside the notifiers, "LIVE" otherwise; None for vmlinux and for
        modules that are not loaded."""
        if name == VMLINUX or name not in loaded_objects(self.m) and name not in self.module_states:
            return None
        return self.module_states.get(name, MODULE_LIVE)

    def get_state(self, patch: Patch, sid: int):
        return klp_state.get_state(patch, sid)

    def get_prev_state(self, sid: int):
        """klp_get_prev_state: the state as the installed patches before the
        one in transition carry it (None outside transitions)."""
        return klp_state.get_prev_state(self.installed, self.transition_patch, sid)

    # ---- init, start, reverse, complete ------------------------------------------------------
    def _init_patch(self, patch: Patch) -> None:
        """klp_init_patch: a fresh patch (a module loaded again starts over),
        its functions bound, and nops for atomic replace."""
        self._drop_dynamic(patch)
        patch.enabled = False
        patch.forced = False
        for obj in patch.objects:
            obj.patched = False
            obj.callbacks_enabled = False
            for f in obj.funcs:
                f.patched = f.transition = False
        if patch.replace:
            self._add_nops(patch)
        try:
            resolve(self.m, patch)
        except PatchError:
            self._drop_dynamic(patch)
            raise
        self.installed.append(patch)

    def _add_nops(self, patch: Patch) -> None:
        """A nop for every function of an installed patch that patch leaves
        out: the handler runs the original for it."""
        added: list[tuple[PatchObject, list[PatchFunc] | None]] = []
        for old in self.installed:
            for old_obj in old.objects:
                obj = patch.object(old_obj.name)
                dynamic = obj is None
                if dynamic:
                    obj = PatchObject(old_obj.name)
                    patch.objects.append(obj)
                nops = []
                for old_f in old_obj.funcs:
                    if any(f.name == old_f.name for f in obj.funcs):
                        continue
                    nop = PatchFunc(old_f.name, obj.name, None)
                    obj.funcs.append(nop)
                    nops.append(nop)
                added.append((obj, nops) if not dynamic else (obj, None))
        self._dynamic[patch] = added

    def _drop_dynamic(self, patch: Patch) -> None:
        """Remove a patch's nops (and the objects made only for them)."""
        for obj, nops in self._dynamic.pop(patch, []):
            if nops is None:
                if obj in patch.objects:
                    patch.objects.remove(obj)
            else:
                obj.funcs[:] = [f for f in obj.funcs if f not in nops]

    def _free_patch(self, patch: Patch) -> None:
        """klp_free_patch_start: off the installed list, nops gone."""
        if patch in self.installed:
            self.installed.remove(patch)
        self._drop_dynamic(patch)

    def _init_transition(self, patch: Patch, target: int) -> None:
        self._gen += 1
        self.transition_patch, self.target = patch, target
        self.printk(f"{self.prefix}'{patch.name}': initializing {_verb(target)} transition")
        for task in self._live_tasks():
            self.m.set_patch_state(task, UNPATCHED if target == PATCHED else PATCHED)
            task.pending = False
        for _, f in patch.funcs():
            f.transition = True
            if f.patched:
                self.sync(f)
        self._t = self.record(patch, target)

    def _start_transition(self) -> None:
        patch = self.transition_patch
        self.printk(f"{self.prefix}'{patch.name}': starting {_verb(self.target)} transition")
        for task in self._live_tasks():
            if task.patch_state != self.target:
                task.pending = True
        self.signals_cnt = 0
        self._t.started_at = self.m.now

    def _reverse(self) -> None:
        """klp_reverse_transition: flip the target, clear every pending flag
        and start again (no callbacks)."""
        patch = self.transition_patch
        self.printk(f"{self.prefix}'{patch.name}': reversing transition from "
                    f"{'patching to unpatching' if self.target == PATCHED else 'unpatching to patching'}")
        for task in self._live_tasks():
            task.pending = False
        patch.enabled = not patch.enabled
        self.target = UNPATCHED if self.target == PATCHED else PATCHED
        self.finish(self._t, "reversed")
        self._t = self.record(patch, self.target)
        self._start_transition()

    def _cancel(self) -> None:
        """klp_cancel_transition: an enable failed before its start."""
        patch = self.transition_patch
        self.printk(f"{self.prefix}'{patch.name}': canceling patching transition, going to unpatch")
        self.target = UNPATCHED
        for _ in self._complete(run_text=False, result="cancelled"):
            raise RuntimeError("a cancelled transition has no text to change")

    def _transition_work(self, gen: int, updates):
        """Text first (the patch's ftrace sites), then start and try to
        complete now and every retry period."""
        yield from self._text(updates)
        if gen != self._gen:
            return
        self._start_transition()
        self.transition_patch.enabled = self.target == PATCHED
        while True:
            while self._locked:
                yield Sync()
            if gen != self._gen or self.transition_patch is None:
                return
            done = yield from self._try_complete()
            if done:
                return
            yield Delay(self.m.seconds(self.retry_period))

    def _try_complete(self):
        """klp_try_complete_transition (a generator: completing may change
        text). Returns whether the transition completed."""
        t = self._t
        t.attempts += 1
        blockers = []
        for task in self.m.tasks:
            if task.state is RunState.EXITED:
                continue
            ok, why, entries = self._try_switch_task(task)
            if not ok:
                blockers.append((task.name, self.describe_stack(task, entries) + [f"({why})"]))
        for cpu in self.m.cpus:
            ok, why, entries = self._try_switch_task(cpu.idle)
            if not ok:
                blockers.append((cpu.idle.name, [f"({why})"]))
        if blockers:
            t.block(self.m.now, blockers)
            if self.signals_cnt and self.signals_cnt % SIGNALS_TIMEOUT == 0:
                self._send_signals()
            self.signals_cnt += 1
            return False
        t.blockers = []
        yield from self._complete()
        return True

    def _complete(self, *, run_text: bool = True, result: str = "completed"):
        """klp_complete_transition (a generator: unregistering the last
        patch of a function turns its site back into a NOP)."""
        patch, target = self.transition_patch, self.target
        self.printk(f"{self.prefix}'{patch.name}': completing {_verb(target)} transition")
        updates = []
        if patch.replace and target == PATCHED:
            for old in self.installed:
                if old is patch:
                    break
                old.enabled = False
                updates += self._unpatch_objects(old)
            updates += self._discard_nops(patch)
        if target == UNPATCHED:
            updates += self._unpatch_objects(patch)
        if run_text:
            yield from self._text(updates)
        for _, f in patch.funcs():
            f.transition = False
            if f.patched:
                self.sync(f)
        for task in self._live_tasks(all_tasks=True):
            task.pending = False
            self.m.set_patch_state(task, UNDEFINED, "complete")
        for obj in patch.objects:
            if not self._is_loaded(obj):
                continue
            if target == PATCHED:
                self._post_patch(patch, obj)
            else:
                self._post_unpatch(patch, obj)
        self.printk(f"{self.prefix}'{patch.name}': {_verb(target)} complete")
        self.transition_patch, self.target = None, UNDEFINED
        self.finish(self._t, result, None if result == "completed" else "canceled before it started")
        self._t = None
        if not patch.enabled:
            self._free_patch(patch)
        elif patch.replace:
            for old in list(self.installed):
                if old is patch:
                    break
                self._free_patch(old)

    # ---- switching tasks ---------------------------------------------------------------------
    def _try_switch_task(self, task: Task):
        """klp_try_switch_task -> (switched, why not, stack entries)."""
        if task.patch_state == self.target:
            return True, None, ()
        if task.is_idle:
            if self.running(task):
                # The idle task is what its CPU runs: it switches in its idle loop.
                return False, "idle task is running", ()
        elif self.running(task):
            return False, "running", ()
        err, why, entries = self._check_stack(task)
        if err:
            return False, why, entries
        self._switch(task, "stack")
        return True, None, entries

    def _check_stack(self, task: Task):
        """klp_check_stack -> (0 or -errno, why, entries): -EINVAL for an
        unreliable stack, -EADDRINUSE when a checked function is on it."""
        if self.m.started:
            code, entries = self.m.stack(task, max_entries=MAX_STACK_ENTRIES - 1)
        else:
            code, entries = unwind.WALK_OK, ()      # not running yet: no kernel frame at all
        if code != unwind.WALK_OK:
            return -_errno.EINVAL, f"unreliable stack: {unwind.REASONS.get(code, code)}", entries
        for obj in self.transition_patch.objects:
            if not obj.patched:
                continue
            for f in obj.funcs:
                if not f.patched:
                    continue
                lo, hi = self._checked_range(f)
                if any(lo <= a < hi for a in entries):
                    return -_errno.EADDRINUSE, f"sleeping on function {f.name}", entries
        return 0, None, entries

    def _checked_range(self, f: PatchFunc) -> tuple[int, int]:
        """What a task must not be in to switch for f: when unpatching, f's
        new code (a nop's is the original); when patching, the code f
        replaces: the next older patch's version, or the original."""
        return self.own_range(f) if self.target == UNPATCHED else self.replaced_range(f)

    def _switch(self, task: Task, how: str) -> None:
        task.pending = False
        self.m.set_patch_state(task, self.target, how)
        self.switches.append((self.m.now, task.name, self.target, how))

    def _update_patch_state(self, task: Task, how: str) -> None:
        """klp_update_patch_state: a pending task takes the target state."""
        if task.pending and self.transition_patch is not None:
            self._switch(task, how)

    def _send_signals(self) -> None:
        if self.signals_cnt == SIGNALS_TIMEOUT:
            self.printk(f"{self.prefix}signaling remaining tasks")
        for task in self.m.tasks:
            if not task.pending or task.state is RunState.EXITED:
                continue
            if task.kind is Kind.KTHREAD:
                if task.state is RunState.SLEEPING and task.interruptible:
                    self.m.wake(task, early=True)
            else:
                self.m.signal(task)

    def _live_tasks(self, *, all_tasks: bool = False) -> list[Task]:
        tasks = [t for t in self.m.tasks if all_tasks or t.state is not RunState.EXITED]
        return tasks + [c.idle for c in self.m.cpus]

    # ---- listener hooks: the switch points ------------------------------------------------------
    def on_kernel_exit(self, task: Task) -> None:
        self._update_patch_state(task, "kernel_exit")

    def on_idle(self, cpu, idle: Task) -> None:
        self._update_patch_state(idle, "idle")

    def on_cond_resched(self, task: Task) -> None:
        # __klp_sched_try_switch: the task checks its own stack (no -EBUSY).
        if not task.pending or self.transition_patch is None or task.patch_state == self.target:
            return
        if self._check_stack(task)[0] == 0:
            self._switch(task, "cond_resched")

    # ---- objects and functions ---------------------------------------------------------------------
    def _is_loaded(self, obj: PatchObject) -> bool:
        return obj.name == VMLINUX or obj.name in loaded_objects(self.m)

    def _patch_object(self, patch: Patch, obj: PatchObject) -> list:
        """klp_patch_object: push every function; on an IPMODIFY conflict the
        object is unpatched again and Busy raised. Returns text updates."""
        updates = []
        for f in obj.funcs:
            if f.old is None:
                continue
            # init set every function in transition; a module unloaded and
            # loaded again during the transition must not lose that
            f.transition = patch is self.transition_patch
            try:
                updates.append(self.push(patch, f))
            except Busy:
                self.printk(f"{self.prefix}failed to register ftrace handler for function "
                            f"'{f.name}' ({-_errno.EBUSY})")
                self._unpatch_object(patch, obj)
                raise
        obj.patched = True
        return updates

    def _unpatch_object(self, patch: Patch, obj: PatchObject, *, nops_only: bool = False) -> list:
        updates = []
        for f in obj.funcs:
            if f.patched and (f.nop or not nops_only):
                updates.append(self.pop(patch, f))
        if not nops_only:
            obj.patched = False
        return updates

    def _unpatch_objects(self, patch: Patch) -> list:
        updates = []
        for obj in patch.objects:
            if obj.patched:
                updates += self._unpatch_object(patch, obj)
        return updates

    def _discard_nops(self, patch: Patch) -> list:
        """klp_discard_nops: after a replace completes, its nops go."""
        updates = []
        for obj, nops in self._dynamic.get(patch, []):
            updates += self._unpatch_object(patch, obj, nops_only=nops is not None)
        self._drop_dynamic(patch)
        return updates

    def _cleanup_module(self, name: str, *, limit: Patch | None) -> list:
        """klp_cleanup_module_patches_limited: revert every installed patch
        (up to limit) from module name. Returns text updates."""
        updates = []
        for patch in self.installed:
            if patch is limit:
                break
            obj = patch.object(name)
            if obj is None:
                continue
            if patch is not self.transition_patch:
                self._pre_unpatch(patch, obj)
            self.printk(f"{self.prefix}reverting patch '{patch.name}' on unloading module '{name}'")
            updates += self._unpatch_object(patch, obj)
            self._post_unpatch(patch, obj)
            for f in obj.funcs:
                f.old = None
        return updates

    # ---- callbacks ---------------------------------------------------------------------------------
    def _pre_patch(self, patch: Patch, obj: PatchObject) -> int:
        fn = obj.callbacks.get("pre_patch")
        ret = int(fn(self.m, patch, obj) or 0) if fn else 0
        obj.callbacks_enabled = not ret      # post_unpatch runs only after a good pre_patch
        return ret

    def _post_patch(self, patch: Patch, obj: PatchObject) -> None:
        fn = obj.callbacks.get("post_patch")
        if fn:
            fn(self.m, patch, obj)

    def _pre_unpatch(self, patch: Patch, obj: PatchObject) -> None:
        fn = obj.callbacks.get("pre_unpatch")
        if fn:
            fn(self.m, patch, obj)

    def _post_unpatch(self, patch: Patch, obj: PatchObject) -> None:
        fn = obj.callbacks.get("post_unpatch")
        if fn and obj.callbacks_enabled:
            fn(self.m, patch, obj)
        obj.callbacks_enabled = False

    # ---- text modification under the mutex --------------------------------------------------------------
    def _text(self, updates):
        updates = list(updates)
        if not updates:
            return
        self._locked = True
        try:
            for update in updates:
                yield from update
        finally:
            self._locked = False

    def _coming_work(self, name: str, updates, init):
        yield from self._text(updates)
        if init is not None:
            init()
        self.module_states.pop(name, None)

    def _spawn_text(self, updates) -> None:
        if updates:
            self._locked = True            # klp_mutex, until the work's text is done
            self.m.spawn(self._text(updates))

    def _check_unlocked(self, patch: Patch | None) -> None:
        if self._locked:
            what = f"patch '{patch.name}'" if patch is not None else "livepatch"
            raise Busy(f"{what}: the livepatch core is changing ftrace sites; try again (-EBUSY)")

    # ---- status -----------------------------------------------------------------------------------------
    def status(self) -> dict:
        """What /sys/kernel/livepatch shows (per patch: enabled, transition,
        forced, replace, stack_order, per object patched), per task its
        patch_state and pending flag, and the transition in progress with
        the tasks that block it and their stacks."""
        tp = self.transition_patch
        t = self._t
        return {
            "model": self.name,
            "patches": [{
                "name": p.name, "enabled": p.enabled, "transition": p is tp, "force": p.forced,
                "replace": p.replace, "stack_order": i + 1,
                "objects": {o.name: {"patched": o.patched,
                                     "functions": {f.name: {"patched": f.patched, "transition": f.transition,
                                                            "nop": f.nop} for f in o.funcs}}
                            for o in p.objects},
            } for i, p in enumerate(self.installed)],
            "tasks": [{"name": x.name, "tid": x.tid, "patch_state": x.patch_state, "pending": x.pending}
                      for x in self.all_tasks()],
            "transition": None if t is None else {
                "patch": t.patch, "target": _verb(t.target), "attempts": t.attempts,
                "blockers": [{"task": name, "stack": stack} for name, stack in t.blockers]},
            "switches": dict(Counter(how for _, _, _, how in self.switches)),
        }
