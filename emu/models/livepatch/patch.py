"""Putting a patch's functions on (and taking them off) the per-function
stacks of replacements (kernel/livepatch/patch.c: klp_patch_object,
klp_unpatch_object, klp_unpatch_objects).

The stacks and their ftrace ops are the model's (emu.models.base.Model.push
and pop); every function here returns the text updates (generators) that
the caller runs under the livepatch mutex (core.Livepatch.change_text).
"""
from __future__ import annotations

import errno

from emu.errors import Busy
from emu.kernel.patch import Patch, PatchObject


def patch_object(lp, patch: Patch, obj: PatchObject) -> list:
    """klp_patch_object: push every function of obj; on an IPMODIFY
    conflict obj is unpatched again and Busy raised. Returns text updates."""
    updates = []
    for f in obj.funcs:
        if f.old is None:
            continue
        # init set every function in transition; a module unloaded and
        # loaded again during the transition must not lose that
        f.transition = patch is lp.transition_patch
        try:
            updates.append(lp.push(patch, f))
        except Busy:
            lp.printk(f"{lp.prefix}failed to register ftrace handler for function "
                      f"'{f.name}' ({-errno.EBUSY})")
            unpatch_object(lp, patch, obj)
            raise
    obj.patched = True
    return updates


def unpatch_object(lp, patch: Patch, obj: PatchObject, *, nops_only: bool = False) -> list:
    """klp_unpatch_object: pop obj's patched functions (only its nops with
    nops_only, and obj stays patched then). Returns text updates."""
    updates = []
    for f in obj.funcs:
        if f.patched and (f.nop or not nops_only):
            updates.append(lp.pop(patch, f))
    if not nops_only:
        obj.patched = False
    return updates


def unpatch_objects(lp, patch: Patch) -> list:
    """klp_unpatch_objects: every patched object of patch. Returns text updates."""
    updates = []
    for obj in patch.objects:
        if obj.patched:
            updates += unpatch_object(lp, patch, obj)
    return updates
