"""Modules coming and going while patches are installed (kernel/livepatch/
core.c: klp_module_coming, klp_module_going and
klp_cleanup_module_patches_limited).

A module's objects are patched when it loads and unpatched when it goes,
with the callbacks the kernel runs there (callbacks.py) and the text
changes under the livepatch mutex (core.Livepatch.change_text). A patch
that refuses the module makes the load fail, and what the earlier patches
did to it is undone. The states a module's callbacks see while it is
between the notifiers are lp.module_states (core.Livepatch.module_state
reads them).
"""
from __future__ import annotations

import errno

from emu.errors import Busy, PatchError
from emu.kernel.patch import Patch, resolve
from emu.kernel import callbacks
from emu.models.livepatch.patch import patch_object, unpatch_object
from emu.models.refusals import refusal

MODULE_COMING, MODULE_LIVE, MODULE_GOING = "COMING", "LIVE", "GOING"


def module_coming(lp, image, init=None):
    """klp_module_coming: map the module (unless it is mapped already) and
    apply every installed patch to it; then call init() (its module_init):
    at once, or, when patched sites of the module must first be enabled,
    from a machine work once they are. Raises Busy / PatchRefused when a
    patch refuses the module; it is then not loaded."""
    lp.m.load(image)          # maps it, or makes an unloaded module known again
    name = image.name
    lp.module_states[name] = MODULE_COMING
    updates: list = []
    failed = None
    for patch in list(lp.installed):
        obj = patch.object(name)
        if obj is None:
            continue
        try:
            resolve(lp.m, patch)
        except PatchError:
            lp.printk(f"{lp.prefix}failed to initialize patch '{patch.name}' for module '{name}' "
                      f"({-errno.EINVAL})")
            failed = (patch, obj, -errno.EINVAL)
            break
        lp.printk(f"{lp.prefix}applying patch '{patch.name}' to loading module '{name}'")
        err = callbacks.pre_patch(lp.m, patch, obj)
        if err:
            lp.printk(f"{lp.prefix}pre-patch callback failed for object '{obj.name}'")
            failed = (patch, obj, err)
            break
        try:
            updates += patch_object(lp, patch, obj)
        except Busy:
            lp.printk(f"{lp.prefix}failed to apply patch '{patch.name}' to module '{name}' "
                      f"({-errno.EBUSY})")
            callbacks.post_unpatch(lp.m, patch, obj)
            failed = (patch, obj, -errno.EBUSY)
            break
        if patch is not lp.transition_patch:
            callbacks.post_patch(lp.m, patch, obj)
    if failed is not None:
        patch, obj, err = failed
        lp.printk(f"{lp.prefix}patch '{patch.name}' failed for module '{name}', "
                  f"refusing to load module '{name}'")
        for f in obj.funcs:
            f.old = None
        cleanup_module(lp, name, limit=patch)   # its text was never changed: drop the updates
        lp.module_states.pop(name, None)
        lp.m.unload(image)
        raise refusal(f"module '{name}' refused by patch '{patch.name}'", err)
    if updates:
        # module_init runs once the module's patched sites are ready
        lp.hold_mutex()                 # the loader holds klp_mutex until its text is done
        lp.m.spawn(_coming_work(lp, name, updates, init))
        return
    if init is not None:
        init()
    lp.module_states.pop(name, None)


def module_going(lp, image, exit=None) -> None:
    """klp_module_going: exit() (its module_exit), then revert every patch
    from it, then unmap it by name."""
    name = image.name
    lp.module_states[name] = MODULE_GOING
    if exit is not None:
        exit()
    updates = cleanup_module(lp, name, limit=None)
    lp.module_states.pop(name, None)
    lp.m.unload(image)
    if updates:
        lp.hold_mutex()                 # klp_mutex, until the work's text is done
        lp.m.spawn(lp.change_text(updates))


def cleanup_module(lp, name: str, *, limit: Patch | None) -> list:
    """klp_cleanup_module_patches_limited: revert every installed patch (up
    to limit) from module name. Returns text updates."""
    updates = []
    for patch in lp.installed:
        if patch is limit:
            break
        obj = patch.object(name)
        if obj is None:
            continue
        if patch is not lp.transition_patch:
            callbacks.pre_unpatch(lp.m, patch, obj)
        lp.printk(f"{lp.prefix}reverting patch '{patch.name}' on unloading module '{name}'")
        updates += unpatch_object(lp, patch, obj)
        callbacks.post_unpatch(lp.m, patch, obj)
        for f in obj.funcs:
            f.old = None
    return updates


def _coming_work(lp, name: str, updates, init):
    yield from lp.change_text(updates)
    if init is not None:
        init()
    lp.module_states.pop(name, None)
