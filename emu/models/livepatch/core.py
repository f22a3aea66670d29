"""Upstream livepatch's interface and bookkeeping (kernel/livepatch/core.c):
the Livepatch model object, the patches it has installed, and the
operations people and modules perform on it.

The operations follow the sysfs and module interfaces: enable() is loading
the patch module (klp_enable_patch) or writing 1 to `enabled` during an
unpatching transition (a reversal); disable() is writing 0; force() is
writing 1 to `force`; signal() is writing 1 to `signal` (before 5.1);
remove() is unloading the patch module;
load_module()/unload_module() are the module notifiers of a patched module
(notifiers.py). Errors the kernel returns from those writes raise at once
(refusals.py): Busy (-EBUSY) and PatchRefused (-EINVAL, -ENODEV, ...), after
the same log lines as the kernel. The log lines are the kernel's, with its
"livepatch: " prefix, so the selftests' transcripts compare line by line.

The model's klp_mutex is only visible where a work has to wait for text
modification (the ftrace sites of a patch being enabled, of functions whose
last patch goes away): an operation requested then raises Busy instead of
blocking (change_text holds it).

The transition itself is transition.py's; the state it shares with this
module (transition_patch, target, signals_cnt, gen, switches) lives on the
Livepatch object, as the kernel's globals do, and the functions of this
class that transition.py and notifiers.py call (change_text, locked,
is_loaded, unpatch_replaced, discard_nops, free_patch, free_replaced) are
their interface to it.
"""
from __future__ import annotations

import errno
from collections import Counter

from emu.errors import Busy, PatchError
from emu.kernel import state as klp_state
from emu.kernel.patch import VMLINUX, Patch, PatchFunc, PatchObject, loaded_objects, resolve
from emu.machine.task import PATCHED, UNDEFINED, UNPATCHED, Task
from emu.models.base import Model
from emu.kernel import callbacks
from emu.models import stacking
from emu.models.livepatch import notifiers, transition
from emu.models.livepatch.patch import patch_object, unpatch_object, unpatch_objects
from emu.models.refusals import refusal

# sysfs modes as `stat --format %A` prints them (__ATTR_RW, __ATTR_RO, __ATTR_WO, kobject dirs)
DIR, RW, RO, WO = "drwxr-xr-x", "-rw-r--r--", "-r--r--r--", "--w-------"


class Livepatch(Model):
    name = "livepatch"
    prefix = "livepatch: "

    def __init__(self, machine, *, retry_period: float = 1.0, **kw):
        super().__init__(machine, **kw)
        self.retry_period = retry_period
        self.installed: list[Patch] = []          # klp_patches: enabled or in transition, oldest first
        # before 5.1 (versions.py stacking_order) klp_patches also kept the
        # registered patches that were disabled: registration order, from a
        # patch's first enable (its module's load) until remove() (rmmod)
        self.registered: list[Patch] = []
        self.transition_patch: Patch | None = None
        self.target = UNDEFINED
        self.signals_cnt = 0
        self.gen = 0                   # bumped by every transition init: a work of an older one stops
        self.module_states: dict[str, str] = {}   # modules between their notifiers (COMING, GOING)
        self.switches: list[tuple[int, str, int, str]] = []   # (time, task, state, how)
        self._locked = False           # klp_mutex held across text modification
        # per patch, the nops atomic replace added: (object, its nops), or
        # (object, None) for an object made only to hold nops
        self._dynamic: dict[Patch, list[tuple[PatchObject, list[PatchFunc] | None]]] = {}

    @property
    def permanent_ops(self) -> bool:
        """klp_ops are FTRACE_OPS_FL_PERMANENT from 5.5 (versions.py)."""
        return self.kernel.ftrace_permanent

    # ---- user operations ---------------------------------------------------------------
    def enable(self, patch: Patch) -> None:
        """Load the patch (klp_enable_patch), or reverse its unpatching
        transition. Raises Busy or PatchRefused as the kernel fails."""
        self.m.start()      # tasks get their contexts (and patch states) now
        self._check_unlocked(patch)
        if patch is self.transition_patch:
            if self.target == PATCHED:
                raise refusal(f"patch '{patch.name}' is already being enabled", errno.EINVAL)
            transition.reverse(self)
            return
        if patch in self.installed:
            raise refusal(f"patch '{patch.name}' is already enabled", errno.EINVAL)
        self._check_built(patch)
        self.add(patch)
        if not klp_state.is_patch_compatible(self.installed, patch):
            self.printk(f"{self.prefix}Livepatch patch ({patch.name}) is not compatible with the "
                        f"already installed livepatches.")
            raise refusal(f"patch '{patch.name}': its system states do not fit the installed patches",
                          errno.EINVAL)
        if self.transition_patch is not None:
            raise refusal(f"patch '{patch.name}': '{self.transition_patch.name}' is in transition",
                          errno.EBUSY)
        self._check_stacking(patch, enabling=True)
        self._init_patch(patch)
        self.printk(f"{self.prefix}enabling patch '{patch.name}'")
        transition.init(self, patch, PATCHED)
        updates, err = [], 0
        for obj in patch.objects:
            if not self.is_loaded(obj):
                continue
            err = callbacks.pre_patch(self.m, patch, obj)
            if err:
                self.printk(f"{self.prefix}pre-patch callback failed for object '{obj.name}'")
                break
            try:
                updates += patch_object(self, patch, obj)
            except Busy:
                self.printk(f"{self.prefix}failed to patch object '{obj.name}'")
                err = -errno.EBUSY
                break
        if err:
            # Nothing of the text was changed yet: the updates are dropped.
            self.printk(f"{self.prefix}failed to enable patch '{patch.name}'")
            transition.cancel(self)
            self.free_patch(patch)
            raise refusal(f"patch '{patch.name}' could not be enabled", err)
        self._locked = bool(updates)       # the writer holds klp_mutex until its text is done
        if self.kernel.stacking_order and patch not in self.registered:
            self.registered.append(patch)  # klp_register_patch of its module (before 5.1)
        self.m.spawn(transition.work(self, self.gen, updates))

    def disable(self, patch: Patch) -> None:
        """Write 0 to the patch's `enabled`: an unpatching transition, or the
        reversal of its patching transition. Raises Busy while another patch
        is in transition, PatchRefused (-EINVAL) when it is not enabled."""
        self._check_unlocked(patch)
        if patch is self.transition_patch:
            if self.target == UNPATCHED:
                raise refusal(f"patch '{patch.name}' is already being disabled", errno.EINVAL)
            transition.reverse(self)
            return
        if patch not in self.installed or not patch.enabled:
            raise refusal(f"patch '{patch.name}' is not enabled", errno.EINVAL)
        if self.transition_patch is not None:
            raise refusal(f"patch '{patch.name}': '{self.transition_patch.name}' is in transition",
                          errno.EBUSY)
        self._check_stacking(patch, enabling=False)
        transition.init(self, patch, UNPATCHED)
        for obj in patch.objects:
            if obj.patched:
                callbacks.pre_unpatch(self.m, patch, obj)
        self.m.spawn(transition.work(self, self.gen, []))

    def force(self, patch: Patch | None = None) -> None:
        """Write 1 to `force` of the patch in transition: every task gets the
        target state now, checked or not (the next retry completes the
        transition). The patches this removes (the patch itself when
        unpatching, the replaced ones with atomic replace) are marked
        forced: their modules can never be removed, since a task may still
        run their code; before 5.18 every patch is marked, removed or not
        (versions.py). NothingToForce (-EINVAL) when no such transition
        (force_check: force_store's check)."""
        tp = self.transition_patch
        self.force_check(patch, tp)
        self._check_unlocked(tp)
        transition.force(self)
        if self.kernel.force_marks_every_patch:
            # before 5.18: klp_for_each_patch(patch) patch->forced = true
            # (klp_patches held the disabled, registered ones too before 5.1)
            for p in self.installed + [p for p in self.registered if p not in self.installed]:
                p.forced = True
        elif self.target == UNPATCHED:
            tp.forced = True
        elif tp.replace:
            for p in self.installed:
                if p is not tp:
                    p.forced = True

    def signal(self, patch: Patch | None = None) -> None:
        """Write 1 to `signal` of the patch in transition (kernels before
        5.1): a fake signal now to every pending user task, a wake-up to
        every pending kthread asleep interruptibly. PatchRefused: -EACCES on
        a kernel without the attribute (the shell cannot create a sysfs
        file), -EINVAL when no such transition."""
        if not self.kernel.sysfs_signal:
            raise refusal(f"kernel {self.kernel.name} has no 'signal' attribute: it sends fake "
                          f"signals by itself (5.1)", errno.EACCES)
        tp = self.transition_patch
        if tp is None or (patch is not None and patch is not tp):
            why = f"patch '{patch.name}' is not in transition" if patch is not None else "no patch is in transition"
            raise refusal(why, errno.EINVAL)
        self._check_unlocked(tp)
        transition.send_signals(self)

    def remove(self, patch: Patch) -> None:
        """Unload the patch module (rmmod): Busy while the patch is enabled
        or in transition, or forever once it was forced."""
        if patch in self.installed:
            raise Busy(f"Module {patch.name} is in use (the patch is enabled or in transition)")
        if patch.forced:
            raise Busy(f"Module {patch.name} is in use (the patch was forced: tasks may still run its code)")
        if patch in self.registered:
            self.registered.remove(patch)        # klp_unregister_patch in the module's exit
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
        self.check_load(image)
        notifiers.module_coming(self, image, init)

    def unload_module(self, image, *, exit=None, check: bool = True) -> None:
        """Unload a module: exit() (its module_exit), then revert every
        patch from it (klp_module_going), then unmap it by name (check:
        check_remove first; livepatch holds no reference on the modules it
        patches)."""
        self._check_unlocked(None)
        if check:
            self.check_remove(image)
        notifiers.module_going(self, image, exit)

    # ---- what this kernel allows -----------------------------------------------------------
    def _check_built(self, patch: Patch) -> None:
        """A patch asking for what this kernel's struct klp_patch does not
        have (atomic replace before 5.1, system states before 5.5) cannot
        be built for it: refused (-EINVAL) before anything happens."""
        k = self.kernel
        if patch.replace and not k.atomic_replace:
            raise refusal(f"patch '{patch.name}': kernel {k.name} has no atomic replace "
                          f"(klp_patch.replace came in 5.1)", errno.EINVAL)
        if patch.states and not k.system_states:
            raise refusal(f"patch '{patch.name}': kernel {k.name} has no system states "
                          f"(klp_patch.states came in 5.5)", errno.EINVAL)

    def _check_stacking(self, patch: Patch, *, enabling: bool) -> None:
        """Before 5.1 (versions.py stacking_order) the stacking order of
        emu/models/stacking.py holds (Busy, -EBUSY)."""
        if self.kernel.stacking_order:
            stacking.check(patch, enabling=enabling, registered=self.registered, installed=self.installed,
                           who=f"kernel {self.kernel.name}")

    # ---- what callbacks may ask -----------------------------------------------------------
    def module_state(self, name: str) -> str | None:
        """A module's state as its callbacks see it: "COMING" or "GOING"
        inside the notifiers, "LIVE" otherwise; None for vmlinux and for
        modules that are not loaded."""
        if name == VMLINUX or name not in loaded_objects(self.m) and name not in self.module_states:
            return None
        return self.module_states.get(name, notifiers.MODULE_LIVE)

    def get_state(self, patch: Patch, sid: int):
        return klp_state.get_state(patch, sid)

    def get_prev_state(self, sid: int):
        """klp_get_prev_state: the state as the installed patches before the
        one in transition carry it (None outside transitions)."""
        return klp_state.get_prev_state(self.installed, self.transition_patch, sid)

    # ---- patches: init, nops, free ---------------------------------------------------------
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
        """klp_add_nops: a nop for every function of an installed patch that
        patch leaves out: the handler runs the original for it."""
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

    def discard_nops(self, patch: Patch) -> list:
        """klp_discard_nops: after a replace completes, its nops go. Returns
        text updates."""
        updates = []
        for obj, nops in self._dynamic.get(patch, []):
            updates += unpatch_object(self, patch, obj, nops_only=nops is not None)
        self._drop_dynamic(patch)
        return updates

    def unpatch_replaced(self, patch: Patch) -> list:
        """klp_unpatch_replaced_patches: every patch installed before the
        replace patch is disabled and unpatched. Returns text updates."""
        updates = []
        for old in self.replaced(patch):
            old.enabled = False
            updates += unpatch_objects(self, old)
        return updates

    def replaced(self, patch: Patch) -> list[Patch]:
        """The patches an atomic replace by patch takes over: the ones
        installed before it."""
        return self.installed[:self.installed.index(patch)] if patch in self.installed else list(self.installed)

    def free_patch(self, patch: Patch) -> None:
        """klp_free_patch_start: off the installed list, nops gone."""
        if patch in self.installed:
            self.installed.remove(patch)
        self._drop_dynamic(patch)

    def free_replaced(self, patch: Patch) -> None:
        """klp_free_replaced_patches_async: free the patches patch replaced."""
        for old in self.replaced(patch):
            self.free_patch(old)

    def is_loaded(self, obj: PatchObject) -> bool:
        """klp_is_object_loaded: vmlinux, or a module that is loaded."""
        return obj.name == VMLINUX or obj.name in loaded_objects(self.m)

    # ---- text modification under the mutex --------------------------------------------------
    def change_text(self, updates):
        """Run text updates (generators) holding klp_mutex: operations
        requested meanwhile raise Busy (a scenario's actions wait for the
        mutex instead, through after_unlock, as a blocked writer does)."""
        updates = list(updates)
        if not updates:
            return
        self._locked = True
        try:
            for update in updates:
                yield from update
        except GeneratorExit:
            # the run ended (or its machine went away) mid-change: nobody
            # may be woken on a machine that has moved on
            raise
        except BaseException:
            self._locked = False
            raise
        self._locked = False
        self.unlocked()

    def hold_mutex(self) -> None:
        """Take klp_mutex now, at the write: the work that changes the text
        may wait for a CPU, and its change_text releases the mutex once the
        text is done."""
        self._locked = True

    @property
    def locked(self) -> bool:
        """Whether klp_mutex is held for text modification."""
        return self._locked

    def _check_unlocked(self, patch: Patch | None) -> None:
        if self._locked:
            what = f"patch '{patch.name}'" if patch is not None else "livepatch"
            raise Busy(f"{what}: the livepatch core is changing ftrace sites; try again (-EBUSY)")

    # ---- listener hooks: the switch points ------------------------------------------------------
    def fork_target(self) -> int | None:
        return self.target if self.transition_patch is not None else None

    def on_kernel_exit(self, task: Task) -> None:
        transition.update_patch_state(self, task, "kernel_exit")

    def on_idle(self, cpu, idle: Task) -> None:
        transition.update_patch_state(self, idle, "idle")

    @property
    def checks_at_cond_resched(self) -> bool:
        """klp_cond_resched (6.4 to 6.15): a pending task checks its own stack there."""
        return self.kernel.cond_resched_switch

    def on_cond_resched(self, task: Task) -> None:
        if self.kernel.cond_resched_switch:          # klp_cond_resched, 6.4 to 6.15
            transition.cond_resched(self, task, "cond_resched")

    def on_freezable_sleep(self, task: Task) -> None:
        if self.kernel.freezable_sleep_switch:       # klp_sched_try_switch in __schedule, 6.16+
            transition.cond_resched(self, task, "freezable_sleep")

    # ---- status -----------------------------------------------------------------------------------------
    def sysfs(self) -> dict[str, dict]:
        """/sys/kernel/livepatch as this kernel version shows it (core.c's
        sysfs interface; versions.py says which attribute came when): per
        path relative to it, {"mode": what `stat --format %A` prints,
        "value": what `cat` reads, None for directories and write-only
        attributes}. A patch is there from its enable until it is freed
        (disabled, replaced, or refused; before 5.1, until its module is
        removed: klp_unregister_patch); each object has a directory,
        loaded or not, and each function one named "<name>,<sympos>"."""
        k = self.kernel
        out: dict[str, dict] = {}

        def put(path, mode, value=None):
            out[path] = {"mode": mode, "value": value}

        for i, p in enumerate(self.listed()):
            put(p.name, DIR)
            put(f"{p.name}/enabled", RW, str(int(p.enabled)))
            put(f"{p.name}/transition", RO, str(int(p is self.transition_patch)))
            put(f"{p.name}/force", WO)
            if k.sysfs_signal:
                put(f"{p.name}/signal", WO)
            if k.sysfs_replace:
                put(f"{p.name}/replace", RO, str(int(p.replace)))
            if k.sysfs_stack_order:
                # stack_order_show: the patch's place in klp_patches, counted from 1
                put(f"{p.name}/stack_order", RO, str(i + 1))
            for obj in p.objects:
                put(f"{p.name}/{obj.name}", DIR)
                if k.sysfs_object_patched:
                    put(f"{p.name}/{obj.name}/patched", RO, str(int(obj.patched)))
                for f in obj.funcs:
                    put(f"{p.name}/{obj.name}/{f.name},1", DIR)
        return out

    def listed(self) -> list[Patch]:
        """klp_patches as sysfs shows it: the installed patches, and before
        5.1 the registered ones that were disabled too, in registration
        order."""
        if not self.kernel.stacking_order:
            return list(self.installed)
        return self.registered + [p for p in self.installed if p not in self.registered]

    def status(self) -> dict:
        """The model's state: per installed patch its flags (enabled,
        transition, forced, replace and stack_order where the kernel shows
        them) and objects, per task its patch_state and pending flag, the
        transition in progress with the tasks that block it and their
        stacks, and "sysfs": what /sys/kernel/livepatch shows (sysfs())."""
        tp = self.transition_patch
        t = self.transition
        return {
            "model": self.name,
            "kernel": self.kernel.name,
            "patches": [{
                "name": p.name, "enabled": p.enabled, "transition": p is tp, "force": p.forced,
                **({"replace": p.replace} if self.kernel.sysfs_replace else {}),
                **({"stack_order": i + 1} if self.kernel.sysfs_stack_order else {}),
                "objects": {o.name: {"patched": o.patched,
                                     "functions": {f.name: {"patched": f.patched, "transition": f.transition,
                                                            "nop": f.nop} for f in o.funcs}}
                            for o in p.objects},
            } for i, p in enumerate(self.installed)],
            "tasks": [{"name": x.name, "tid": x.tid, "patch_state": x.patch_state, "pending": x.pending}
                      for x in self.all_tasks()],
            "transition": None if t is None else {
                "patch": t.patch, "target": transition.verb(t.target), "attempts": t.attempts,
                "blockers": [{"task": name, "stack": stack} for name, stack in t.blockers]},
            "switches": dict(Counter(how for _, _, _, how in self.switches)),
            "sysfs": self.sysfs(),
        }
