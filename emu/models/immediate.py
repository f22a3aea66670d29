"""No consistency: every task runs the new code as soon as the ftrace sites
are enabled (the first version of kernel live patching, and what a naive
ftrace redirect gives). The oracle (emu/runs/oracle.py) finds the mixes
this allows; nothing else needs to agree with it."""
from __future__ import annotations

from emu.kernel.patch import Patch
from emu.machine.task import PATCHED, UNPATCHED
from emu.models.base import Model


class Immediate(Model):
    name = "immediate"

    def enable(self, patch: Patch) -> None:
        self.add(patch)
        self.busy_check(patch)
        t = self.record(patch, PATCHED)
        updates = self.push_all(patch, self.loaded_funcs(patch))
        if patch.replace:       # the replaced patches go at once
            for other in self.replaced(patch):
                updates += [self.pop(other, g) for g in self.loaded_funcs(other)]
                self.retire(other)
        self.mark_objects(patch, True)
        patch.enabled = True
        self.m.spawn(self._finish(t, updates))

    def disable(self, patch: Patch) -> None:
        self.disable_check(patch)
        t = self.record(patch, UNPATCHED)
        updates = [self.pop(patch, f) for f in self.loaded_funcs(patch)]
        self.mark_objects(patch, False)
        patch.enabled = False
        self.m.spawn(self._finish(t, updates))

    def force(self, patch: Patch | None = None) -> None:
        """Nothing to force: there is no transition to wait for."""

    def _finish(self, t, updates):
        """A patch's sites change together: one batch, the same syncs."""
        t.started_at = self.m.now
        yield from self.together(updates)
        self.finish(t, "completed")
