"""Writes to guest code: the pure-Python twin of csrc/text.c.

Unicorn keeps running stale translations after a write to memory, so a write
to text must also drop the translated blocks of the range it wrote.
"""


def write(uc, addr: int, data: bytes) -> None:
    """Write data at addr through the binding and drop its translations."""
    uc.mem_write(addr, bytes(data))
    uc.ctl_remove_cache(addr, addr + len(data))
