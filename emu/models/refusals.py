"""How a model's interface refuses: the -errno the kernel returns from a
sysfs write, a module load or unload, raised as an exception with the
kernel's errno name in its message. Every model raises these (livepatch's
core.py and notifiers.py, base.Model's checks); runs and tests catch Busy
and PatchRefused.
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


def refusal(message: str, err: int) -> Exception:
    """The exception for -err: Busy for EBUSY, PatchRefused otherwise."""
    err = abs(err)
    text = f"{message} (-{_errno.errorcode.get(err, err)}: {os.strerror(err)})"
    return Busy(text) if err == _errno.EBUSY else PatchRefused(text, err)
