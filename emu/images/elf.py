"""Reading ELF files: what a file is (x86-64 or not, object or executable),
and a linked executable turned into an Image (segments, symbols, functions,
fentry sites checked against __mcount_loc)."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.enums import ENUM_E_MACHINE
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from emu.errors import BuildError
from emu.images.image import (FENTRY_NOP, fentry_site, PAGE, PROT_R, PROT_W, PROT_X, Function, Image, Segment,
                              page_up, read_segments)

__all__ = ["ET_REL", "ET_EXEC", "ET_DYN", "PARSE_ERRORS", "read_input", "is_elf_file", "check_x86_64_elf", "slim_lto",
           "symbol_table", "image_from_elf"]

_EM_X86_64 = 62
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
_PF_X, _PF_W, _PF_R = 1, 2, 4
#: what pyelftools raises on a truncated or corrupt file (an offset past the
#: end of the file, a count that runs past it, an offset beyond 2^63 that
#: seek() cannot take): callers turn them into a BuildError naming the file
PARSE_ERRORS = (ELFError, ELFParseError, struct.error, ValueError, KeyError, IndexError, OverflowError)
_STT_SECTION, _STT_FILE = "STT_SECTION", "STT_FILE"


_MACHINE_NAMES = {"EM_AARCH64": "AArch64", "EM_386": "i386", "EM_ARM": "ARM", "EM_RISCV": "RISC-V",
                  "EM_PPC64": "PowerPC64", "EM_PPC": "PowerPC", "EM_S390": "s390",
                  "EM_MIPS": "MIPS", "EM_SPARCV9": "SPARC V9", "EM_LOONGARCH": "LoongArch"}


#: bytes of an object file read whole: far above a kernel object's (a few
#: MiB with its debug information), far below what a read may allocate
MAX_INPUT = 1 << 30


def read_input(path, size: int = -1) -> bytes:
    """The bytes of a user's source or object file (its first size bytes when
    size >= 0). Raises BuildError naming the file when the system cannot read
    it (a device or /proc file that fails its reads, ...), or when it is
    larger than MAX_INPUT (a sparse file of terabytes reads as zeros: read
    whole, it was a MemoryError)."""
    limit = MAX_INPUT if size < 0 else min(size, MAX_INPUT)
    try:
        with open(path, "rb") as f:
            if size < 0 and os.fstat(f.fileno()).st_size > limit:
                raise BuildError(f"{path}: larger than {MAX_INPUT:_} bytes, more than any object lpemu reads")
            data = f.read(limit + (size < 0))
    except OSError as exc:
        raise BuildError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise BuildError(f"{path}: larger than {MAX_INPUT:_} bytes, more than any object lpemu reads")
    return data


def is_elf_file(path) -> bool:
    """Whether path holds an ELF file (its magic); BuildError as read_input."""
    return read_input(path, 4) == b"\x7fELF"


def check_x86_64_elf(data: bytes, path) -> int:
    """The e_type of an ELF64 x86-64 file; BuildError saying what the file is otherwise."""
    if data[:4] != b"\x7fELF":
        raise BuildError(f"{path}: not an ELF file")
    if len(data) < 20 or data[5] not in (1, 2):
        raise BuildError(f"{path}: truncated or corrupt ELF header")
    endian = "<" if data[5] == 1 else ">"
    e_type, e_machine = struct.unpack_from(endian + "HH", data, 16)
    if e_machine != _EM_X86_64:
        raw = next((k for k, v in ENUM_E_MACHINE.items() if v == e_machine), None)  # "EM_AARCH64"
        what = _MACHINE_NAMES.get(raw, raw.removeprefix("EM_")) if raw else f"machine {e_machine}"
        raise BuildError(f"{path}: ELF for {what}, not x86-64")
    if data[4] != 2:
        raise BuildError(f"{path}: 32-bit ELF (x32), not ELF64 x86-64")
    if data[5] != 1:
        raise BuildError(f"{path}: big-endian ELF, not x86-64")
    if e_type == ET_REL and slim_lto(data):
        raise BuildError(f"{path}: an LTO object (built with -flto: GIMPLE bytecode, no machine code); "
                         f"build it without -flto, or with -ffat-lto-objects")
    return e_type


def slim_lto(data: bytes) -> bool:
    """Whether data is a GCC LTO object without machine code (-flto without
    -ffat-lto-objects: its functions are GIMPLE bytecode in .gnu.lto_*
    sections, and gcc marks it with the symbol __gnu_lto_slim)."""
    if b"__gnu_lto_slim" not in data:          # the symbol's name is in the string table
        return False
    try:
        symtab = symbol_table(ELFFile(io.BytesIO(data)))
        return symtab is not None and any(s.name == "__gnu_lto_slim" for s in symtab.iter_symbols())
    except PARSE_ERRORS:
        return False


def symbol_table(elf: ELFFile) -> SymbolTableSection | None:
    """The object's symbol table, or None: a section named .symtab of another
    type (a hostile or damaged file) is no symbol table."""
    symtab = elf.get_section_by_name(".symtab")
    return symtab if isinstance(symtab, SymbolTableSection) else None


def _segments(elf: ELFFile) -> list[Segment]:
    """PT_LOAD segments, widened to whole pages (pages two segments share are merged)."""
    raw = []
    for seg in elf.iter_segments(type="PT_LOAD"):
        h = seg.header
        if h.p_memsz == 0:
            continue  # ld emits an empty PT_LOAD for a PHDRS entry with no sections
        prot = ((PROT_R if h.p_flags & _PF_R else 0) | (PROT_W if h.p_flags & _PF_W else 0)
                | (PROT_X if h.p_flags & _PF_X else 0))
        names = [s.name for s in elf.iter_sections()
                 if s["sh_flags"] & SH_FLAGS.SHF_ALLOC and s["sh_size"] and seg.section_in_segment(s)]
        raw.append((h.p_vaddr, seg.data().ljust(h.p_memsz, b"\0"), prot, names[0] if names else "load"))
    raw.sort()
    merged: list[list] = []  # [addr, bytearray, prot, name]
    for vaddr, data, prot, name in raw:
        start, end = vaddr & ~(PAGE - 1), page_up(vaddr + len(data))
        if merged and start < merged[-1][0] + len(merged[-1][1]):
            m = merged[-1]
            m[1].extend(bytes(end - m[0] - len(m[1])) if end > m[0] + len(m[1]) else b"")
            m[1][vaddr - m[0]: vaddr - m[0] + len(data)] = data
            m[2] |= prot
        else:
            buf = bytearray(end - start)
            buf[vaddr - start: vaddr - start + len(data)] = data
            merged.append([start, buf, prot, name])
    return [Segment(a, bytes(d), p, n) for a, d, p, n in merged]


def image_from_elf(data: bytes, *, name: str, kind: str, sources: tuple[Path, ...],
                    imports: dict[str, int] | None = None) -> Image:
    """Parse a linked (ET_EXEC) ELF into an Image; check every fentry site."""
    elf = ELFFile(io.BytesIO(data))
    segments = _segments(elf)
    if not segments:
        raise BuildError(f"{name}: the linked image is empty (no code or data)")

    global_symbols: dict[str, int] = {}
    statics: dict[str, list[tuple[str | None, int]]] = {}
    funcs: list[tuple[str, int, int]] = []
    symtab = symbol_table(elf)
    current_file = None  # locals follow the STT_FILE symbol of their object
    for sym in symtab.iter_symbols() if symtab else ():
        kind_ = sym["st_info"]["type"]
        if kind_ == _STT_FILE:
            current_file = Path(sym.name).name
            continue
        shndx = sym["st_shndx"]
        # Section symbols are unnamed; ABS symbols are --defsym imports or link-script
        # constants, not something this image carries.
        if kind_ == _STT_SECTION or not sym.name or shndx in ("SHN_UNDEF", "SHN_ABS"):
            continue
        addr = sym["st_value"]
        if sym["st_info"]["bind"] == "STB_LOCAL":
            statics.setdefault(sym.name, []).append((current_file, addr))
        else:
            global_symbols[sym.name] = addr
        if kind_ == "STT_FUNC" and sym["st_size"] > 0:
            funcs.append((sym.name, addr, addr + sym["st_size"]))

    symbols = {n: v[0][1] for n, v in statics.items()}
    symbols.update(global_symbols)  # as in C, a global name wins over a static one

    mcount = elf.get_section_by_name("__mcount_loc")
    recorded = set()
    if mcount is not None and mcount["sh_type"] != "SHT_NOBITS":
        raw = mcount.data()
        recorded = set(struct.unpack(f"<{len(raw) // 8}Q", raw[: len(raw) // 8 * 8]))
    # A site is the NOP at the first byte, or right after an endbr64 (IBT),
    # recorded or not (prebuilt code and patch modules have no __mcount_loc).
    sites = {start: fentry_site(start, read_segments(segments, start, min(9, end - start), name))
             for _, start, end in funcs if end - start >= 5}
    stray = sorted(recorded.difference(sites.values()))
    if stray:
        site = stray[0]
        owner = next((f"{fname}+{site - start:#x}" for fname, start, end in funcs if start <= site < end), None)
        why = (f" ({owner}: an fentry call that is not the function's first instruction; gcc puts it "
               f"there under -fpatchable-function-entry=N with fewer than N NOPs before the function, "
               f"which x86 kernels do not use)" if owner else "")
        raise BuildError(f"{name}: __mcount_loc records {site:#x}, which is not a "
                         f"{FENTRY_NOP.hex(' ')} NOP at the start of a function (or right after its endbr64){why}")

    functions: dict[str, Function] = {}
    shadowed = []
    for fname, start, end in funcs:
        f = Function(fname, start, end, sites.get(start), name)
        if fname in functions:
            # A global name wins; otherwise the first static in link order keeps it.
            if fname in global_symbols and global_symbols[fname] == start:
                shadowed.append(functions[fname])
                functions[fname] = f
            else:
                shadowed.append(f)
        else:
            functions[fname] = f
    return Image(name, kind, segments, symbols, functions, elf=data, sources=sources,
                 global_symbols=global_symbols,
                 statics={n: tuple(v) for n, v in statics.items()},
                 imports=dict(imports or {}), shadowed=tuple(shadowed))


