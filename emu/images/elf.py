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

__all__ = ["ET_REL", "ET_EXEC", "ET_DYN", "PARSE_ERRORS", "read_input", "is_elf_file", "check_x86_64_elf",
           "check_tables", "slim_lto",
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
    """Whether path holds an ELF file (its magic); BuildError as read_input,
    and for an ar archive (a static library, `ar rcs x.a y.o`): neither an
    object nor a source, whatever its name, it was compiled as C."""
    magic = read_input(path, 8)
    if magic in (b"!<arch>\n", b"!<thin>\n"):
        raise BuildError(f"{path}: an ar archive (a static library), not an object file; give the "
                         f"objects it holds (ar x)")
    return magic[:4] == b"\x7fELF"


def check_x86_64_elf(data: bytes, path) -> int:
    """The e_type of an ELF64 x86-64 file; BuildError saying what the file is
    otherwise, or naming the section, symbol or relocation whose fields do not
    hold together (check_tables)."""
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
    check_tables(data, path, e_type)
    if e_type == ET_REL and slim_lto(data):
        raise BuildError(f"{path}: an LTO object (built with -flto: GIMPLE bytecode, no machine code); "
                         f"build it without -flto, or with -ffat-lto-objects")
    return e_type


# The ELF64 structures check_tables reads (little-endian) and the constants it needs
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
_PT_LOAD = 1
_SHT_NULL, _SHT_SYMTAB, _SHT_STRTAB, _SHT_RELA, _SHT_NOBITS, _SHT_REL = 0, 2, 3, 4, 8, 9
_SHF_EXECINSTR = 0x4
_SHN_UNDEF, _SHN_ABS, _SHN_COMMON, _SHN_XINDEX = 0, 0xFFF1, 0xFFF2, 0xFFFF
_STT_OBJECT, _STT_FUNC = 1, 2
_USER_TOP = 1 << 47         # the canonical lower half: the addresses an image may have
#: sections found by their name, and the type each must have
_RESERVED = {".symtab": (_SHT_SYMTAB, "a symbol table (SHT_SYMTAB)"),
             ".strtab": (_SHT_STRTAB, "a string table (SHT_STRTAB)"),
             ".shstrtab": (_SHT_STRTAB, "a string table (SHT_STRTAB)")}
#: sections a relocation section cannot apply to: no contents, or ELF's own tables
_NOT_RELOCATED = (_SHT_NULL, _SHT_SYMTAB, _SHT_STRTAB, _SHT_RELA, _SHT_NOBITS, _SHT_REL)
#: bytes an x86-64 relocation writes, by type (the psABI's table): 4 unless
#: listed here; a type past the table's (_RELOC_TYPES) is checked for its
#: first byte only
_RELOC_WIDTH = {0: 0, 1: 8, 12: 2, 13: 2, 14: 1, 15: 1, 16: 8, 17: 8, 18: 8, 24: 8, 25: 8, 26: 8, 27: 8,
                28: 8, 29: 8, 33: 8, 38: 8}
_RELOC_TYPES = 44


def _check_strings(table: bytes, path, what: str) -> None:
    """BuildError unless table, a string table, starts and ends with a NUL
    (the gABI's rule: a table moved by a byte reads as other names)."""
    if table and (table[0] or table[-1]):
        raise BuildError(f"{path}: {what} ({len(table)} bytes) does not "
                         f"{'start' if table[0] else 'end'} with a NUL byte: its offset or size is damaged")


def _cstr(table: bytes, at: int) -> str:
    end = table.find(b"\0", at)
    return table[at:end if end >= 0 else len(table)].decode(errors="replace")


def check_tables(data: bytes, path, e_type: int) -> None:
    """BuildError naming the file and the segment, section, symbol or
    relocation at fault when the headers and tables of an ELF64
    little-endian file do not hold together: a header, segment or section
    past the end of the file; a string table that does not start and end
    with a NUL; .symtab, .strtab or .shstrtab of another type; a symbol
    whose name or section is not in the file, that lies outside its
    section, or a function in a section without code; a relocation of a
    symbol the table does not have, at an offset its section does not have,
    or in a second relocation section for one section. pyelftools reads
    such a file without a word (a slice past the end is short, an index
    wraps, the first section of a name wins), and the diff or the image
    would then be of an object the compiler never made."""
    size = len(data)
    if size < _EHDR.size:
        raise BuildError(f"{path}: truncated ELF header ({size} of {_EHDR.size} bytes)")
    (_, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx) = _EHDR.unpack_from(data)
    _check_segments(data, path, phoff, phentsize, phnum)
    if shoff == 0:
        if e_type == ET_REL:
            raise BuildError(f"{path}: an object without section headers (e_shoff 0)")
        return
    if shentsize != _SHDR.size:
        raise BuildError(f"{path}: section headers of {shentsize} bytes (e_shentsize), not {_SHDR.size}")
    if shoff > size - _SHDR.size:
        raise BuildError(f"{path}: the section headers (e_shoff {shoff:#x}) lie past the end of the file "
                         f"({size} bytes): truncated?")
    first = _SHDR.unpack_from(data, shoff)
    if shnum == 0:              # more than 0xff00 sections: the count is section 0's sh_size
        shnum = first[5]
    if shstrndx == _SHN_XINDEX:
        shstrndx = first[6]
    if shnum > (size - shoff) // _SHDR.size:
        raise BuildError(f"{path}: {shnum} section headers at {shoff:#x} run past the end of the file "
                         f"({size} bytes): truncated?")
    secs = [_SHDR.unpack_from(data, shoff + i * _SHDR.size) for i in range(shnum)]

    def inside(i: int) -> bool:
        return secs[i][1] in (_SHT_NULL, _SHT_NOBITS) or (secs[i][4] <= size and secs[i][5] <= size - secs[i][4])

    if not 0 < shstrndx < shnum or secs[shstrndx][1] != _SHT_STRTAB or not inside(shstrndx):
        raise BuildError(f"{path}: e_shstrndx {shstrndx} names no string table of section names "
                         f"({shnum} sections)")
    names_at, names_size = secs[shstrndx][4], secs[shstrndx][5]
    names = data[names_at:names_at + names_size]
    _check_strings(names, path, "the section-name table")

    def name(i: int) -> str:
        return _cstr(names, secs[i][0]) or f"section {i}"

    for i, (sh_name, sh_type, _, _, offset, sec_size, *_rest) in enumerate(secs):
        if sh_name >= names_size and i:
            raise BuildError(f"{path}: section {i}'s name (sh_name {sh_name:#x}) lies past the end of "
                             f"the section-name table ({names_size} bytes)")
        if not inside(i):
            raise BuildError(f"{path}: section {name(i)} ({sec_size:#x} bytes at {offset:#x}) runs past the "
                             f"end of the file ({size} bytes): truncated?")
        if sh_type == _SHT_REL:
            raise BuildError(f"{path}: section {name(i)} holds REL relocations, which x86-64 objects never "
                             f"use (they use RELA)")

    for i, sec in enumerate(secs):
        want = _RESERVED.get(name(i))
        if want is not None and sec[1] != want[0]:
            # the linker and pyelftools find these by name: a .symtab of another type is no symbol table
            raise BuildError(f"{path}: section {i} is named {name(i)} but is of type {sec[1]}, not "
                             f"{want[1]}{'; the object has no symbol table' if want[0] == _SHT_SYMTAB else ''}")
    symtabs = [i for i, s in enumerate(secs) if s[1] == _SHT_SYMTAB]
    if len(symtabs) > 1:
        raise BuildError(f"{path}: {len(symtabs)} symbol tables ({', '.join(name(i) for i in symtabs)}); "
                         f"an object has one")
    nsyms = 0
    if symtabs:
        st = symtabs[0]
        _, _, _, _, offset, st_size, link, _, _, entsize = secs[st]
        if entsize != _SYM.size or st_size % _SYM.size:
            raise BuildError(f"{path}: symbol table {name(st)} of {st_size} bytes in entries of {entsize} "
                             f"(sh_entsize), not a whole number of {_SYM.size}-byte symbols")
        if not 0 < link < shnum or secs[link][1] != _SHT_STRTAB:
            raise BuildError(f"{path}: symbol table {name(st)} names section {link} (sh_link) as its "
                             f"string table, which is none")
        strings = data[secs[link][4]:secs[link][4] + secs[link][5]]
        _check_strings(strings, path, f"the string table {name(link)}")
        nsyms = st_size // _SYM.size
        for k, (st_name, info, _, shndx, value, sym_size) in enumerate(_SYM.iter_unpack(data[offset:offset + st_size])):
            if st_name >= len(strings) and st_name:
                raise BuildError(f"{path}: symbol {k}'s name (st_name {st_name:#x}) lies past the end of the "
                                 f"string table {name(link)} ({len(strings)} bytes)")
            label = f"symbol {k} ({_cstr(strings, st_name)})" if st_name else f"symbol {k}"
            if shndx == _SHN_XINDEX:
                raise BuildError(f"{path}: {label} has its section in an extended index (SHN_XINDEX), "
                                 f"which lpemu does not read")
            if shndx in (_SHN_UNDEF, _SHN_ABS, _SHN_COMMON):
                continue
            if shndx >= shnum:
                raise BuildError(f"{path}: {label} is in section {shndx} (st_shndx), which the file does not "
                                 f"have ({shnum} sections)")
            sized = info & 0xF in (_STT_FUNC, _STT_OBJECT)
            if e_type != ET_REL and not sized:
                continue    # the linker's own symbols (_end, __bss_start) may lie between sections
            if e_type == ET_REL and info & 0xF == _STT_FUNC and not secs[shndx][2] & _SHF_EXECINSTR:
                raise BuildError(f"{path}: {label} is a function in section {name(shndx)}, which holds no "
                                 f"code (no SHF_EXECINSTR)")
            lo = 0 if e_type == ET_REL else secs[shndx][3]          # sh_addr: addresses in an executable
            length = sym_size if sized else 0
            if value < lo or value - lo > secs[shndx][5] or length > secs[shndx][5] - (value - lo):
                raise BuildError(f"{path}: {label} ({sym_size:#x} bytes at {value:#x}) lies outside its "
                                 f"section {name(shndx)} ({secs[shndx][5]:#x} bytes)")

    targets = {}     # an executable's relocations (if any) are the dynamic linker's, never read
    for i, (_, sh_type, _, _, offset, rel_size, link, info, _, entsize) in enumerate(secs):
        if sh_type != _SHT_RELA or e_type != ET_REL:
            continue
        if entsize != _RELA.size or rel_size % _RELA.size:
            raise BuildError(f"{path}: relocation section {name(i)} of {rel_size} bytes in entries of "
                             f"{entsize} (sh_entsize), not a whole number of {_RELA.size}-byte relocations")
        if not symtabs:
            raise BuildError(f"{path}: the object has no symbol table (its relocations in {name(i)} name "
                             f"section {link}, which is none)")
        if link != symtabs[0]:
            raise BuildError(f"{path}: relocation section {name(i)} names section {link} (sh_link) as its "
                             f"symbol table, which is none")
        if not 0 < info < shnum or info == i or secs[info][1] in _NOT_RELOCATED:
            raise BuildError(f"{path}: relocation section {name(i)} applies to section {info} (sh_info), "
                             f"which is not one relocations apply to (none, no contents, or a table of ELF's own)")
        if info in targets:
            raise BuildError(f"{path}: relocation sections {name(targets[info])} and {name(i)} both apply "
                             f"to {name(info)}")
        targets[info] = i
        room = secs[info][5]
        for n, (r_offset, r_info, _) in enumerate(_RELA.iter_unpack(data[offset:offset + rel_size])):
            sym, typ = r_info >> 32, r_info & 0xFFFFFFFF
            if sym >= nsyms:
                raise BuildError(f"{path}: relocation {n} of {name(i)} refers to symbol {sym}, which the "
                                 f"symbol table does not have ({nsyms} symbols)")
            if r_offset > room or _RELOC_WIDTH.get(typ, 4 if typ < _RELOC_TYPES else 1) > room - r_offset:
                raise BuildError(f"{path}: relocation {n} of {name(i)} (type {typ}) at {r_offset:#x} lies "
                                 f"outside {name(info)} ({room:#x} bytes)")


def _check_segments(data: bytes, path, phoff: int, phentsize: int, phnum: int) -> None:
    """BuildError naming the program header at fault: the table past the end
    of the file, a PT_LOAD whose bytes lie past it, or larger than anything
    lpemu maps (read whole, it was a MemoryError or an OverflowError)."""
    if phnum == 0:
        return
    size = len(data)
    if phentsize != _PHDR.size:
        raise BuildError(f"{path}: program headers of {phentsize} bytes (e_phentsize), not {_PHDR.size}")
    if phoff > size or phnum > (size - phoff) // _PHDR.size:
        raise BuildError(f"{path}: {phnum} program headers at {phoff:#x} run past the end of the file "
                         f"({size} bytes): truncated?")
    for i in range(phnum):
        p_type, _, offset, vaddr, _, filesz, memsz, _ = _PHDR.unpack_from(data, phoff + i * _PHDR.size)
        if p_type != _PT_LOAD:
            continue
        if offset > size or filesz > size - offset:
            raise BuildError(f"{path}: segment {i} (PT_LOAD, {filesz:#x} bytes at file offset {offset:#x}) "
                             f"runs past the end of the file ({size} bytes): truncated?")
        if filesz > memsz or memsz > MAX_INPUT or vaddr + memsz > _USER_TOP:
            raise BuildError(f"{path}: segment {i} (PT_LOAD, {memsz:#x} bytes at {vaddr:#x}, {filesz:#x} of "
                             f"them in the file) is no memory lpemu can map (at most {MAX_INPUT:_} bytes, "
                             f"below {_USER_TOP:#x})")


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
        built = f"{name} ({', '.join(Path(src).name for src in sources)})" if sources else name
        raise BuildError(f"{built}: __mcount_loc records {site:#x}, which is not a "
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


