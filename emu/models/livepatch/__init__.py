"""Upstream livepatch: the hybrid per-task consistency model, split as
kernel/livepatch/ is:

- core.py        the Livepatch model: sysfs and module operations, installed
                 patches, atomic replace's nops, the mutex (core.c)
- patch.py       a patch's functions on the per-function stacks (patch.c)
- transition.py  the per-task transition and its switch points (transition.c)
- notifiers.py   modules coming and going under installed patches (core.c)

Refusals (-errno) are emu/models/refusals.py's, shared with the other models.

make_model("livepatch", machine) builds a Livepatch (emu/models/__init__.py).
"""
from emu.models.livepatch.core import Livepatch
from emu.models.refusals import PatchRefused

__all__ = ["Livepatch", "PatchRefused"]
