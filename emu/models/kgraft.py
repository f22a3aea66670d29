"""kGraft: lazy migration between two universes, per task.

Every task starts flagged "old universe"; the handler sends a flagged task
to the old code and the others to the new code (inverted when reverting).
A task migrates at its kernel/user boundary, a kthread at its safe point
(kGraft's try_to_freeze()), an idle task in its idle loop. Once the code
is changed every kthread is woken (kgr_wakeup_kthreads()), so a sleeping
one reaches its safe point without waiting for its sleep to end. There are no
stack checks at all: a whole system call runs in one universe, which is why
the seed's mix of an old bar and a new baz cannot happen here.

Completion is kGraft's last form (kgr_work_fn()): the first check comes
KGR_TIMEOUT seconds after the code is changed, and so does every next one.
A check that finds a task still in progress says so, once per transition
("kgr: still in progress after timeout, will keep trying every 2 seconds"),
and kgr_send_fake_signal() wakes every task still in progress: a kthread
(wake_up_process(), which ends an uninterruptible sleep too) runs on to its
safe point, a user task (signal_wake_up(), a fake signal) leaves an
interruptible sleep and migrates at its kernel exit. A task that never
reaches its boundary (a kthread with no safe point, a task that stays busy
in the kernel) still stalls the transition, visibly: pending tasks stay in
status().

kgr_modify_kernel() refuses, in this order: a patch still referenced
(-EBUSY "kgr: can't patch, this patch is still referenced"), then
anything while a patching is not finalized (-EAGAIN "kgr: can't patch,
another patching not yet finalized"). The references are kgraft.c's
patch->refs: every patch on kgr_patches (the finalized applied ones) gains
one when another patch that is not replace_all starts to be applied
(kgr_refs_inc, at the write, before the new one is finalized), and loses
it when a patch's revert is finalized (kgr_refs_dec): only the newest
applied patch can be reverted, and not even it while a newer one is being
applied. A replace_all patch takes none, and the patches it replaces
leave kgr_patches with the references they had (kgr_remove_patches_fast),
so a replaced patch that still had one is refused -EBUSY, the others
-EINVAL ("this one was already reverted").

kGraft's per-task flag is the machine's patch_state: a flagged task has the
state opposite to the target, exactly as livepatch's init gives it
(emu/models/livepatch/transition.py), so the redirect's choice
(csrc/redirect.c) is the same code for both models.
"""
from __future__ import annotations

import errno

from emu.machine.machine import Delay
from emu.kernel.patch import Patch, PatchFunc
from emu.machine.task import PATCHED, UNDEFINED, UNPATCHED, RunState, Task
from emu.models.base import Model
from emu.models.refusals import refusal


#: include/linux/kgraft.h: seconds from the code change to the first
#: completion check, and between two checks
KGR_TIMEOUT = 2


class KGraft(Model):
    name = "kgraft"
    prefix = "kgr: "                 # kernel/kgraft.c's pr_fmt
    # a kGraft patch is applied by loading its module (kgr_patch_kernel in
    # its init): loading it again finds it loaded
    enable_again_errno = errno.EEXIST

    def __init__(self, machine, **kw):
        super().__init__(machine, **kw)
        self.target = UNDEFINED
        self.current: Patch | None = None
        self.immutable = False       # kgr_immutable: no migration while the code is being changed
        self.nops: dict[str, list[PatchFunc]] = {}   # a replace patch's nops, by patch name
        self.applied: list[Patch] = []   # kgr_patches: the finalized applied patches, oldest first
        self.refs: dict[str, int] = {}   # patch->refs, by patch name

    def busy_check(self, patch: Patch) -> None:
        t = self.transition
        if t is not None:
            raise refusal(f"patch '{patch.name}': kgr: can't patch, another patching not yet finalized "
                          f"('{t.patch}' in progress)", errno.EAGAIN)

    def disable_check(self, patch: Patch) -> None:
        """kgr_modify_kernel(revert): a patch still referenced is refused
        before anything else (patch->refs, -EBUSY)."""
        refs = self.refs.get(patch.name, 0)
        if refs:
            raise refusal(f"patch '{patch.name}': kgr: can't patch, this patch is still referenced "
                          f"({refs} reference{'s' if refs > 1 else ''})", errno.EBUSY)
        super().disable_check(patch)

    def enable(self, patch: Patch) -> None:
        self.add(patch)
        self.enable_check(patch)
        funcs = self.loaded_funcs(patch) + self._replace_nops(patch)
        for f in funcs:
            f.transition = True
        updates = self.push_all(patch, funcs)
        if not patch.replace:
            # kgr_refs_inc(): every patch on kgr_patches, once the code is in
            for p in self.applied:
                self.refs[p.name] = self.refs.get(p.name, 0) + 1
        self._start(patch, PATCHED, updates)

    def _replace_nops(self, patch: Patch) -> list[PatchFunc]:
        """Atomic replace: the functions of the patches it replaces that it
        does not carry get a nop (the new universe runs the original)."""
        if not patch.replace:
            return []
        carried = {f.old.id for f in self.loaded_funcs(patch)}
        nops, seen = [], set()
        for other in self.replaced(patch):
            for g in self.loaded_funcs(other):
                if g.old.id not in carried and g.old.id not in seen:
                    seen.add(g.old.id)
                    nops.append(PatchFunc(g.name, g.object, None, old=g.old))
        self.nops[patch.name] = nops
        return nops

    def disable(self, patch: Patch) -> None:
        self.disable_check(patch)
        for f in self.loaded_funcs(patch):
            f.transition = True
            self.sync(f)
        self._start(patch, UNPATCHED, [])

    def force(self, patch: Patch | None = None) -> None:
        """kGraft's forced unmark: migrate every task now. With no patch in
        progress it is refused as livepatch's force_store refuses it
        (NothingToForce, -EINVAL, force_check)."""
        self.force_check(patch, self.current)
        for task in self.all_tasks():
            self._migrate(task, "force")

    def module_coming(self, patch: Patch, obj, funcs) -> list:
        """kGraft's module hook: a coming module's functions of an applied
        patch are patched at once; during a transition they take the
        per-universe path like the patch's other functions (a task still
        flagged runs the old code), and the transition's end settles them.
        That is kGraft's last form (kgr_patch_code_delayed: the slow stub
        while the patch is in progress, so that a module's function and the
        core functions it calls come from one universe); its first form put
        them on the fast stub, the new code for every task."""
        in_transition = patch is self.current
        if not (patch.enabled or in_transition):
            return []
        for f in funcs:
            f.transition = in_transition
        updates = self.push_all(patch, funcs)
        obj.patched = True
        return updates + self._coming_nops(patch, funcs)

    def _coming_nops(self, patch: Patch, funcs) -> list:
        """kgr_patch_code_delayed(): a coming module's function of a
        finalized patch that the replace_all patch in progress does not
        carry goes to KGR_PATCH_REVERT_SLOW with loc_old = loc_name, the
        original: a migrated task runs the original, a task still in the
        old universe the finalized patch's version, as for the functions
        the replace reverted at its start (kgr_revert_replaced_funs). Here:
        a nop of the replace on top, in transition, taken off with the
        replaced patches when it is finalized. Returns text updates."""
        cur = self.current
        if cur is None or cur is patch or not cur.replace or self.target != PATCHED:
            return []
        nops = self.nops.setdefault(cur.name, [])
        carried = {f.old.id for f in self.loaded_funcs(cur)}
        for n in nops:       # an older patch's nop stays on top of this patch's version
            if n.old.id in {f.old.id for f in funcs} and n.patched:
                self.unlink(n)
                n.transition = True
                self.link(cur, n)
        have = {n.old.id for n in nops}
        new = [PatchFunc(f.name, f.object, None, old=f.old, transition=True) for f in funcs
               if f.old.id not in carried | have]
        nops += new
        return self.push_all(cur, new)

    def module_going(self, patch: Patch, obj) -> list:
        """The patch's functions of a going module come off
        (kgr_forced_code_patch_removal), and so do the nops the replace in
        progress holds for them (__kgr_handle_going_module also walks the
        patch in progress)."""
        updates = super().module_going(patch, obj)
        cur = self.current
        if cur is not None and cur is not patch and cur.name in self.nops:
            gone = [n for n in self.nops[cur.name] if n.object == obj.name]
            self.nops[cur.name] = [n for n in self.nops[cur.name] if n.object != obj.name]
            updates += [self.pop(cur, n) for n in gone if n.patched]
        return updates

    def _start(self, patch: Patch, target: int, updates) -> None:
        t = self.record(patch, target)
        self.printk(f"{self.prefix}{'apply' if target == PATCHED else 'revert'}ing patch '{patch.name}'")
        self.current, self.target = patch, target
        for task in self.all_tasks():
            if task.state is not RunState.EXITED:
                self.m.set_patch_state(task, UNPATCHED if target == PATCHED else PATCHED)
                task.pending = True
        self.immutable = True      # from the write on, until the work's text is done
        self.m.spawn(self._work(t, patch, target, updates))

    def _migrate(self, task: Task, route: str) -> None:
        if task.pending and self.current is not None and not self.immutable:
            task.pending = False
            self.m.set_patch_state(task, self.target, route)

    @property
    def hooks_inert(self) -> bool:
        """While the code is being changed no task migrates: the switch
        points need not come to Python (Machine: listeners)."""
        return self.immutable

    def fork_target(self) -> int | None:
        return self.target if self.current is not None else None

    def on_kernel_exit(self, task: Task) -> None:
        self._migrate(task, "kernel_exit")

    def on_safe_point(self, task: Task) -> None:
        self._migrate(task, "safe_point")

    def on_idle(self, cpu, idle: Task) -> None:
        self._migrate(idle, "idle")

    def on_freezable_sleep(self, task: Task) -> None:
        """A freezable wait passes try_to_freeze(): a kthread's safe point.
        A user task migrates only at its kernel/user boundary."""
        if task.kind.value == "kthread":
            self._migrate(task, "safe_point")

    def _work(self, t, patch: Patch, target: int, updates):
        t.started_at = t.checked_at = self.m.now
        self.immutable = True
        for update in updates:
            yield from update
        self.immutable = False
        # kgr_wakeup_kthreads(): every kthread is woken (wake_up_process(),
        # "they will clean the progress flag"): a sleeping one runs on to
        # its next safe point instead of sleeping through the transition.
        # wake_up_process() wakes TASK_NORMAL, an uninterruptible sleep too
        for task in self.all_tasks():
            if task.kind.value == "kthread" and task.pending:
                self.m.wake(task, early=True)
        # queue_delayed_work(kgr_wq, &kgr_work, KGR_TIMEOUT * HZ): the checks
        step = self.m.seconds(KGR_TIMEOUT)
        printed = False
        while True:
            yield Delay(step)
            t.attempts += 1
            # An idle task runs no patched code: it crosses its idle loop
            # as soon as its CPU idles, and a busy CPU is not running it.
            for cpu in self.m.cpus:
                self._migrate(cpu.idle, "idle")
            left = [x for x in self.all_tasks() if x.pending and x.state is not RunState.EXITED]
            if not left:
                break
            t.block(self.m.now, [(x.name, self.m.backtrace(x) if not x.is_idle else []) for x in left])
            if not printed:
                self.printk(f"{self.prefix}still in progress after timeout, will keep trying every "
                            f"{KGR_TIMEOUT} seconds")
                printed = True
            # kgr_send_fake_signal(): a kthread still in progress is woken,
            # a user task gets a fake signal (the idle tasks are no threads
            # of a process: their CPUs' idling migrates them)
            for x in left:
                if x.kind.value == "kthread":
                    self.m.wake(x, early=True)         # wake_up_process(): any sleep
                elif not x.is_idle:
                    self.m.signal(x)                   # signal_wake_up(): interruptible only
        nops = self.nops.pop(patch.name, []) if target == PATCHED else []
        for f in self.loaded_funcs(patch) + nops:
            f.transition = False
            self.sync(f)
        if target == UNPATCHED:
            for update in [self.pop(patch, f) for f in self.loaded_funcs(patch)]:
                yield from update
        elif patch.replace:
            # the replaced patches and the nops go; sites left with nothing to
            # redirect go back to NOPs
            replaced = self.replaced(patch)
            gone = [(other, g) for other in replaced for g in self.loaded_funcs(other)]
            for other in replaced:
                self.retire(other)
                if other in self.applied:
                    self.applied.remove(other)
            for update in [self.pop(other, g) for other, g in gone] + [self.pop(patch, f) for f in nops]:
                yield from update
        for task in self.all_tasks():
            self.m.set_patch_state(task, UNDEFINED, "complete")
            task.pending = False
        self.mark_objects(patch, target == PATCHED)
        patch.enabled = target == PATCHED
        if patch in self.applied:
            self.applied.remove(patch)
        if target == PATCHED:
            self.applied.append(patch)
        else:
            # kgr_refs_dec(): every patch left on kgr_patches
            for p in self.applied:
                self.refs[p.name] = self.refs.get(p.name, 0) - 1
        t.blockers = []
        self.current, self.target = None, UNDEFINED
        self.printk(f"{self.prefix}patching succeeded")
        self.finish(t, "completed")
