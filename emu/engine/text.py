"""Writes to guest code: the pure-Python twin of csrc/text.c.

Unicorn keeps running stale translations after a write to memory, so a write
to text must also drop the translated blocks of the range it wrote.
"""
from unicorn import UcError

from emu.errors import CoreError


def write(uc, addr: int, data: bytes) -> None:
    """Write data at addr through the binding and drop its translations.
    CoreError as the C core's: empty data, or a range Unicorn refuses."""
    if not data:
        raise CoreError(f"text write at {addr:#x}: invalid argument")
    try:
        uc.mem_write(addr, bytes(data))
    except UcError as exc:
        raise CoreError(f"text write at {addr:#x}: unicorn refused: {exc}") from None
    uc.ctl_remove_cache(addr, addr + len(data))
