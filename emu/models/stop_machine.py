"""kpatch's stop_machine model, and Ksplice's conservative variant.

kpatch (kmod/core/core.c): the ftrace ops are registered first, with an
empty function hash, so the handler finds nothing and the old code still
runs; the switch itself is the insertion into that hash, done inside
stop_machine after the activeness safety check: every task's stack (at most
64 entries with x86's end marker; a full trace counts as failure, so 63
addresses fail) and its interrupted RIP are compared with the ranges of the
functions being replaced (the original when patching, the active version
when repatching or unpatching, and when unpatching the patch's own version
too, the replaced patches' functions too with replace). A hit fails the
whole operation with -EBUSY; the kpatch tool retries up to 5 times, 2 s
apart, each time loading the patch module anew: a failed attempt
unregisters the ftrace ops it registered, so the sites are NOPs again
until the next one. Functions marked force are not checked, the
replaced patches' ones included. The handler sends the task to
new_func + 5, past the new function's own fentry NOP.

The pause is measured: the virtual time during which every CPU was stopped
(the check costs `cost_per_task` instructions per task plus
`cost_per_frame` per frame walked). Reaching the stop costs time too: a CPU
stops at its next scheduling point unless the kernel is fully preemptible.

Ksplice (ksplice.c, patch_action): up to 5 stop_machine attempts, each one
that finds the code busy followed by a 1 s sleep (the last one too, before
it gives up); its check scans every word of every kernel stack and each
saved IP (a scan, not an unwind) against the replaced functions, and goes on
through every task, recording each conflict; they are printed once, when it
gives up. Ksplice wrote a jmp over the old function's first bytes;
here it shares the ftrace redirect, which changes nothing the check sees.
Its patch_action() runs the action's pre hooks once, before the attempts
(a failing one ends the action with no attempt), and its post or fail
hooks after them, outside stop_machine (Ksplice._pre_hooks); kpatch's run
inside stop_machine around the switch.

kpatch holds a reference on every module it patches (kpatch_link_object's
try_module_get, when an attempt links the objects loaded by then and when
kpatch_module_notify links a coming one; kpatch_unlink_object's module_put
when the attempt fails or the patch is removed). rmmod of such a module
fails, its exit unrun: delete_module finds it in use (-EWOULDBLOCK). The
patches an atomic replace takes over keep theirs: kpatch_register() drops
them from its list without unlinking their objects. What still goes
through the going path here is a module no patch links, and one whose
init failed (which the kernel frees whatever holds it). kpatch's notifier
ignores a going module; here the going path still waits for an attempt
in progress, as the coming one does, so that no attempt's check reads a
function unbound under it (the kernel would free memory kpatch still
uses). Ksplice's apply_update() refuses an update with a change for a
module that is not loaded (TARGET_NOT_LOADED), takes a reference on each
target module (ref_module) until the update is reversed or fails, and has
no module notifier: a module loaded later is never patched.

Both check every task in one call (emu/models/stacks.py); the pause they
report is what `lpemu bench`'s scaling section (emu/app/bench/scaling.py)
and the README's scaling table show.
"""
from __future__ import annotations

import errno

from emu.engine import unwind
from emu.errors import Busy
from emu.machine.machine import Delay, Release
from emu.machine.machine import StopMachine as _Stop
from emu.kernel import callbacks
from emu.kernel.patch import VMLINUX, Patch, PatchFunc, loaded_objects
from emu.machine.task import PATCHED, UNPATCHED, RunState
from emu.machine.machine import EV_TRANSITION
from emu.models.base import T_SWITCH, Model, first_hit
from emu.models.refusals import refusal
from emu.models.stacks import passed


class StopMachine(Model):
    name = "stop_machine"
    skip_fentry = True
    retries = 5
    retry_delay = 2.0          # seconds between attempts (the kpatch tool's)
    # kpatch_verify_activeness_safety() stops at the first task that fails
    checks_every_task = False
    # each attempt to patch is a new insmod by the kpatch tool: a failed
    # kpatch_register() unregisters the ftrace ops it registered
    # (kpatch_ftrace_remove_func), and the next attempt registers them again
    reloads_per_attempt = True
    trace_depth = 64           # kpatch's MAX_STACK_TRACE_DEPTH: a full trace fails
    # the walk's entries that fit before the buffer is full: x86's
    # __save_stack_trace() appends a ULONG_MAX end marker while there is
    # room, so 63 addresses already fill the 64 entries (nr_entries >=
    # max_entries); the walk fails when it would take one more than this
    max_entries = trace_depth - 2
    prefix = "kpatch: "
    # kpatch_backtrace_address_verify() skips a func marked force
    # (KPATCH_FORCE_UNSAFE at build time); Ksplice has no such flag
    honours_force = True
    # what a switch that went through says, per target: kpatch_register()
    # and kpatch_unregister()
    done_text = {PATCHED: "loaded patch module '{}'", UNPATCHED: "unloaded patch module '{}'"}
    # kpatch_backtrace_address_verify(): unpatching checks the active
    # version of each function (kpatch_get_func(old_addr), the newest in
    # the hash), not necessarily the one the patch being removed brought;
    # and that one too: kpatch_unregister() marks the patch's funcs
    # KPATCH_OP_UNPATCH, and the same check's walk of the hash compares
    # every such func that is not force (ranges)
    unpatch_checks_active = True
    # kpatch_link_object takes a reference on each module it links
    holds_module_refs = True
    # kpatch runs its callbacks inside stop_machine, around the switch;
    # Ksplice's patch_action() runs its pre hooks once before the attempts
    # and its post (or fail) hooks after them (Ksplice._pre_hooks)
    callbacks_in_stop_machine = True
    # kpatch_register(): a patch module with no object is -EINVAL, before
    # kpatch_mutex and the enabled check
    refuses_empty_patch = True

    def __init__(self, machine, *, retries: int | None = None, retry_delay: float | None = None,
                 cost_per_task: int = 200, cost_per_frame: int = 20, **kw):
        super().__init__(machine, **kw)
        if retries is not None:
            self.retries = retries
        if retry_delay is not None:
            self.retry_delay = retry_delay
        self.cost_per_task = cost_per_task
        self.cost_per_frame = cost_per_frame
        self.forcing = False
        # kpatch_mutex, held by each attempt of kpatch_register/unregister:
        # a module coming meanwhile waits in its notifier (kpatch_module_notify
        # takes the mutex) and sees the patch as the attempt left it
        self.registering = False
        # module name -> the patches whose linked object holds a reference on it
        self.module_refs: dict[str, set[str]] = {}

    # ---- operations ----------------------------------------------------------
    def enable(self, patch: Patch) -> None:
        self.add(patch)
        if self.refuses_empty_patch and not patch.objects:
            raise refusal(f"patch '{patch.name}': {self.name}: it patches no object", errno.EINVAL)
        self.enable_check(patch)
        funcs = self.loaded_funcs(patch)
        updates = [self.ensure_ops(f) for f in funcs]       # Busy on an IPMODIFY conflict
        t = self.record(patch, PATCHED)
        self.registering = True         # from the write on (kpatch_register)
        self._take_refs(patch)
        self.m.spawn(self._run(t, patch, PATCHED, funcs, updates))

    def disable(self, patch: Patch) -> None:
        self.disable_check(patch)
        t = self.record(patch, UNPATCHED)
        self.registering = True         # kpatch_unregister
        self.m.spawn(self._run(t, patch, UNPATCHED, self.loaded_funcs(patch), []))

    def force(self, patch: Patch | None = None) -> None:
        """Skip the activeness check at the next attempt of the transition in
        progress (as if every function were marked force). kpatch has no
        force at run time (KPATCH_FORCE_UNSAFE is the function's, at build
        time): a force with no transition in progress is refused as
        livepatch's force_store refuses it (NothingToForce, -EINVAL,
        force_check), and a force ends with its transition, so it never
        reaches a later enable."""
        self.force_check(patch, self.transition_patch_of())
        self.forcing = True

    def finish(self, t, result: str, error: str | None = None) -> None:
        self.forcing = False
        super().finish(t, result, error)

    # ---- the check --------------------------------------------------------------
    def ranges(self, patch: Patch, target: int, funcs):
        out, own = [], []
        for f in funcs:
            if f.force and self.honours_force:
                continue
            # patching: the original, or the version being repatched;
            # unpatching: what runs now (kpatch_get_func(): the newest
            # entry, another patch's when a newer one is on top of f),
            # then, in kpatch's walk of the hash, f's own code (its op is
            # KPATCH_OP_UNPATCH): both, when a newer patch is on top of f
            if target == PATCHED:
                lo, hi = self.replaced_range(f)
            elif self.unpatch_checks_active:
                active = self.active(f)
                lo, hi = self.own_range(active)
                if active is not f:
                    own.append((*self.own_range(f), f.name))
            else:
                lo, hi = self.own_range(f)
            out.append((lo, hi, f.name))
        out += own
        if patch.replace and target == PATCHED:
            # "in the replace case" every KPATCH_OP_UNPATCH func of the hash
            # that is not force (kpatch_backtrace_address_verify)
            for other in self.replaced(patch):
                for g in self.loaded_funcs(other):
                    if not g.nop and not (g.force and self.honours_force):
                        out.append((g.new.start, g.new.end, g.name))
        return out

    def active(self, f: PatchFunc) -> PatchFunc:
        """The newest entry on f's function (f when nothing is above it)."""
        stack = self.stacks.get(f.old.id)
        return stack[0][1] if stack else f

    def check_tasks(self, ranges):
        """The activeness check of every task in one call (see
        emu.models.stacks); check_task reads one task's verdict from it."""
        return self.stack_checks.check(tuple((lo, hi) for lo, hi, _ in ranges), kind=self.m.unwinder,
                                       max_entries=self.max_entries, reliable=False)

    def check_task(self, task, result, ranges):
        """(ok, what hit or why, entries walked, frames of work) for one task
        from its stack check."""
        what = first_hit(result.code, result.entries, ranges)
        return what is None, what, result.entries, len(result.entries)

    def _run(self, t, patch: Patch, target: int, funcs, updates):
        m = self.m
        t.started_at = m.now
        for update in updates:
            yield from update
        if not self.callbacks_in_stop_machine and not self._pre_hooks(t, patch, target):
            yield from self._fail(t, patch, funcs, "pre-patch callback")
            return
        while True:
            t.attempts += 1
            self.registering = True
            # kpatch links every object loaded by now: a module that came
            # since the last attempt has its functions bound (Model.load_module)
            funcs = self.loaded_funcs(patch)
            if target == PATCHED:
                self._link_report(patch)
                self._take_refs(patch)
                try:
                    fresh = [self.ensure_ops(f) for f in funcs]
                except Busy as exc:
                    self.printk(f"{self.prefix}failed to register ftrace handler: {exc}")
                    yield from self._fail(t, patch, funcs, "-EBUSY")
                    return
                for update in fresh:
                    yield from update
            yield _Stop()
            stopped = m.now
            if t.checked_at is None and not self.forcing:
                # every task is where the stop found it; a forced stop
                # skips the check and looks at none
                t.checked_at = stopped
            blockers = []
            cost = 0
            if not self.forcing:
                ranges = self.ranges(patch, target, funcs)
                results = self.check_tasks(ranges)
                for i, task in enumerate(m.tasks):
                    if task.state is RunState.EXITED:
                        continue
                    ok, what, entries, work = self.check_task(task, results[i], ranges)
                    cost += self.cost_per_task + self.cost_per_frame * work
                    if not ok:
                        blockers.append((task, what, entries))
                        if not self.checks_every_task:
                            break
                        cost += self.cost_per_task + self.cost_per_frame * work   # checked again for the report
            yield Delay(cost)
            if not blockers and target == PATCHED and self.callbacks_in_stop_machine and not self._pre_patch(patch):
                yield Release()
                t.pauses.append((stopped, m.now))
                yield from self._fail(t, patch, funcs, "pre-patch callback")
                return
            if not blockers:
                if target == UNPATCHED and self.callbacks_in_stop_machine:
                    self._each_loaded(patch, callbacks.pre_unpatch)
                m.emit(EV_TRANSITION, -1, T_SWITCH, patch.index, int(self.forcing))
                retired = self.replaced(patch) if target == PATCHED and patch.replace else []
                gone = [g for other in retired for g in self.loaded_funcs(other)]
                self._switch(patch, target, funcs)
                post = callbacks.post_patch if target == PATCHED else callbacks.post_unpatch
                if self.callbacks_in_stop_machine:
                    self._each_loaded(patch, post)
                yield Release()
                t.pauses.append((stopped, m.now))
                if not self.callbacks_in_stop_machine:
                    self._each_loaded(patch, post)      # patch_action's post hooks, after stop_machine
                if target == UNPATCHED:
                    for f in funcs:
                        yield from self.release_ops(f)
                    self._drop_refs(patch)          # kpatch_unregister unlinks its objects
                # kpatch_register(), replace: the replaced funcs leave the
                # ftrace filter too (a site nothing patches is a NOP again),
                # and each replaced module is unloaded
                for g in gone:
                    yield from self.release_ops(g)
                for other in retired:
                    self.printk(self.prefix + self.done_text[UNPATCHED].format(other.name))
                t.blockers = []         # earlier attempts' blockers are history now
                self.printk(self.prefix + self.done_text[target].format(patch.name))
                self.finish(t, "completed")
                self._unlock()
                return
            self._report(t, blockers)
            yield Release()
            t.pauses.append((stopped, m.now))
            if target == PATCHED and self.reloads_per_attempt:
                for f in funcs:
                    yield from self.release_ops(f)
            if target == PATCHED:
                self._drop_refs(patch)      # the failed kpatch_register unlinks what it linked
            if t.attempts >= self.retries:
                yield from self._give_up(t, patch, target, blockers)
                if not self.callbacks_in_stop_machine:
                    self._fail_hooks(patch, target)
                if target == PATCHED:
                    for f in funcs:
                        yield from self.release_ops(f)
                self.finish(t, "failed", "-EBUSY")
                self._unlock()
                return
            self._unlock()
            yield Delay(m.seconds(self.retry_delay))

    def _fail(self, t, patch: Patch, funcs, why: str):
        """An enable that ends before its switch: its functions leave the
        ftrace filter, its module references go, the mutex is released."""
        for f in funcs:
            yield from self.release_ops(f)
        self._drop_refs(patch)
        self.finish(t, "failed", why)
        self._unlock()

    # ---- kpatch's references on the modules it patches ----------------------------------------
    def _take_refs(self, patch: Patch) -> None:
        """kpatch_link_object: a reference on each loaded module patch has an object for."""
        if not self.holds_module_refs:
            return
        loaded = loaded_objects(self.m)
        for obj in patch.objects:
            if obj.name != VMLINUX and obj.name in loaded:
                self.module_refs.setdefault(obj.name, set()).add(patch.name)

    def _drop_refs(self, patch: Patch, module: str | None = None) -> None:
        """kpatch_unlink_object: patch's references (on module only, when given) go."""
        for name in [module] if module is not None else list(self.module_refs):
            holders = self.module_refs.get(name)
            if holders is not None:
                holders.discard(patch.name)
                if not holders:
                    del self.module_refs[name]

    def check_remove(self, image) -> None:
        """delete_module of a module kpatch holds a reference on: in use
        (-EWOULDBLOCK), and it stays."""
        super().check_remove(image)
        holders = self.module_refs.get(image.name)
        if holders:
            raise refusal(f"Module {image.name} is in use: {self.prefix.rstrip(': ')} holds a reference on it for "
                          f"{', '.join(repr(h) for h in sorted(holders))}", errno.EWOULDBLOCK)

    def _link_report(self, patch: Patch) -> None:
        """kpatch_register() links each object before its stop_machine and
        says so: a module not loaded yet waits for kpatch_module_notify()."""
        loaded = loaded_objects(self.m)
        for obj in patch.objects:
            if obj.name not in loaded:
                self.printk(f"{self.prefix}delaying patch of unloaded module '{obj.name}'")
            elif obj.name != VMLINUX:
                self.printk(f"{self.prefix}patching module '{obj.name}'")

    def _unlock(self) -> None:
        """The attempt releases kpatch_mutex: the modules that came meanwhile
        go through the notifier now (Model.unlocked; linked when the patch
        is applied)."""
        self.registering = False
        self.unlocked()

    def notifier_waits(self) -> bool:
        """A module coming or going while an attempt holds kpatch_mutex
        waits for it (kpatch_module_notify takes the mutex; the attempt
        linked the objects loaded when it began, kpatch_link_object taking
        a reference on each module): its notifier comes once the attempt
        released it. (Only the notifier waits: the mutex is not `locked`
        for the scenario's other actions, which kpatch's sysfs and the
        kpatch tool take between attempts.)"""
        return self.registering

    def _pre_hooks(self, t, patch: Patch, target: int) -> bool:
        """Hooks before the first attempt, outside stop_machine: none for
        kpatch, whose callbacks run inside it (callbacks_in_stop_machine)."""
        return True

    def _fail_hooks(self, patch: Patch, target: int) -> None:
        """Hooks after an action that failed: none for kpatch (a refused
        pre_patch is undone inside stop_machine, _pre_patch)."""

    # ---- kpatch's callbacks: inside stop_machine, around the switch -------------------
    def _each_loaded(self, patch: Patch, callback) -> None:
        loaded = loaded_objects(self.m)
        for obj in patch.objects:
            if obj.name in loaded:
                callback(self.m, patch, obj)

    def _pre_patch(self, patch: Patch) -> bool:
        """kpatch_apply_patch after the activeness check: every loaded
        object's pre_patch; one refusal undoes the others with their
        post_unpatch and fails the load."""
        done = []
        for obj in patch.objects:
            if obj.name not in loaded_objects(self.m):
                continue
            if callbacks.pre_patch(self.m, patch, obj):
                self.printk(f"{self.prefix}pre-patch callback failed!")
                for other in done:
                    callbacks.post_unpatch(self.m, patch, other)
                return False
            done.append(obj)
        return True

    def coming_patches(self, name: str) -> list[Patch]:
        """kpatch_module_notify_coming() walks kpmod_list (the applied
        patches, oldest first) for the first object named after the module
        that is not linked yet, and links that one alone (goto done): a
        second applied patch with an object for the same module is never
        linked at this load, and, since the first link holds a reference on
        the module, at no later one either. A patch whose attempts are still
        under way is not in kpmod_list between them: module_coming leaves it
        to its next attempt (it is bound here all the same)."""
        out, linked = [], False
        for p in self.module_patches():
            if p.object(name) is None or (p.enabled and linked):
                continue
            linked = linked or p.enabled
            out.append(p)
        return out

    def module_coming(self, patch: Patch, obj, funcs) -> list:
        """kpatch_module_notify_coming: an applied patch's object for the
        coming module is linked (a reference on the module taken), "patching
        newly loaded module" said, its pre_patch callback runs (a refusal
        leaves the functions out of the handler's hash, the object linked
        and the module held: a notifier cannot stop the load, it WARNs),
        its functions go into the hash, then post_patch."""
        if not patch.enabled:
            return []
        # kpatch_link_object first: the reference on the module is taken
        # (and kept until the patch goes) whatever pre_patch answers
        self._take_refs(patch)
        self.printk(f"{self.prefix}patching newly loaded module '{obj.name}'")
        err = callbacks.pre_patch(self.m, patch, obj)
        if err:
            self.printk(f"{self.prefix}pre-patch callback failed!")
            self.printk(f"error ({err}) patching newly loaded module '{obj.name}'")     # the WARN
            self.unlinked.add((patch.index, obj.name))      # its functions never take effect
            return []
        updates = self.push_all(patch, funcs)
        obj.patched = True
        callbacks.post_patch(self.m, patch, obj)
        return updates

    def module_going(self, patch: Patch, obj) -> list:
        """kpatch's going notifier: pre_unpatch, the object unlinked, then
        post_unpatch (only after a pre_patch that did not refuse)."""
        if obj.patched:
            callbacks.pre_unpatch(self.m, patch, obj)
        self._drop_refs(patch, obj.name)
        updates = super().module_going(patch, obj)
        callbacks.post_unpatch(self.m, patch, obj)
        return updates

    def _give_up(self, t, patch: Patch, target: int, blockers):
        """The last attempt failed: what the kpatch tool says as it gives
        up (a work: Ksplice waits first)."""
        self.printk(f"{self.prefix}failed to {'load' if target == PATCHED else 'unload'} "
                    f"patch module '{patch.name}' after {t.attempts} attempts (-16)")
        return
        yield

    def _report(self, t, blockers) -> None:
        """An attempt failed on blockers ([(task, what hit, entries)]; kpatch
        stops at the first)."""
        task, what, entries = blockers[0]
        stack = self.describe_stack(task, entries)
        t.block(self.m.now, [(task.name, stack)])
        if what == unwind.REASONS[unwind.WALK_TOO_DEEP]:
            self.printk(f"{self.prefix}more than {self.trace_depth} trace entries!")
        else:
            self.printk(f"{self.prefix}activeness safety check failed for {what}")
        # kpatch_verify_activeness_safety(): the task, then its saved trace
        # ("PID: %d Comm: %.20s", "  [<%pK>] %pB"); a comm holds 15 characters
        self.printk(f"{self.prefix}PID: {task.tid} Comm: {task.name[:15]}")
        for addr in entries:
            self.printk(f"{self.prefix}  [<{addr:016x}>] {self.m.symbolize_pb(addr)}")

    def _switch(self, patch: Patch, target: int, funcs) -> None:
        """Inside stop_machine: insert into (or remove from) the handler's hash."""
        if target == PATCHED:
            for f in funcs:
                self.link(patch, f)
            if patch.replace:
                for other in self.replaced(patch):
                    for g in self.loaded_funcs(other):
                        self.unlink(g)
                    self.retire(other)
        else:
            for f in funcs:
                self.unlink(f)
        self.mark_objects(patch, target == PATCHED)
        patch.enabled = target == PATCHED


class Ksplice(StopMachine):
    name = "ksplice"
    skip_fentry = False
    retries = 5
    retry_delay = 1.0
    prefix = "ksplice: "
    unpatch_checks_active = False     # its reversal checks the update's own code
    # check_address() compares each word with every safety record of the
    # update: no function is left out (kpatch's force flag means nothing)
    honours_force = False
    # apply_update() and reverse_update() (a patch an atomic replace takes
    # off is reversed: Ksplice itself had no atomic replace)
    done_text = {PATCHED: "Update {} applied successfully", UNPATCHED: "Update {} reversed successfully"}
    # check_each_task() goes on past a task that fails: every conflict of
    # the attempt is recorded (check_task() again, with rerun)
    checks_every_task = True
    # patch_action() retries within one load of the update
    reloads_per_attempt = False
    # apply_update(): ref_module(new_code_mod, target) for each target
    # module, held until the update's modules go (a failed or reversed
    # update: ksplice-apply and ksplice-undo unload them)
    holds_module_refs = True
    callbacks_in_stop_machine = False
    refuses_empty_patch = False

    def enable(self, patch: Patch) -> None:
        """apply_update(): an update with a change for a module that is not
        loaded (find_module() finds none, or it is not live: going, its
        rmmod under way) aborts with
        TARGET_NOT_LOADED before anything happens, unless the update is
        partial (not modelled: ksplice-apply's default); Ksplice never
        patches a module that loads later (a cold update)."""
        self.add(patch)
        loaded = loaded_objects(self.m)
        missing = [o.name for o in patch.objects if o.name not in loaded or self.loaders.get(o.name) == "going"]
        if missing:
            self.busy_check(patch)
            # the stage write itself succeeds; lpemu reports the abort as a refusal
            raise refusal(f"patch '{patch.name}': ksplice: update aborted, its target module '{missing[0]}' "
                          f"is not loaded (abort_cause target_not_loaded; the write to stage succeeds)",
                          errno.ENOENT)
        super().enable(patch)

    @property
    def locked(self) -> bool:
        """stage_store() holds module_mutex across the whole apply_update()
        (or reverse_update()): its five attempts and the sleeps between
        them. A write to another update's stage, an insmod or an rmmod
        (load_module and delete_module take module_mutex) waits until the
        update is done, applied or aborted. lpemu's force of the
        stop_machine models (skip the check at the next attempt) waits too:
        Ksplice had no such knob, so under it a force comes too late to
        help the update in progress."""
        return self.transition is not None

    def notifier_waits(self) -> bool:
        return self.locked or self.registering

    def _unlock(self) -> None:
        """Between attempts the update still holds module_mutex (locked):
        a module coming or going meanwhile waits for the end of the whole
        update, not for the end of the attempt."""
        self.registering = False
        if not self.locked:
            self.unlocked()

    def module_going(self, patch: Patch, obj) -> list:
        """Ksplice has no module notifier: a going module (one whose init
        failed: an applied update holds its targets) runs no callback; the
        update's reference on it goes with it."""
        self._drop_refs(patch, obj.name)
        return Model.module_going(self, patch, obj)

    def module_coming(self, patch: Patch, obj, funcs) -> list:
        """Ksplice has no module notifier: a module loaded after an update
        was applied runs its code from disk, unpatched (a cold update; its
        reversal would then abort with COLD_UPDATE_LOADED)."""
        return []

    def _pre_hooks(self, t, patch: Patch, target: int) -> bool:
        """patch_action(): the pre hooks of the action (pre_patch when
        applying, pre_unpatch when reversing) run once, before the first
        stop_machine attempt, in the writer's context; one that fails ends
        the action at once (CALL_FAILED: no attempt), and the fail hooks
        run (_fail_hooks). Ksplice prints nothing for it: the update's
        abort_cause reads call_failed."""
        if target == UNPATCHED:
            self._each_loaded(patch, callbacks.pre_unpatch)
            return True
        loaded = loaded_objects(self.m)
        for obj in patch.objects:
            if obj.name in loaded and callbacks.pre_patch(self.m, patch, obj):
                self._fail_hooks(patch, target)
                return False
        return True

    def _fail_hooks(self, patch: Patch, target: int) -> None:
        """patch_action()'s fail hooks, after an action that did not
        happen: here the callbacks that undo the pre hook, post_unpatch of
        each object whose pre_patch succeeded after a failed apply (as
        livepatch and kpatch undo a refused patch), post_patch after a
        failed reversal (the update stays applied)."""
        self._each_loaded(patch, callbacks.post_unpatch if target == PATCHED else callbacks.post_patch)

    def _report(self, t, blockers) -> None:
        """A failed attempt only records its conflicts (update->conflicts);
        patch_action() prints those of the last attempt when it gives up."""
        t.block(self.m.now, [(task.name, self.describe_stack(task, entries)) for task, _, entries in blockers])

    def _give_up(self, t, patch: Patch, target: int, blockers):
        """patch_action(): after each attempt that found the code busy,
        the 5th included, it sleeps 1 s (schedule_timeout); then
        print_conflicts() and the abort. Ksplice's conflict line lists every
        word it checked of the task, each conflicting one followed by
        [<-CONFLICT]; here the line holds the conflicting ones (the rip, the
        first stack word in a range)."""
        yield Delay(self.m.seconds(self.retry_delay))
        for task, what, entries in blockers:
            words = " ".join(f"{a:x} [<-CONFLICT]" for a in self._conflicts(entries, what))
            self.printk(f"{self.prefix}stack check: pid {task.tid} ({task.name[:15]}): {words}")
        self.printk(f"{self.prefix}Aborted {patch.name}.  stack check: to-be-"
                    f"{'replaced' if target == PATCHED else 'reversed'} code is busy.")

    def _conflicts(self, entries, what) -> list[int]:
        """Of a failed check's entries (the rip, then the word that hit),
        the ones in the range named what."""
        fn = self.m.symbols.function_at
        hits = [a for a in entries if (f := fn(a)) is not None and f.name == what]
        return hits or list(entries[-1:])

    def check_tasks(self, ranges):
        return self.stack_checks.check(tuple((lo, hi) for lo, hi, _ in ranges), kind="scan", max_entries=2,
                                       reliable=False)

    def check_task(self, task, result, ranges):
        """Every saved IP and every stack word, not an unwind (a word scan
        costs an eighth of a frame walk). The scan stops at the rip when that
        is in a range; a task that fails is scanned again whole, so that the
        report names the first range (in order) that the rip or the word hit."""
        work = (task.stack_hi - result.rsp) // 64
        if passed(result, reliable=False):
            return True, None, [result.rip], work
        rip, _, hit = self.m.scan_stack(task, [(lo, hi) for lo, hi, _ in ranges])
        for lo, hi, name in ranges:
            if lo <= rip < hi:
                return False, name, [rip], work
            if hit is not None and lo <= hit[1] < hi:
                return False, name, [rip, hit[1]], work
        raise AssertionError("the stack check and the scan disagree")
