"""No consistency: every task runs the new code as soon as the ftrace sites
are enabled (the first version of kernel live patching, and what a naive
ftrace redirect gives). The oracle (emu/runs/oracle.py) finds the mixes
this allows; nothing else needs to agree with it.

Patches stack as that kernel stacked them: one ftrace ops per function
(klp_ops) whose handler takes the newest entry of its func_stack, so the
last enabled patch of a function runs; and its stacking order
(emu/models/stacking.py): only the last enabled patch can be disabled,
only the first disabled one enabled (-EBUSY)."""
from __future__ import annotations

from emu.errors import Busy
from emu.kernel.patch import Patch
from emu.machine.task import PATCHED, UNPATCHED
from emu.models import stacking
from emu.models.base import Model


class Immediate(Model):
    name = "immediate"

    def __init__(self, machine, **kw):
        super().__init__(machine, **kw)
        self.working = False        # an enable's or disable's work is changing the sites
        # klp_patches: registration order, from a patch's first enable (its
        # module's load: klp_register_patch, then klp_enable_patch) on
        self.registered: list[Patch] = []

    @property
    def locked(self) -> bool:
        """The first kernel live patching (4.0 to 4.11) changed the sites
        inside the sysfs write or the patch module's init, holding klp_mutex:
        another enable or disable written meanwhile blocks on the mutex
        and goes on once the sites are changed (a scenario's action waits;
        the Python API raises Busy, as for livepatch's klp_mutex)."""
        return self.working

    def notifier_waits(self) -> bool:
        """A module coming or going while the work of an enable or disable
        changes the sites waits for it (the module loader's ftrace calls
        take ftrace_lock, which the text change holds): the work links the
        functions loaded at the write, and changes their sites."""
        return self.working

    def enable(self, patch: Patch) -> None:
        self.add(patch)
        self.enable_check(patch)
        self._check_stacking(patch, enabling=True)
        funcs = self.loaded_funcs(patch)
        updates = []
        try:
            for f in funcs:
                updates.append(self.ensure_ops(f))     # Busy on an IPMODIFY conflict
        except Busy:
            for f in funcs:
                self.release_ops(f)
            raise
        if patch not in self.registered:
            self.registered.append(patch)
        t = self.record(patch, PATCHED)
        self.working = True
        self.m.spawn(self._switch_in(t, patch, funcs, updates))

    def disable(self, patch: Patch) -> None:
        self.disable_check(patch)
        self._check_stacking(patch, enabling=False)
        t = self.record(patch, UNPATCHED)
        updates = [self.pop(patch, f) for f in self.loaded_funcs(patch)]
        self.mark_objects(patch, False)
        patch.enabled = False
        self.working = True
        self.m.spawn(self._finish(t, updates))

    def _check_stacking(self, patch: Patch, *, enabling: bool) -> None:
        """Busy (-EBUSY) where the first livepatch's stacking order forbids
        the write (stacking.check); the patch being enabled is in the list
        already, not enabled yet."""
        installed = [p for p in self.registered if p.enabled]
        stacking.check(patch, enabling=enabling, registered=self.registered, installed=installed,
                       who="the first livepatch (4.0 to 4.11)")

    def force(self, patch: Patch | None = None) -> None:
        """Nothing to wait for: every task runs the new code once the sites
        change. A force while an enable's or disable's work is pending is
        taken and changes nothing; with none pending it is refused
        (NothingToForce, -EINVAL, force_check)."""
        self.force_check(patch, self.transition_patch_of())

    def _switch_in(self, t, patch: Patch, funcs, updates):
        """A patch's functions change together, in the first step of its
        work (once it has a CPU): every function goes onto its stack and
        the sites it needs that were NOPs get their int3 (text_poke_bp's
        first write, which already sends callers to the trampoline) at one
        instant, a function whose site was already live (patched by a patch
        below) included; with atomic replace the replaced patches come off
        at that instant too. The rest of the text change is one batch."""
        t.started_at = t.checked_at = self.m.now
        for f in funcs:
            self.link(patch, f)
        if patch.replace:
            for other in self.replaced(patch):
                updates += [self.pop(other, g) for g in self.loaded_funcs(other)]
                self.retire(other)
                self.registered.remove(other)   # replaced patches leave klp_patches
        self.mark_objects(patch, True)
        patch.enabled = True
        yield from self.together(updates)
        self._done(t)

    def _finish(self, t, updates):
        """A patch's sites change together: one batch, the same syncs."""
        t.started_at = t.checked_at = self.m.now
        yield from self.together(updates)
        self._done(t)

    def _done(self, t) -> None:
        """The work is done: the modules that came or went meanwhile go
        through their notifiers now."""
        self.finish(t, "completed")
        self.working = False
        self.unlocked()
