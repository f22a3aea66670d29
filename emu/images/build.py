"""Building images: C sources compiled with gcc, ELF objects and executables,
linked at a base address; with link_against, as a module bound to a base image
(and a live patch to the modules it patches as well).

The public entry points: build_c and load_elf.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from elftools.elf.elffile import ELFFile

from emu.errors import BuildError, PatchError, check_int, check_items, check_type
from emu.images import kobject
from emu.images.binding import bind_to_base
from emu.images.elf import (ET_DYN, ET_EXEC, ET_REL, PARSE_ERRORS, check_x86_64_elf, image_from_elf, is_elf_file,
                            read_input, symbol_table)
from emu.images.image import Image, check_base
from emu.images.toolchain import FLAGS, compile_c, link, require_tools, safe_stem, work_dir

__all__ = ["build_c", "load_elf"]


def _build_from_objects(objs: list[Path], basenames: list[str], tmp: Path, *, base: int, name: str,
                        kind: str, sources: tuple[Path, ...], link_against: tuple[Image, ...] | None,
                        keep: set[str] | None, kernel: list[int] = (),
                        cpu_features=None) -> Image:
    """Link objs; those at the indexes in kernel are kernel objects (kobject.prepare)."""
    if keep is not None and link_against is None:
        raise PatchError(f"{name}: keep needs link_against (the image the kept functions replace)")
    stubs: tuple[str, ...] = ()
    if kernel:
        found = [_prepare(objs[i], basenames[i]) for i in kernel]
        others = set()
        for i, obj in enumerate(objs):
            if i not in kernel:
                others |= _defined(obj)
        for img in link_against or ():
            others |= set(img.global_symbols)
        stub_obj, stubs = kobject.write_stubs(found, others, tmp, safe_stem(Path(name)))
        if stub_obj is not None:
            objs = [*objs, stub_obj]
            basenames = [*basenames, stub_obj.name]
    imports = None
    if link_against is None:
        elf = link(objs, tmp, base)
    else:
        require_tools("objcopy")
        defsyms, roots, imports = bind_to_base(objs, basenames, tuple(link_against),
                                               set(keep) if keep is not None else None, tmp)
        elf = link(objs, tmp, base, defsyms=defsyms, roots=roots)
    try:
        image = image_from_elf(elf, name=name, kind=kind, sources=sources, imports=imports)
    except PARSE_ERRORS as exc:
        # what ld made of objects it took but pyelftools cannot read (a damaged kernel object's)
        raise BuildError(f"{name} ({', '.join(basenames)}): cannot read the linked image: {exc}") from None
    if kernel:
        image = kobject.apply_alternatives(image, cpu_features)
        image.stubs = stubs
    return image


def _prepare(obj: Path, label: str) -> kobject.KernelObject:
    """kobject.prepare, with an object pyelftools cannot parse as a BuildError naming it."""
    try:
        return kobject.prepare(obj, label)
    except PARSE_ERRORS as exc:
        raise BuildError(f"{label}: cannot read the object: {exc}") from None


def _defined(obj: Path) -> set[str]:
    """Global symbols obj defines."""
    with open(obj, "rb") as f:
        symtab = symbol_table(ELFFile(f))
        return {s.name for s in (symtab.iter_symbols() if symtab else ())
                if s.name and isinstance(s["st_shndx"], int) and s["st_info"]["bind"] != "STB_LOCAL"}



def _check_arguments(what: str, name, cflags, link_against, keep, cpu_features) -> tuple[Image, ...] | None:
    """build_c's and load_elf's arguments: TypeError naming the one of the
    wrong type. Returns link_against as a tuple of images (base first)."""
    if name is not None:
        check_type(name, str, f"{what}: name")
    check_items(cflags, str, f"{what}: cflags", FLAGS)
    if isinstance(link_against, Image):
        link_against = (link_against,)
    elif link_against is not None:
        link_against = tuple(check_items(link_against, Image, f"{what}: link_against",
                                         "an Image, or the base image and the modules a patch binds to"))
        if not link_against:
            raise ValueError(f"{what}: link_against: no image (give the base image first)")
        if len({id(img) for img in link_against}) < len(link_against):
            raise ValueError(f"{what}: link_against: an image given twice")
    if keep is not None:
        if isinstance(keep, (str, bytes)) or not hasattr(keep, "__iter__"):
            raise TypeError(f"{what}: keep must be a set of function names, not {type(keep).__name__}")
        for k in keep:
            check_type(k, str, f"{what}: keep: a name")
    if cpu_features is not None:
        if not hasattr(cpu_features, "__iter__"):
            raise TypeError(f"{what}: cpu_features must be X86_FEATURE_* numbers, not {type(cpu_features).__name__}")
        for f in cpu_features:
            check_int(f, f"{what}: cpu_features: a feature", 0, 32 * 64 - 1)
    return link_against


def build_c(sources, *, base: int, name: str = "base", cflags=(), link_against=None,
            keep: set[str] | None = None, cpu_features=None) -> Image:
    """Compile C sources with gcc and link them at base with ld.

    cflags come after DEFAULT_CFLAGS and before REQUIRED_CFLAGS. With link_against
    (an Image, or the base image followed by the modules a patch binds to),
    the image is a module: what it references but does not carry binds to
    link_against's addresses. With keep it is a patch: only those functions
    (and new helpers they use) are carried, and existing data and functions it
    defines bind to the images' copies; without keep, what it defines is its
    own. Sources that are
    already ELF objects are linked as kernel objects (emu/images/kobject.py):
    their alternatives are applied for cpu_features (X86_FEATURE_* numbers, as
    in the kernel's cpufeatures.h) or left original when it is None.

    Raises ToolMissing (no gcc/ld), BuildError (compile or link errors, with the
    tools' own output), PatchError (keep/binding problems); TypeError for an
    argument of the wrong type."""
    check_type(name, str, "build_c: name")
    link_against = _check_arguments("build_c", name, cflags, link_against, keep, cpu_features)
    check_base(base)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not isinstance(sources, (list, tuple)):
        raise TypeError(f"build_c: sources must be a path or a list of paths, not {type(sources).__name__}")
    for i, src in enumerate(sources):
        check_type(src, (str, os.PathLike), f"build_c: sources[{i}]")
    paths = [Path(s) for s in sources]
    if not paths:
        raise BuildError(f"{name}: no sources")
    for p in paths:
        if not p.is_file():
            raise BuildError(f"{p}: no such file")
    require_tools("gcc", "as", "ld")
    with work_dir("lpemu-") as tmp:
        objs, kernel = [], []
        for i, src in enumerate(paths):
            obj = tmp / f"{i}_{safe_stem(src)}.o"
            if is_elf_file(src):
                _check_object(src)
                shutil.copyfile(src, obj)
                kernel.append(i)
            else:
                compile_c(src.resolve(), obj, list(cflags), tmp)
            objs.append(obj)
        return _build_from_objects(objs, [p.name for p in paths], tmp, base=base, name=name,
                                   kind="c", sources=tuple(paths), link_against=link_against,
                                   keep=keep, kernel=kernel, cpu_features=cpu_features)


def _check_object(path: Path) -> None:
    if check_x86_64_elf(read_input(path), path) != ET_REL:
        raise BuildError(f"{path}: not a relocatable object (.o); only objects can be linked")


def load_elf(path, *, base: int | None = None, name: str | None = None,
             link_against=None, keep: set[str] | None = None,
             cpu_features=None) -> Image:
    """An image from a prebuilt ELF64 x86-64 file.

    An object (ET_REL) is linked at base exactly as build_c links its objects
    (link_against and keep included). An executable (ET_EXEC) is taken at its own
    addresses: base must be None or its lowest address.

    Raises BuildError naming the file and what it is when it is not ELF64 x86-64."""
    link_against = _check_arguments("load_elf", name, (), link_against, keep, cpu_features)
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{path}: no such file")
    data = read_input(path)
    e_type = check_x86_64_elf(data, path)
    name = name or path.stem
    if e_type == ET_REL:
        if base is None:
            raise BuildError(f"{path}: an object file needs a base address to be linked at")
        check_base(base)
        require_tools("ld")
        with work_dir("lpemu-") as tmp:
            obj = tmp / f"0_{safe_stem(path)}.o"
            obj.write_bytes(data)
            return _build_from_objects([obj], [path.name], tmp, base=base, name=name, kind="elf",
                                       sources=(path,), link_against=link_against, keep=keep,
                                       kernel=[0], cpu_features=cpu_features)
    if e_type == ET_DYN:
        raise BuildError(f"{path}: position-independent executable or shared object (ET_DYN); "
                         "link it with -no-pie or give the object file")
    if e_type != ET_EXEC:
        raise BuildError(f"{path}: ELF type {e_type} is neither an object nor an executable")
    if link_against is not None or keep is not None:
        raise PatchError(f"{path}: an executable is already linked; give its object file to "
                         "link it against another image")
    try:
        image = image_from_elf(data, name=name, kind="elf", sources=(path,))
    except PARSE_ERRORS as exc:
        raise BuildError(f"{path}: cannot read the executable: {exc}") from None
    if base is not None and base != image.lo:
        raise BuildError(f"{path}: the executable is linked at {image.lo:#x}, not at {base:#x}")
    return image

