"""Hypercall numbers: the guest side is emu/include/lpemu.h; they must agree
(tests/test_machine.py reads the header and compares)."""
from pathlib import Path

EXIT = 0
SLEEP = 1
YIELD = 2
RETURN_TO_USER = 3
SAFE_POINT = 4
OBSERVE = 5
SHADOW_ALLOC = 6
SHADOW_GET = 7
SHADOW_GET_OR_ALLOC = 8
SHADOW_FREE = 9
SHADOW_FREE_ALL = 10

NAMES = {v: k.lower() for k, v in dict(globals()).items() if k.isupper() and isinstance(v, int)}

HEADER = Path(__file__).resolve().parent.parent / "include" / "lpemu.h"
