"""Hypercall numbers, read from their one home: the guest's header
emu/include/lpemu.h (LPEMU_HC_*), which guest code includes. csrc/emu.h
keeps copies of the ones the C scheduler handles (EMU_HC_*), held to the
header by tests/test_machine.py."""
from __future__ import annotations

import re
from enum import IntEnum
from pathlib import Path

HEADER = Path(__file__).resolve().parent.parent / "include" / "lpemu.h"


def _numbers() -> dict[str, int]:
    found = re.findall(r"^#define LPEMU_HC_(\w+)\s+(\d+)\s*$", HEADER.read_text(), re.M)
    if not found:   # pragma: no cover - a broken install
        raise ImportError(f"no LPEMU_HC_* numbers in {HEADER}")
    return {name: int(nr) for name, nr in found}


Hypercall = IntEnum("Hypercall", _numbers(), module=__name__)
Hypercall.__doc__ = "The hypercall numbers of emu/include/lpemu.h (LPEMU_HC_*)."

EXIT = Hypercall.EXIT
SLEEP = Hypercall.SLEEP
YIELD = Hypercall.YIELD
RETURN_TO_USER = Hypercall.RETURN_TO_USER
SAFE_POINT = Hypercall.SAFE_POINT
OBSERVE = Hypercall.OBSERVE
SHADOW_ALLOC = Hypercall.SHADOW_ALLOC
SHADOW_GET = Hypercall.SHADOW_GET
SHADOW_GET_OR_ALLOC = Hypercall.SHADOW_GET_OR_ALLOC
SHADOW_FREE = Hypercall.SHADOW_FREE
SHADOW_FREE_ALL = Hypercall.SHADOW_FREE_ALL
SLEEP_FREEZABLE = Hypercall.SLEEP_FREEZABLE
FUNCTION_DONE = Hypercall.FUNCTION_DONE

NAMES = {int(h): h.name.lower() for h in Hypercall}
