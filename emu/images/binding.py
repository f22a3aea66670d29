"""Binding a module to its base image, the way a kernel module resolves the
running kernel's symbols: what the module does not carry binds to the base
image's address (bind_to_base says how). A live patch binds to the modules
it patches too, as its klp relocations (`.klp.rela.<module>.*`) bind it to
each module when it is loaded: modules are linked at fixed addresses, so
the patch's references to a module's symbols hold whenever it is loaded."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from emu.errors import BuildError, PatchError
from emu.images.elf import symbol_table
from emu.images.image import Image
from emu.images.toolchain import run_tool

__all__ = ["bind_to_base"]

_STT_SECTION, _STT_FILE = "STT_SECTION", "STT_FILE"

# Sections that describe code rather than use it: their relocations must keep
# pointing at the module's own copy (ld drops them with the code they describe).
_METADATA_SECTIONS = (".eh_frame", "__mcount_loc")

# -- binding a module to its base image ------------------------------------------------


def _resolve(images: tuple[Image, ...], name: str, *, local: bool, basename: str | None) -> int | None:
    """The address for name as a module refers to it in images (the base
    image first, then the modules a patch binds to), or None.

    A global binds to the base's global, as the linker would, else to the
    one module that has it. A static binds to the static of the file with
    the same basename, else to the only candidate; several candidates are
    ambiguous (PatchError)."""
    base = images[0]
    glob = base.global_symbols.get(name)
    if not local and glob is not None:
        return glob
    if not local:
        owners = [img for img in images[1:] if name in img.global_symbols]
        if len(owners) > 1:
            raise PatchError(f"symbol {name!r} is ambiguous: modules {', '.join(repr(i.name) for i in owners)} "
                             f"each define it")
        if owners:
            return owners[0].global_symbols[name]
    candidates = [(img, file, addr) for img in images for file, addr in img.statics.get(name, ())]
    same_file = {addr for _, file, addr in candidates if file == basename}
    if len(same_file) == 1:
        return same_file.pop()
    options = {addr for _, _, addr in candidates} | ({glob} if glob is not None else set())
    if len(options) > 1:
        files = ", ".join(sorted({f"{file}" if img is base else f"{img.name}:{file}" for img, file, _ in candidates}))
        where = f"the base image {base.name!r} has" if len(images) == 1 else \
            f"the images it binds to ({', '.join(repr(i.name) for i in images)}) have"
        raise PatchError(f"symbol {name!r} is ambiguous: {where} {len(options)} of them (files: {files}); "
                         "put the patch in a file with the same name as the one it changes")
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


def bind_to_base(objs: list[Path], basenames: list[str], images: tuple[Image, ...],
                  keep: set[str] | None, tmp: Path):
    """Rewrite objs so that what the module does not carry binds to images:
    the base image (images[0]) and the modules a patch binds to.

    With keep (a patch), a defined symbol binds to the images when it is data
    that they have and keep does not name (a patch never carries its own copy
    of existing state; keep names only read-only data whose new contents a
    kernel patch carries, as create-diff-object does), or a function outside
    keep that they have. Without keep (a module) everything it defines is its
    own, as the kernel's module loader resolves only what a module leaves
    undefined. Compiler clones
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
        symtab = symbol_table(elf)
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
            wanted = (keep is None or s.name in keep) if s.func else (keep is not None and s.name in keep)
            if s.func or (keep is not None and s.name in keep):
                defined_funcs.add(s.name)
            addr = None
            # what a module defines is its own, whatever the base calls its
            # symbols (the module loader resolves only what a module leaves
            # undefined); only a patch, built with keep, stands in for code
            # that exists and binds what it defines to it
            if not wanted and not (s.func and "." in s.name) and keep is not None:
                addr = _resolve(images, s.name, local=s.local, basename=basename)
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
        r = run_tool(["objcopy", *args, obj.name, obj.name], tmp)
        if r.returncode != 0:
            raise BuildError(f"objcopy on {basename} failed:\n{r.stderr.rstrip()}")

    if keep is not None:
        missing = sorted(set(keep) - defined_funcs)
        if missing:
            raise PatchError(f"its sources define no function {', '.join(missing)}")

    # References to symbols no module object defines go to the base image's copy;
    # what the base does not have either is left for ld to report.
    for name in sorted(undefined - carried_globals):
        addr = _resolve(images, name, local=False, basename=None)
        if addr is not None:
            defsyms[name] = addr
            imports[name] = addr
    return defsyms, roots, imports


# -- public entry points ------------------------------------------------------------------
