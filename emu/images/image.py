"""The image model: the code and data of a program, a patch module or a
loadable module, as the machine maps it into guest memory.

An Image is page-aligned segments, the symbols, the function ranges and the
fentry sites (the 5-byte NOP at the start of a patchable function, or right
after its endbr64: fentry_site). Images are
made by emu/images/build.py (C and ELF objects: gcc and ld), emu/images/elf.py
(reading a linked ELF) and emu/images/asm.py (assembly text).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from emu.errors import BuildError, PatchError

__all__ = ["FENTRY_NOP", "ENDBR64", "fentry_site", "PROT_R", "PROT_W", "PROT_X", "PAGE", "Function", "Segment", "Image",
           "read_segments", "page_up", "check_base"]

FENTRY_NOP = bytes.fromhex("0f1f440000")
#: What code built for IBT (gcc -fcf-protection=branch, the kernel's
#: CONFIG_X86_KERNEL_IBT) puts first in every function that may be called
#: indirectly: its fentry call follows it.
ENDBR64 = bytes.fromhex("f30f1efa")

PROT_R, PROT_W, PROT_X = 1, 2, 4
PAGE = 4096


def fentry_site(start: int, head: bytes) -> int | None:
    """The fentry site of the function at start whose first bytes are head:
    the NOP first, or right after an endbr64, where the kernel's
    ftrace_location() finds __fentry__ under IBT; None when it has none."""
    if head[:5] == FENTRY_NOP:
        return start
    if head[:4] == ENDBR64 and head[4:9] == FENTRY_NOP:
        return start + 4
    return None


@dataclass(frozen=True)
class Function:
    """A function of an image: [start, end), and its fentry site if it has one."""

    name: str
    start: int
    end: int
    site: int | None  # fentry_site(): start, or start + 4 after an endbr64
    image: str

    def __contains__(self, addr: int) -> bool:
        return self.start <= addr < self.end


@dataclass(frozen=True)
class Segment:
    """Page-aligned memory of an image: addr and len(data) are multiples of PAGE."""

    addr: int
    data: bytes
    prot: int  # PROT_* bits
    name: str

    @property
    def end(self) -> int:
        return self.addr + len(self.data)


@dataclass(eq=False)
class Image:
    """Code and data ready to map, with symbols, functions and fentry sites."""

    name: str
    kind: str  # "c", "asm", "elf"
    segments: list[Segment]
    symbols: dict[str, int]  # every named symbol -> address (globals win over statics)
    functions: dict[str, Function]
    elf: bytes | None = None  # the final linked ELF, for .eh_frame checks
    sources: tuple[Path, ...] = ()
    # Global symbols only, and local (static) ones by name -> ((file, addr), ...):
    # what a module linked against this image may bind to (see _resolve).
    global_symbols: dict[str, int] = field(default_factory=dict)
    statics: dict[str, tuple[tuple[str | None, int], ...]] = field(default_factory=dict)
    # Names a module binds to the image it was linked against -> that image's address
    # (every binding made, whether or not the carried code ends up using it).
    imports: dict[str, int] = field(default_factory=dict)
    # Functions whose name another function already took (statics of the same name
    # in several files): not reachable by name, but function_at finds them.
    shadowed: tuple[Function, ...] = ()
    # Kernel objects (emu/images/kobject.py): the symbols bound to generated
    # stubs, and how alternatives were treated ("original": not applied).
    stubs: tuple[str, ...] = ()
    alternatives: str | None = None

    def __post_init__(self):
        if not self.global_symbols and not self.statics:
            self.global_symbols = dict(self.symbols)  # an image made by hand: all global
        self._by_start = sorted([*self.functions.values(), *self.shadowed],
                                key=lambda f: (f.start, f.end))
        self._starts = [f.start for f in self._by_start]
        self._insn_starts: list[int] | None = None
        self._orc_tables: list | None = None

    # -- lookups ---------------------------------------------------------------

    def function_at(self, addr: int) -> Function | None:
        """The function whose [start, end) holds addr, or None."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        start = self._starts[i]
        while i >= 0 and self._starts[i] == start:  # aliases share a start
            if addr < self._by_start[i].end:
                return self._by_start[i]
            i -= 1
        return None

    def require_site(self, name: str) -> Function:
        """The function called name, which must have an fentry site.

        Raises PatchError naming the function when it is unknown or has no site
        (it was built without -pg -mfentry, or is notrace, or is a .cold part)."""
        f = self.functions.get(name)
        if f is None:
            raise PatchError(f"{self.name}: no function named {name!r}")
        if f.site is None:
            raise PatchError(f"{self.name}: function {name!r} has no fentry site "
                             f"(it does not start with the 5-byte NOP {FENTRY_NOP.hex(' ')}, "
                             f"nor with endbr64 and that NOP), "
                             "so it cannot be patched")
        return f

    def code_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of every executable segment."""
        return [(s.addr, s.end) for s in self.segments if s.prot & PROT_X]

    def read(self, addr: int, size: int) -> bytes:
        """size bytes of the image at addr; BuildError if they are not all mapped."""
        return read_segments(self.segments, addr, size, self.name)

    def orc_tables(self) -> list:
        """The ORC-style tables of the image's code segments (emu/orc.py),
        computed once per image: every machine that loads it shares them."""
        if self._orc_tables is None:
            from emu.images.orc import build_table
            data = [(seg.addr, seg.data) for seg in self.segments if not seg.prot & PROT_X]
            tables = []
            for seg in self.segments:
                if seg.prot & PROT_X:
                    fns = [(f.name, f.start, f.end) for f in self.functions.values()
                           if seg.addr <= f.start < seg.addr + len(seg.data)]
                    tables.append(build_table(seg.data, seg.addr, fns, data=data))
            self._orc_tables = tables
        return self._orc_tables

    def insn_starts(self) -> list[int]:
        """Sorted start address of every instruction of every function.

        A capstone linear sweep per function; the sweep must end exactly at the
        function's end, otherwise the function holds data or bytes capstone cannot
        decode and per-instruction tables would be wrong (BuildError)."""
        if self._insn_starts is None:
            md = Cs(CS_ARCH_X86, CS_MODE_64)
            starts: set[int] = set()
            for f in self._by_start:
                end = f.start
                for addr, size, _, _ in md.disasm_lite(self.read(f.start, f.end - f.start), f.start):
                    starts.add(addr)
                    end = addr + size
                if end != f.end:
                    raise BuildError(f"{self.name}: cannot decode function {f.name} "
                                     f"[{f.start:#x}, {f.end:#x}) past {end:#x}")
            self._insn_starts = sorted(starts)
        return list(self._insn_starts)

    @property
    def lo(self) -> int:
        """Lowest address the image uses."""
        return min(s.addr for s in self.segments)

    @property
    def hi(self) -> int:
        """Highest address the image uses, exclusive and page rounded."""
        return page_up(max(s.end for s in self.segments))

    def __repr__(self):
        return (f"Image({self.name!r}, kind={self.kind!r}, [{self.lo:#x}, {self.hi:#x}), "
                f"{len(self.functions)} functions)")


def read_segments(segments: list[Segment], addr: int, size: int, what: str) -> bytes:
    """size bytes at addr from segments; BuildError naming what when they are not all mapped."""
    for s in segments:
        if s.addr <= addr and addr + size <= s.end:
            return s.data[addr - s.addr: addr - s.addr + size]
    raise BuildError(f"{what}: {size} bytes at {addr:#x} are outside the image")


def page_up(n: int) -> int:
    """n rounded up to a whole page."""
    return (n + PAGE - 1) & ~(PAGE - 1)


def check_base(base: int) -> None:
    """BuildError unless base is a page-aligned 64-bit address (ld would
    take one past 2**64 modulo 2**64, silently); TypeError for a base
    that is not an int."""
    if not isinstance(base, int) or isinstance(base, bool):
        raise TypeError(f"image base must be an int (an address), not {type(base).__name__}")
    if not 0 <= base < 1 << 64:
        raise BuildError(f"image base {base:#x} is not a 64-bit address")
    if base % PAGE:
        raise BuildError(f"image base {base:#x} is not page aligned ({PAGE:#x})")


# -- external tools --------------------------------------------------------------
