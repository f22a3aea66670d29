"""The stacking order of the first livepatch (kernel/livepatch/core.c, 4.0
to 5.0): __klp_enable_patch() and __klp_disable_patch() "enforce stacking"
over klp_patches, every registered patch in registration order, disabled
ones included until their module's exit unregisters them: only the first
disabled patch can be enabled, only the last enabled one disabled, -EBUSY
otherwise. Two models keep it: `immediate` (4.0 to 4.11, before the
consistency model) always, and `livepatch` on kernels before 5.1
(versions.py stacking_order). A patch registers when its first enable
succeeds: a refused one fails its module's load and leaves nothing
registered.
"""
from __future__ import annotations

import errno

from emu.kernel.patch import Patch
from emu.models.refusals import refusal


def check(patch: Patch, *, enabling: bool, registered: list[Patch], installed: list[Patch], who: str) -> None:
    """Refuse (Busy, -EBUSY) what the stacking order forbids. registered:
    the registered patches, oldest first; installed: the enabled ones (and
    the one in transition), oldest first; who: the kernel named in the
    message. A patch with atomic replace is exempt when enabled (it
    overrides even disabled patches registered earlier: the last form of
    the rule, before 5.1 removed it)."""
    if enabling:
        if patch.replace:
            return
        # the patch registered just before this one (a new one goes last)
        at = registered.index(patch) if patch in registered else len(registered)
        prev = registered[at - 1] if at > 0 else None
        if prev is not None and prev not in installed:
            raise refusal(f"patch '{patch.name}': {who} enforces stacking: only the first disabled "
                          f"patch can be enabled ('{prev.name}' is disabled)", errno.EBUSY)
    else:
        later = [p.name for p in installed[installed.index(patch) + 1:]] if patch in installed else []
        if later:
            raise refusal(f"patch '{patch.name}': {who} enforces stacking: only the last enabled "
                          f"patch can be disabled ('{later[-1]}' is enabled)", errno.EBUSY)
