"""Images: the code and data of a program, a patch module or a loadable module.

An Image is what the machine maps into guest memory: page-aligned segments, the
symbols, the function ranges and the fentry sites (the 5-byte NOP that gcc's
`-pg -mfentry -mnop-mcount` puts at the start of a patchable function).

Images come from C (build_c: gcc + ld with our own linker script), from a
prebuilt x86-64 ELF file (load_elf) or from assembly text (emu/asm.py).

Patch modules and run-time modules are linked against a base image, the way a
kernel module resolves the running kernel's symbols: what they do not carry
binds to the base image's address. See _bind_to_base for how.
"""

from __future__ import annotations

import bisect
import io
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from elftools.elf.constants import SH_FLAGS
from elftools.elf.enums import ENUM_E_MACHINE
from elftools.elf.elffile import ELFFile

from emu.errors import BuildError, PatchError, ToolMissing

__all__ = [
    "FENTRY_NOP", "PROT_R", "PROT_W", "PROT_X", "PAGE", "REQUIRED_CFLAGS", "DEFAULT_CFLAGS",
    "INCLUDE_DIR", "Function", "Segment", "Image", "build_c", "load_elf",
]

FENTRY_NOP = bytes.fromhex("0f1f440000")
PROT_R, PROT_W, PROT_X = 1, 2, 4
PAGE = 4096

# Flags that make the code patchable and the image linkable the way we link it:
# fentry NOPs recorded in __mcount_loc, absolute (non-PIE) code, and one section
# per function and per object so that a patch module can drop what it does not
# carry (--gc-sections) and rebind it to the base image.
REQUIRED_CFLAGS = ["-pg", "-mfentry", "-mnop-mcount", "-mrecord-mcount", "-fno-PIE", "-fno-pic",
                   "-ffunction-sections", "-fdata-sections"]
# Kernel-like code: no libc, no red zone (the machine may push on any stack), frame
# pointers for the fp unwinder and .eh_frame for checking our ORC tables.
DEFAULT_CFLAGS = ["-O2", "-fno-omit-frame-pointer", "-ffreestanding", "-fno-builtin",
                  "-fno-stack-protector", "-fcf-protection=none", "-mno-red-zone",
                  "-mgeneral-regs-only", "-fasynchronous-unwind-tables"]

# lpemu.h lives here; it is on the include path of every compile.
INCLUDE_DIR = Path(__file__).resolve().parent.parent / "include"

_INSTALL_HINT = "apt-get install gcc binutils"

# ELF constants (the few we need, spelled out to keep the parsing readable).
_EM_X86_64 = 62
_ET_REL, _ET_EXEC, _ET_DYN = 1, 2, 3
_PF_X, _PF_W, _PF_R = 1, 2, 4
_STT_SECTION, _STT_FILE = "STT_SECTION", "STT_FILE"

# Sections that describe code rather than use it: their relocations must keep
# pointing at the module's own copy (ld drops them with the code they describe).
_METADATA_SECTIONS = (".eh_frame", "__mcount_loc")


@dataclass(frozen=True)
class Function:
    """A function of an image: [start, end), and its fentry site if it has one."""

    name: str
    start: int
    end: int
    site: int | None  # == start when the function begins with FENTRY_NOP
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
    # what a module linked against this image may bind to (see _resolve_in_base).
    global_symbols: dict[str, int] = field(default_factory=dict)
    statics: dict[str, tuple[tuple[str | None, int], ...]] = field(default_factory=dict)
    # Names a module binds to the image it was linked against -> that image's address
    # (every binding made, whether or not the carried code ends up using it).
    imports: dict[str, int] = field(default_factory=dict)
    # Functions whose name another function already took (statics of the same name
    # in several files): not reachable by name, but function_at finds them.
    shadowed: tuple[Function, ...] = ()

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
                             f"(it does not start with the 5-byte NOP {FENTRY_NOP.hex(' ')}), "
                             "so it cannot be patched")
        return f

    def code_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of every executable segment."""
        return [(s.addr, s.end) for s in self.segments if s.prot & PROT_X]

    def read(self, addr: int, size: int) -> bytes:
        """size bytes of the image at addr; BuildError if they are not all mapped."""
        return _read(self.segments, addr, size, self.name)

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
        return _page_up(max(s.end for s in self.segments))

    def __repr__(self):
        return (f"Image({self.name!r}, kind={self.kind!r}, [{self.lo:#x}, {self.hi:#x}), "
                f"{len(self.functions)} functions)")


def _read(segments: list[Segment], addr: int, size: int, what: str) -> bytes:
    for s in segments:
        if s.addr <= addr and addr + size <= s.end:
            return s.data[addr - s.addr: addr - s.addr + size]
    raise BuildError(f"{what}: {size} bytes at {addr:#x} are outside the image")


def _page_up(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def _check_base(base: int) -> None:
    if base < 0 or base % PAGE:
        raise BuildError(f"image base {base:#x} is not page aligned ({PAGE:#x})")


# -- external tools --------------------------------------------------------------


def _require_tools(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            raise ToolMissing(f"{tool} not found on PATH: building images needs gcc and "
                              f"binutils ({_INSTALL_HINT})")


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:  # removed between the which() check and now
        raise ToolMissing(f"{argv[0]} not found: {_INSTALL_HINT}") from None


def _safe_stem(path: Path) -> str:
    # Object names appear inside the linker script: keep them to plain characters.
    return re.sub(r"[^A-Za-z0-9_]", "_", path.stem) or "src"


def _compile(src: Path, obj: Path, cflags, tmp: Path) -> None:
    argv = ["gcc", "-c", *DEFAULT_CFLAGS, *cflags, *REQUIRED_CFLAGS, "-I", str(INCLUDE_DIR),
            str(src), "-o", str(obj)]
    r = _run(argv, tmp)
    if r.returncode != 0:
        raise BuildError(f"compiling {src} failed:\n{r.stderr.rstrip()}")


# -- linking ----------------------------------------------------------------------


def _linker_script(base: int, *, keep_mcount: bool, roots: list[tuple[str, str]]) -> str:
    """Code at base, then read-only data, then data and bss, each page aligned.

    .eh_frame and __mcount_loc are linked and loaded with the read-only data: ld
    resolves .eh_frame's PC-relative FDE ranges against its final address, so they
    are exact absolute ranges of the linked code. A patch module (keep_mcount False)
    cannot keep __mcount_loc: it references every function of the object and would
    make --gc-sections keep them all; its sites are found by their bytes instead.
    roots: (object, section) pairs that --gc-sections must keep."""
    keep_roots = "".join(f"    KEEP({obj}({sec}))\n" for obj, sec in roots)
    mcount = "KEEP(*(__mcount_loc))" if keep_mcount else "*(__mcount_loc)"
    return f"""\
PHDRS {{
  text PT_LOAD FLAGS({_PF_R | _PF_X});
  rodata PT_LOAD FLAGS({_PF_R});
  data PT_LOAD FLAGS({_PF_R | _PF_W});
}}
SECTIONS {{
  . = {base:#x};
  .text : {{
{keep_roots}    *(.text .text.*)
  }} :text
  . = ALIGN({PAGE});
  .rodata : {{ *(.rodata .rodata.*) }} :rodata
  .eh_frame : {{ KEEP(*(.eh_frame)) }} :rodata
  __mcount_loc : {{ {mcount} }} :rodata
  . = ALIGN({PAGE});
  .data : {{ *(.data .data.*) }} :data
  . = ALIGN({PAGE});
  .bss : {{ *(.bss .bss.* COMMON) }} :data
  /DISCARD/ : {{ *(.note.GNU-stack) *(.note.gnu.property) *(.comment) }}
}}
"""


def _link(objs: list[Path], tmp: Path, base: int, *, defsyms: dict[str, int] | None = None,
          roots: list[tuple[str, str]] | None = None) -> bytes:
    """Link objs (inside tmp) at base; with roots, as a module (--gc-sections)."""
    module = roots is not None
    script = tmp / "image.ld"
    script.write_text(_linker_script(base, keep_mcount=not module, roots=roots or []))
    argv = ["ld", "-T", script.name, "-nostdlib", "-static", "-e", "0", "-z", "max-page-size=4096",
            "-z", "noexecstack", "--build-id=none", "-o", "image.elf"]
    if module:
        argv.append("--gc-sections")
    argv += [f"--defsym={name}={addr:#x}" for name, addr in (defsyms or {}).items()]
    argv += [o.name for o in objs]
    r = _run(argv, tmp)
    if r.returncode != 0:
        undefined = sorted(set(re.findall(r"undefined reference to `([^']+)'", r.stderr)))
        what = f" (undefined symbols: {', '.join(undefined)})" if undefined else ""
        raise BuildError(f"linking failed{what}:\n{r.stderr.rstrip()}")
    return (tmp / "image.elf").read_bytes()


# -- ELF checks and parsing ---------------------------------------------------------

_MACHINE_NAMES = {"EM_AARCH64": "AArch64", "EM_386": "i386", "EM_ARM": "ARM", "EM_RISCV": "RISC-V",
                  "EM_PPC64": "PowerPC64", "EM_PPC": "PowerPC", "EM_S390": "s390",
                  "EM_MIPS": "MIPS", "EM_SPARCV9": "SPARC V9", "EM_LOONGARCH": "LoongArch"}


def _check_x86_64_elf(data: bytes, path) -> int:
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
    return e_type


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
        start, end = vaddr & ~(PAGE - 1), _page_up(vaddr + len(data))
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


def _image_from_elf(data: bytes, *, name: str, kind: str, sources: tuple[Path, ...],
                    imports: dict[str, int] | None = None) -> Image:
    """Parse a linked (ET_EXEC) ELF into an Image; check every fentry site."""
    elf = ELFFile(io.BytesIO(data))
    segments = _segments(elf)
    if not segments:
        raise BuildError(f"{name}: the linked image is empty (no code or data)")

    global_symbols: dict[str, int] = {}
    statics: dict[str, list[tuple[str | None, int]]] = {}
    funcs: list[tuple[str, int, int]] = []
    symtab = elf.get_section_by_name(".symtab")
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
    starts = {start for _, start, _ in funcs}
    for site in sorted(recorded):
        if site not in starts or _read(segments, site, 5, name) != FENTRY_NOP:
            raise BuildError(f"{name}: __mcount_loc records {site:#x}, which is not a "
                             f"{FENTRY_NOP.hex(' ')} NOP at the start of a function")

    functions: dict[str, Function] = {}
    shadowed = []
    for fname, start, end in funcs:
        # A site is the NOP at the first byte, recorded or not (prebuilt code and
        # patch modules have no __mcount_loc).
        has_nop = end - start >= 5 and _read(segments, start, 5, name) == FENTRY_NOP
        f = Function(fname, start, end, start if has_nop else None, name)
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


# -- binding a module to its base image ------------------------------------------------


def _resolve_in_base(base: Image, name: str, *, local: bool, basename: str | None) -> int | None:
    """The base image's address for name as a module refers to it, or None.

    A global binds to the base's global, as the linker would. A static binds to the
    static of the file with the same basename, else to the only candidate; several
    candidates are ambiguous (PatchError)."""
    glob = base.global_symbols.get(name)
    if not local and glob is not None:
        return glob
    candidates = base.statics.get(name, ())
    same_file = {addr for file, addr in candidates if file == basename}
    if len(same_file) == 1:
        return same_file.pop()
    options = {addr for _, addr in candidates} | ({glob} if glob is not None else set())
    if len(options) > 1:
        files = ", ".join(sorted({str(f) for f, _ in candidates}))
        raise PatchError(f"symbol {name!r} is ambiguous: the base image {base.name!r} has "
                         f"{len(options)} of them (files: {files}); put the patch in a file "
                         "with the same name as the one it changes")
    return options.pop() if options else None


@dataclass
class _ObjSymbol:
    index: int
    name: str
    local: bool
    func: bool
    shndx: int
    value: int


def _repoint_section_relocs(elf: ELFFile, data: bytearray, syms: list[_ObjSymbol],
                            section_syms: dict[int, int], bound: dict[int, int], basename: str) -> None:
    """Make relocations against the section of a bound symbol refer to the symbol.

    Exact when the section holds only that symbol, at offset 0 (one section per
    function and object): section + addend and symbol + addend are the same
    address. Relocations of .eh_frame and __mcount_loc are left alone: they
    describe the module's own copy, which ld drops with its FDE."""
    by_section: dict[int, list[_ObjSymbol]] = {}
    for s in syms:
        by_section.setdefault(s.shndx, []).append(s)
    sections = list(elf.iter_sections())
    retarget: dict[int, int | None] = {}  # section symbol -> bound symbol (None: cannot)
    for sec_sym, shndx in section_syms.items():
        members = by_section.get(shndx, [])
        bound_members = [s for s in members if s.index in bound]
        if not bound_members:
            continue
        if any(s.local for s in bound_members) and len(bound_members) < len(members):
            # The assembler may have resolved a reference between the two without
            # any relocation, so the carried code would use its own copy.
            raise PatchError(f"{basename}: {bound_members[0].name} binds to the base image but "
                             f"shares section {sections[shndx].name} with carried code; build "
                             "with -ffunction-sections -fdata-sections")
        single = all(s.value == 0 for s in members) and len({bound[s.index] for s in members}) == 1
        retarget[sec_sym] = bound_members[0].index if single else None
    for rel in elf.iter_sections():
        if rel["sh_type"] not in ("SHT_RELA", "SHT_REL"):
            continue
        target = sections[rel["sh_info"]]
        if not target["sh_flags"] & SH_FLAGS.SHF_ALLOC or target.name in _METADATA_SECTIONS:
            continue
        if rel["sh_type"] == "SHT_REL":
            raise PatchError(f"{basename}: SHT_REL relocations are not x86-64 ELF")
        for n, r in enumerate(rel.iter_relocations()):
            sym = r["r_info_sym"]
            if sym not in retarget:
                continue
            if retarget[sym] is None:
                section = sections[section_syms[sym]].name
                names = ", ".join(s.name for s in by_section[section_syms[sym]])
                raise PatchError(f"{basename}: cannot bind {names} to the base image: they share "
                                 f"section {section} and are referenced through it; build with "
                                 "-ffunction-sections -fdata-sections")
            off = rel["sh_offset"] + n * rel["sh_entsize"] + 8  # Elf64_Rela.r_info
            data[off: off + 8] = struct.pack("<Q", (retarget[sym] << 32) | r["r_info_type"])


def _bind_to_base(objs: list[Path], basenames: list[str], base: Image,
                  keep: set[str] | None, tmp: Path):
    """Rewrite objs so that what the module does not carry binds to base.

    A defined symbol binds to the base image when it is data that the base has
    (a module never carries its own copy of existing state), or, when keep is
    given, a function outside keep that the base has. Compiler clones
    (foo.cold, foo.part.0, foo.isra.0, ...) are always carried: their calling
    convention is private to the compile that made them.

    gcc's assembler turns references to static symbols into references to their
    section (".bss.hits - 4"), which no symbol rebinding would catch. With one
    symbol per section (-ffunction-sections -fdata-sections) the section symbol
    and the symbol are the same address, so such relocations are repointed at the
    symbol itself. Then objcopy renames each bound symbol to a unique global name,
    and ld's --defsym gives it the base address (a linker assignment overrides an
    object's definition); --gc-sections, rooted at the carried functions, drops
    the module's now unreferenced copies.

    Returns (defsyms, roots, imports)."""
    defsyms: dict[str, int] = {}
    imports: dict[str, int] = {}
    roots: list[tuple[str, str]] = []
    carried_globals: set[str] = set()
    undefined: set[str] = set()
    defined_funcs: set[str] = set()

    for obj, basename in zip(objs, basenames):
        data = bytearray(obj.read_bytes())
        elf = ELFFile(io.BytesIO(bytes(data)))
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise PatchError(f"{basename}: the object has no symbol table")
        sections = list(elf.iter_sections())
        syms: list[_ObjSymbol] = []
        section_syms: dict[int, int] = {}  # STT_SECTION symbol index -> its section index
        for i, s in enumerate(symtab.iter_symbols()):
            shndx = s["st_shndx"]
            typ = s["st_info"]["type"]
            if typ == _STT_SECTION and isinstance(shndx, int):
                section_syms[i] = shndx
                continue
            if not s.name or typ == _STT_FILE:
                continue
            if shndx == "SHN_UNDEF":
                undefined.add(s.name)
                continue
            if not isinstance(shndx, int):
                continue  # ABS or COMMON: nothing to rebind
            flags = sections[shndx]["sh_flags"]
            if not flags & SH_FLAGS.SHF_ALLOC:
                continue
            func = typ == "STT_FUNC" or (typ == "STT_NOTYPE" and bool(flags & SH_FLAGS.SHF_EXECINSTR))
            syms.append(_ObjSymbol(i, s.name, s["st_info"]["bind"] == "STB_LOCAL", func, shndx,
                                   s["st_value"]))

        bound: dict[int, int] = {}  # symbol index -> base address
        for s in syms:
            wanted = s.func and (keep is None or s.name in keep)
            if s.func:
                defined_funcs.add(s.name)
            addr = None
            if not wanted and not (s.func and "." in s.name):
                addr = _resolve_in_base(base, s.name, local=s.local, basename=basename)
            if addr is not None:
                bound[s.index] = addr
                imports[s.name] = addr
                continue
            # Carried: the functions asked for are the roots of --gc-sections; new
            # helpers and new data come along only if something carried uses them.
            if wanted:
                roots.append((obj.name, sections[s.shndx].name))
            if not s.local:
                carried_globals.add(s.name)

        _repoint_section_relocs(elf, data, syms, section_syms, bound, basename)
        if not bound:
            continue
        obj.write_bytes(bytes(data))
        args = []
        for s in syms:
            if s.index in bound:
                alias = f"__lpemu_base_{len(defsyms)}"
                defsyms[alias] = bound[s.index]
                args += [f"--redefine-sym={s.name}={alias}", f"--globalize-symbol={alias}"]
        r = _run(["objcopy", *args, obj.name, obj.name], tmp)
        if r.returncode != 0:
            raise BuildError(f"objcopy on {basename} failed:\n{r.stderr.rstrip()}")

    if keep is not None:
        missing = sorted(set(keep) - defined_funcs)
        if missing:
            raise PatchError(f"keep names {', '.join(missing)}, which the patch sources do not define")

    # References to symbols no module object defines go to the base image's copy;
    # what the base does not have either is left for ld to report.
    for name in sorted(undefined - carried_globals):
        addr = _resolve_in_base(base, name, local=False, basename=None)
        if addr is not None:
            defsyms[name] = addr
            imports[name] = addr
    return defsyms, roots, imports


# -- public entry points ------------------------------------------------------------------


def _build_from_objects(objs: list[Path], basenames: list[str], tmp: Path, *, base: int, name: str,
                        kind: str, sources: tuple[Path, ...], link_against: Image | None,
                        keep: set[str] | None) -> Image:
    if keep is not None and link_against is None:
        raise PatchError(f"{name}: keep needs link_against (the image the kept functions replace)")
    if link_against is None:
        return _image_from_elf(_link(objs, tmp, base), name=name, kind=kind, sources=sources)
    _require_tools("objcopy")
    defsyms, roots, imports = _bind_to_base(objs, basenames, link_against,
                                            set(keep) if keep is not None else None, tmp)
    elf = _link(objs, tmp, base, defsyms=defsyms, roots=roots)
    return _image_from_elf(elf, name=name, kind=kind, sources=sources, imports=imports)


def build_c(sources, *, base: int, name: str = "base", cflags=(), link_against: Image | None = None,
            keep: set[str] | None = None) -> Image:
    """Compile C sources with gcc and link them at base with ld.

    cflags come after DEFAULT_CFLAGS and before REQUIRED_CFLAGS. With link_against,
    the image is a module: what it references but does not carry binds to
    link_against's addresses, existing data is never carried, and with keep only
    those functions (and new helpers they use) are carried. Sources that are
    already ELF objects are linked as they are.

    Raises ToolMissing (no gcc/ld), BuildError (compile or link errors, with the
    tools' own output), PatchError (keep/binding problems)."""
    _check_base(base)
    paths = [Path(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    if not paths:
        raise BuildError(f"{name}: no sources")
    for p in paths:
        if not p.is_file():
            raise BuildError(f"{p}: no such file")
    _require_tools("gcc", "as", "ld")
    with tempfile.TemporaryDirectory(prefix="lpemu-") as d:
        tmp = Path(d)
        objs = []
        for i, src in enumerate(paths):
            obj = tmp / f"{i}_{_safe_stem(src)}.o"
            head = src.read_bytes()[:4]
            if head == b"\x7fELF":
                _check_object(src)
                shutil.copyfile(src, obj)
            else:
                _compile(src.resolve(), obj, list(cflags), tmp)
            objs.append(obj)
        return _build_from_objects(objs, [p.name for p in paths], tmp, base=base, name=name,
                                   kind="c", sources=tuple(paths), link_against=link_against,
                                   keep=keep)


def _check_object(path: Path) -> None:
    if _check_x86_64_elf(path.read_bytes(), path) != _ET_REL:
        raise BuildError(f"{path}: not a relocatable object (.o); only objects can be linked")


def load_elf(path, *, base: int | None = None, name: str | None = None,
             link_against: Image | None = None, keep: set[str] | None = None) -> Image:
    """An image from a prebuilt ELF64 x86-64 file.

    An object (ET_REL) is linked at base exactly as build_c links its objects
    (link_against and keep included). An executable (ET_EXEC) is taken at its own
    addresses: base must be None or its lowest address.

    Raises BuildError naming the file and what it is when it is not ELF64 x86-64."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{path}: no such file")
    data = path.read_bytes()
    e_type = _check_x86_64_elf(data, path)
    name = name or path.stem
    if e_type == _ET_REL:
        if base is None:
            raise BuildError(f"{path}: an object file needs a base address to be linked at")
        _check_base(base)
        _require_tools("ld")
        with tempfile.TemporaryDirectory(prefix="lpemu-") as d:
            tmp = Path(d)
            obj = tmp / f"0_{_safe_stem(path)}.o"
            obj.write_bytes(data)
            return _build_from_objects([obj], [path.name], tmp, base=base, name=name, kind="elf",
                                       sources=(path,), link_against=link_against, keep=keep)
    if e_type == _ET_DYN:
        raise BuildError(f"{path}: position-independent executable or shared object (ET_DYN); "
                         "link it with -no-pie or give the object file")
    if e_type != _ET_EXEC:
        raise BuildError(f"{path}: ELF type {e_type} is neither an object nor an executable")
    if link_against is not None or keep is not None:
        raise PatchError(f"{path}: an executable is already linked; give its object file to "
                         "link it against another image")
    image = _image_from_elf(data, name=name, kind="elf", sources=(path,))
    if base is not None and base != image.lo:
        raise BuildError(f"{path}: the executable is linked at {image.lo:#x}, not at {base:#x}")
    return image
