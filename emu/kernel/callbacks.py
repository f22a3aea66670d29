"""The four per-object callbacks of a live patch (the kernel's
klp_pre_patch_callback and its siblings, kernel/livepatch/core.h; kpatch's
KPATCH_PRE_PATCH_CALLBACK and friends have the same four with the same
post_unpatch rule).

A callback is fn(machine, patch, object) from the scenario's [[patch]]
table (emu.kernel.patch); pre_patch may refuse with a negative errno. Who
calls them, and when, is each model's: upstream livepatch's order is in
emu/models/livepatch (core.py at enable and disable, transition.py at
completion, notifiers.py at module loads and unloads); kpatch's is in
emu/models/stop_machine.py (inside stop_machine, around the switch).
"""
from __future__ import annotations

from emu.errors import check_int
from emu.kernel.patch import Patch, PatchObject


def pre_patch(machine, patch: Patch, obj: PatchObject) -> int:
    """Run obj's pre_patch callback -> 0 or its -errno (None counts as 0).
    post_unpatch runs later only after a pre_patch that did not refuse.
    TypeError or ValueError naming the callback when it returns anything
    but a C int, as when it raises."""
    fn = obj.callbacks.get("pre_patch")
    ret = fn(machine, patch, obj) if fn else 0
    ret = 0 if ret is None else check_int(ret, f"patch '{patch.name}': {obj.name}: the pre_patch callback's "
                                               f"return value (0 or -errno)", -2**31, 2**31 - 1)
    obj.callbacks_enabled = not ret
    return ret


def post_patch(machine, patch: Patch, obj: PatchObject) -> None:
    fn = obj.callbacks.get("post_patch")
    if fn:
        fn(machine, patch, obj)


def pre_unpatch(machine, patch: Patch, obj: PatchObject) -> None:
    fn = obj.callbacks.get("pre_unpatch")
    if fn:
        fn(machine, patch, obj)


def post_unpatch(machine, patch: Patch, obj: PatchObject) -> None:
    fn = obj.callbacks.get("post_unpatch")
    if fn and obj.callbacks_enabled:
        fn(machine, patch, obj)
    obj.callbacks_enabled = False
