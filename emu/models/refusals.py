"""How a model's interface refuses: the -errno the kernel returns from a
sysfs write, a module load or unload, raised as an exception with the
kernel's errno name in its message. Every model raises these (livepatch's
core.py and notifiers.py, base.Model's checks); runs and tests catch Busy
and PatchRefused (NothingToForce, a force with nothing to force, among them).
"""
from __future__ import annotations

import errno as _errno
import os

from emu.errors import Busy, PatchError


class PatchRefused(PatchError):
    """An operation refused with -errno (EINVAL, ENODEV, ...)."""

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


class NothingToForce(PatchRefused):
    """A force with no transition in progress, or naming a patch that is
    not the one in transition: the kernel's force_store
    (kernel/livepatch/core.c) returns -EINVAL and changes nothing, and so
    does every model's force (Model.force_check). A run's force action
    that comes after its transition ended meets it (emu/runs/fuzz.py)."""

    def __init__(self, patch_name: str | None):
        why = f"patch '{patch_name}' is not in transition" if patch_name is not None else "no patch is in transition"
        super().__init__(f"{why} (-EINVAL: {os.strerror(_errno.EINVAL)})", _errno.EINVAL)


def refusal(message: str, err: int) -> Exception:
    """The exception for -err: Busy for EBUSY, PatchRefused otherwise."""
    err = abs(err)
    text = f"{message} (-{_errno.errorcode.get(err, err)}: {os.strerror(err)})"
    return Busy(text) if err == _errno.EBUSY else PatchRefused(text, err)
