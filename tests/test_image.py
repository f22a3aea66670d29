"""Images built from C with gcc + ld, patch modules linked against them, prebuilt ELF files."""

import io
import struct
import subprocess
from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from elftools.dwarf.callframe import FDE
from elftools.elf.elffile import ELFFile

from emu.errors import BuildError, PatchError, ToolMissing
from emu.images.build import build_c, load_elf
from emu.images.image import ENDBR64, FENTRY_NOP, PAGE, PROT_R, PROT_W, PROT_X, fentry_site
from emu.images.toolchain import DEFAULT_CFLAGS, INCLUDE_DIR, REQUIRED_CFLAGS

C = Path(__file__).parent / "c"
BASE, PATCH = 0x400000, 0x800000


@pytest.fixture(scope="module")
def seed():
    return build_c([C / "seed.c"], base=BASE)


@pytest.fixture(scope="module")
def clones():
    return build_c([C / "clones.c"], base=BASE)


@pytest.fixture(scope="module")
def patch(seed):
    return build_c([C / "seed_patch.c"], base=PATCH, name="p1", link_against=seed,
                   keep={"foo", "bar", "baz"})


def decode(image, name):
    f = image.functions[name]
    return list(Cs(CS_ARCH_X86, CS_MODE_64).disasm(image.read(f.start, f.end - f.start), f.start))


def call_targets(image, name):
    return [int(i.op_str, 16) for i in decode(image, name) if i.mnemonic in ("call", "jmp")
            and i.op_str.startswith("0x")]


def rip_targets(image, name):
    """Absolute addresses of every rip-relative memory operand in the function."""
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    f = image.functions[name]
    out = []
    for i in md.disasm(image.read(f.start, f.end - f.start), f.start):
        for op in i.operands:
            if op.type == 3 and i.reg_name(op.mem.base) == "rip":  # X86_OP_MEM
                out.append(i.address + i.size + op.mem.disp)
    return out


# -- the base image -----------------------------------------------------------------


def test_layout_and_segments(seed):
    assert seed.kind == "c" and seed.sources == (C / "seed.c",)
    text = seed.segments[0]
    assert text.addr == BASE and text.prot == PROT_R | PROT_X
    for s in seed.segments:
        assert s.addr % PAGE == 0 and len(s.data) % PAGE == 0
    assert seed.code_ranges() == [(BASE, text.end)]
    # counter and hits live in a writable, non-executable segment.
    data = next(s for s in seed.segments if s.addr <= seed.symbols["counter"] < s.end)
    assert data.prot == PROT_R | PROT_W
    assert seed.lo == BASE and seed.hi == max(s.end for s in seed.segments)


def test_functions_sites_and_symbols_match_nm(seed, tmp_path):
    assert set(seed.functions) == {"bar", "something_else", "baz", "foo", "helper", "entry"}
    for f in seed.functions.values():
        assert f.site == f.start and seed.read(f.start, 5) == FENTRY_NOP and f.image == "base"
    # Cross-check with nm and the ELF's own symbol table.
    elf_path = tmp_path / "seed.elf"
    elf_path.write_bytes(seed.elf)
    nm = {}
    for line in subprocess.run(["nm", str(elf_path)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        addr, kind, name = line.split()
        nm[name] = (int(addr, 16), kind)
    assert {n: a for n, (a, _) in nm.items()} == seed.symbols
    assert nm["helper"][1] == "t" and nm["hits"][1] == "b"  # statics are kept
    assert seed.statics["hits"] == (("seed.c", seed.symbols["hits"]),)
    symtab = ELFFile(io.BytesIO(seed.elf)).get_section_by_name(".symtab")
    for sym in symtab.iter_symbols():
        if sym["st_info"]["type"] == "STT_FUNC":
            f = seed.functions[sym.name]
            assert (f.start, f.end) == (sym["st_value"], sym["st_value"] + sym["st_size"])


@pytest.mark.parametrize("head, site", [
    (FENTRY_NOP + b"\x55", 0x1000),                       # the NOP first
    (ENDBR64 + FENTRY_NOP, 0x1004),                      # IBT: right after the endbr64
    (ENDBR64 + b"\x55" + FENTRY_NOP, None),              # the NOP elsewhere: notrace
    (b"\x90" * 4 + FENTRY_NOP, None),                     # only an endbr64 comes before it
    (ENDBR64 + FENTRY_NOP[:4], None),                    # cut short by the function's end
    (FENTRY_NOP[:4], None),
    (b"", None),
])
def test_the_fentry_site_is_first_or_after_an_endbr64(head, site):
    assert fentry_site(0x1000, head) == site


def test_code_built_for_ibt_has_its_sites_after_each_endbr64(tmp_path):
    # gcc -fcf-protection=branch (the kernel's CONFIG_X86_KERNEL_IBT): every
    # function starts with endbr64, its fentry NOP follows, and __mcount_loc
    # records that NOP; ftrace_location() finds it there
    img = build_c([C / "seed.c"], base=BASE, cflags=["-fcf-protection=branch"])
    assert set(img.functions) == {"bar", "something_else", "baz", "foo", "helper", "entry"}
    for f in img.functions.values():
        if f.name == "helper":
            # static and only called directly: no endbr64, the NOP first
            assert f.site == f.start and img.read(f.site, 5) == FENTRY_NOP
            continue
        assert img.read(f.start, 4) == ENDBR64
        assert f.site == f.start + 4 and img.read(f.site, 5) == FENTRY_NOP
    assert img.require_site("foo") == img.functions["foo"]


def test_tail_call(seed):
    last = decode(seed, "foo")[-1]
    assert last.mnemonic == "jmp" and int(last.op_str, 16) == seed.functions["baz"].start


def test_function_at_and_require_site(seed, clones):
    foo = seed.functions["foo"]
    assert seed.function_at(foo.start) == foo and seed.function_at(foo.end - 1) == foo
    assert seed.function_at(BASE - 1) is None
    assert seed.require_site("foo") == foo
    with pytest.raises(PatchError, match="no_such_function"):
        seed.require_site("no_such_function")
    # gcc's clones are functions of their own, without a site.
    assert {"check.cold", "scale.constprop.0"} <= set(clones.functions)
    assert clones.functions["check.cold"].site is None
    with pytest.raises(PatchError, match=r"check\.cold"):
        clones.require_site("check.cold")


def test_insn_starts_cover_each_function_exactly(seed, clones):
    for image in (seed, clones):
        starts = image.insn_starts()
        assert starts == sorted(set(starts))
        md = Cs(CS_ARCH_X86, CS_MODE_64)
        for f in image.functions.values():
            inside = [a for a in starts if f.start <= a < f.end]
            sizes = [i.size for i in md.disasm(image.read(f.start, f.end - f.start), f.start)]
            assert inside[0] == f.start and inside[-1] + sizes[-1] == f.end
            assert len(inside) == len(sizes)
        # No instruction start outside every function.
        assert all(image.function_at(a) for a in starts)


def test_eh_frame_ranges_are_absolute(seed, clones):
    for image in (seed, clones):
        dwarf = ELFFile(io.BytesIO(image.elf)).get_dwarf_info()
        fdes = sorted((e.header["initial_location"],
                       e.header["initial_location"] + e.header["address_range"])
                      for e in dwarf.EH_CFI_entries() if isinstance(e, FDE))
        assert fdes == sorted((f.start, f.end) for f in image.functions.values())


def test_cflags_order_and_include_path(tmp_path):
    src = tmp_path / "flags.c"
    src.write_text('#include "lpemu.h"\nlong value(void) { lpemu_yield(); return VALUE; }\n')
    # -pg is REQUIRED and comes last, so a user -fno-... cannot remove the site.
    image = build_c([src], base=BASE, cflags=["-DVALUE=7", "-O1"])
    assert image.functions["value"].site is not None
    assert any(i.op_str.endswith(", 7") for i in decode(image, "value"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flags.c"]  # nothing written beside it
    assert (INCLUDE_DIR / "lpemu.h").is_file()
    assert "-pg" in REQUIRED_CFLAGS and "-O2" in DEFAULT_CFLAGS


def test_an_image_is_the_same_wherever_its_source_lies(tmp_path):
    """__FILE__ names the source by the folder it lies in, relative: a scenario
    copied to a folder of another name builds the same bytes (and so the same runs)."""
    text = ('#include "lpemu.h"\nconst char *where(void) { return __FILE__; }\n'
            'long size(void) { return sizeof(__FILE__); }\n')
    images = []
    for folder in ("a", "a-much-longer-folder-name/and/deeper"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "where.c").write_text(text)
        images.append(build_c([tmp_path / folder / "where.c"], base=BASE))
    assert [s.data for s in images[0].segments] == [s.data for s in images[1].segments]
    assert b"./where.c\0" in b"".join(s.data for s in images[0].segments)


def test_the_compiler_reads_nothing_from_standard_input(tmp_path):
    """A source that includes /dev/stdin gets nothing from the user's terminal
    (here a pipe that stays open): the build does not wait on it."""
    import sys
    (tmp_path / "in.c").write_text('#include "/dev/stdin"\nlong one(void) { return 1; }\n')
    code = (f"from emu.images.build import build_c; "
            f"build_c([{str(tmp_path / 'in.c')!r}], base={BASE}); print('built')")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        assert p.wait(timeout=120) == 0         # stdin stays open: never written, never closed
    finally:
        p.kill()
        p.stdin.close()
    assert p.stdout.read().strip().endswith(b"built")


# -- patch modules ---------------------------------------------------------------------


def test_patch_carries_only_kept_functions_and_new_helpers(seed, patch):
    assert set(patch.functions) == {"foo", "bar", "baz", "new_helper"}
    assert all(f.site == f.start for f in patch.functions.values())
    assert patch.lo == PATCH
    # Existing data is never carried; new data is.
    assert "counter" not in patch.symbols and "hits" not in patch.symbols
    assert patch.symbols["patched_tag"] >= PATCH
    assert patch.imports["counter"] == seed.symbols["counter"]
    assert patch.imports["something_else"] == seed.functions["something_else"].start


def test_patch_calls_and_data_resolve_to_base(seed, patch):
    calls = call_targets(patch, "foo")
    assert calls == [patch.functions["bar"].start, seed.functions["something_else"].start,
                     patch.functions["baz"].start, seed.functions["helper"].start,
                     patch.functions["new_helper"].start]
    # counter (global) and hits (static, reached through its section) are the base's.
    assert set(rip_targets(patch, "foo")) == {seed.symbols["counter"], seed.symbols["hits"]}
    assert rip_targets(patch, "bar") == [seed.symbols["counter"]]
    # new_helper indexes the new string, which the patch carries.
    assert f"+ {patch.symbols['patched_tag']:#x}]" in " ".join(i.op_str for i in decode(patch, "new_helper"))


def test_patch_keeps_clones_of_kept_functions(clones):
    p = build_c([C / "clones.c"], base=PATCH, name="p2", link_against=clones, keep={"check"})
    assert set(p.functions) == {"check", "check.cold"}
    # check.cold calls report, which stays the base image's.
    assert clones.functions["report"].start in call_targets(p, "check.cold")


def test_module_without_keep_carries_all_its_functions(seed, tmp_path):
    src = tmp_path / "module.c"
    src.write_text("extern long counter; long foo(void);\n"
                   "static long mine;\n"
                   "long module_init(void) { mine++; return foo() + counter + mine; }\n")
    m = build_c([src], base=PATCH, name="mod", link_against=seed)
    assert set(m.functions) == {"module_init"}
    assert seed.functions["foo"].start in call_targets(m, "module_init")
    assert set(rip_targets(m, "module_init")) == {seed.symbols["counter"], m.symbols["mine"]}


def test_patch_static_binding_by_file(tmp_path):
    for f in ("a", "b"):
        (tmp_path / f"{f}.c").write_text(
            "static long count;\n"
            "static __attribute__((noinline)) long bump(void) { return count++; }\n"
            f"long get_{f}(void) {{ return bump(); }}\n")
    base = build_c([tmp_path / "a.c", tmp_path / "b.c"], base=BASE)
    assert len(base.statics["count"]) == 2
    # Both bumps are functions; the second is not reachable by name.
    a_bump, b_bump = sorted(addr for _, addr in base.statics["bump"])
    assert base.function_at(a_bump).name == base.function_at(b_bump).name == "bump"
    assert base.function_at(a_bump) != base.function_at(b_bump) and len(base.shadowed) == 1
    text = "static long count;\nlong get_a(void) { return count += 2; }\n"
    (tmp_path / "patch.c").write_text(text)
    with pytest.raises(PatchError, match="'count' is ambiguous"):
        build_c([tmp_path / "patch.c"], base=PATCH, link_against=base, keep={"get_a"})
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.c").write_text(text)  # same basename as the file it patches
    p = build_c([tmp_path / "p" / "a.c"], base=PATCH, link_against=base, keep={"get_a"})
    a_count = dict(base.statics["count"])["a.c"]
    assert rip_targets(p, "get_a") == [a_count] * len(rip_targets(p, "get_a"))


def test_a_patch_binds_to_the_base_and_to_the_modules_it_is_given(tmp_path):
    """link_against=(base, module, ...): what a patch uses and does not
    carry binds to the base, else to the module that has it (a global), or
    to the static of the file of the same name, whichever image holds it;
    the same name in two images' files is ambiguous, named."""
    (tmp_path / "base.c").write_text("long shared;\nstatic long count;\nlong base_get(void) { return count++ + shared; }\n")
    base = build_c([tmp_path / "base.c"], base=BASE)
    (tmp_path / "drv.c").write_text("long drv_total;\nstatic long count;\n"
                                    "static __attribute__((noinline, noclone)) long bump(long by) { return count += by; }\n"
                                    "long drv_work(void) { drv_total++; return bump(1); }\n")
    mod = build_c([tmp_path / "drv.c"], base=BASE + 0x100000, name="drv", link_against=base)
    # a module's static is its own, never the base's of the same name in another file
    assert mod.lo <= dict(mod.statics["count"])["drv.c"] < mod.hi
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "drv.c").write_text(
        "extern long drv_total, shared;\nstatic long count;\n"
        "static __attribute__((noinline, noclone)) long bump(long by) { return count += by; }\n"
        "long drv_work(void) { drv_total += 2; shared++; return bump(10); }\n")
    p = build_c([tmp_path / "p" / "drv.c"], base=PATCH, name="p", link_against=[base, mod], keep={"drv_work"})
    assert set(p.functions) == {"drv_work"}                  # bump() is the module's
    assert p.imports["drv_total"] == mod.symbols["drv_total"] and p.imports["shared"] == base.symbols["shared"]
    assert p.imports["count"] == dict(mod.statics["count"])["drv.c"]
    assert mod.functions["bump"].start in call_targets(p, "drv_work")
    # bound to the base alone, the module's symbols are not there to bind to
    with pytest.raises(BuildError, match="drv_total"):
        build_c([tmp_path / "p" / "drv.c"], base=PATCH, name="p", link_against=base, keep={"drv_work"})
    # a file named as neither: `count` is the base's base.c's or the module's drv.c's
    (tmp_path / "fix.c").write_text((tmp_path / "p" / "drv.c").read_text())
    with pytest.raises(PatchError, match=r"'count' is ambiguous: the images it binds to \('base', 'drv'\) "
                                         r"have 2 of them \(files: base.c, drv:drv.c\)"):
        build_c([tmp_path / "fix.c"], base=PATCH, name="p", link_against=(base, mod), keep={"drv_work"})


@pytest.mark.parametrize("link_against, error, words", [
    ([], ValueError, r"build_c: link_against: no image \(give the base image first\)"),
    ("vmlinux", TypeError, r"build_c: link_against must be an Image, or the base image and the modules"),
    ([None], TypeError, r"build_c: link_against\[0\] must be an Image, not NoneType"),
    ("twice", ValueError, r"build_c: link_against: an image given twice"),
])
def test_link_against_must_be_images(seed, link_against, error, words):
    if link_against == "twice":
        link_against = [seed, seed]
    with pytest.raises(error, match=words):
        build_c([C / "seed_patch.c"], base=PATCH, link_against=link_against, keep={"foo"})


def test_patch_errors(seed, tmp_path):
    with pytest.raises(PatchError, match="nonexistent"):
        build_c([C / "seed_patch.c"], base=PATCH, link_against=seed, keep={"foo", "nonexistent"})
    with pytest.raises(PatchError, match="link_against"):
        build_c([C / "seed.c"], base=PATCH, keep={"foo"})
    src = tmp_path / "undef.c"
    src.write_text("long missing_in_base(void);\nlong foo(void) { return missing_in_base(); }\n")
    with pytest.raises(BuildError, match="missing_in_base"):
        build_c([src], base=PATCH, link_against=seed, keep={"foo"})


# -- errors ------------------------------------------------------------------------------


def test_compile_error_shows_gcc_output(tmp_path):
    src = tmp_path / "broken.c"
    src.write_text("long f(void) { return undeclared_thing; }\n")
    gcc = subprocess.run(["gcc", "-fsyntax-only", str(src)], capture_output=True, text=True)
    with pytest.raises(BuildError) as e:
        build_c([src], base=BASE)
    assert "broken.c" in str(e.value) and "undeclared_thing" in str(e.value)
    assert gcc.stderr.strip().splitlines()[-1].strip() in str(e.value)


def test_link_error_names_the_symbol(tmp_path):
    src = tmp_path / "calls.c"
    src.write_text("void not_defined_anywhere(void);\nvoid f(void) { not_defined_anywhere(); }\n")
    with pytest.raises(BuildError, match="undefined symbols: not_defined_anywhere"):
        build_c([src], base=BASE)


def test_missing_gcc(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="gcc") as e:
        build_c([C / "seed.c"], base=BASE)
    assert "apt-get install gcc binutils" in str(e.value)


def test_bad_base():
    with pytest.raises(BuildError, match="page aligned"):
        build_c([C / "seed.c"], base=BASE + 1)


# -- prebuilt ELF files ---------------------------------------------------------------------


def elf_header(machine, *, elf_class=2):
    """A minimal ELF header: enough for a loader to tell what the file is."""
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHI", 2, machine, 1) + bytes(40)


def test_load_elf_rejects_other_files(tmp_path):
    arm = tmp_path / "arm.elf"
    arm.write_bytes(elf_header(183))  # EM_AARCH64
    with pytest.raises(BuildError, match=r"arm\.elf.*ELF for AArch64"):
        load_elf(arm)
    i386 = tmp_path / "i386.o"
    i386.write_bytes(elf_header(3, elf_class=1))
    with pytest.raises(BuildError, match="i386"):
        load_elf(i386, base=BASE)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(BuildError, match=r"notes\.txt: not an ELF file"):
        load_elf(text)
    with pytest.raises(BuildError, match="no such file"):
        load_elf(tmp_path / "absent.o")


def test_load_elf_object_and_executable(seed, tmp_path):
    obj = tmp_path / "seed.o"
    subprocess.run(["gcc", "-c", *DEFAULT_CFLAGS, *REQUIRED_CFLAGS, "-I", str(INCLUDE_DIR),
                    str(C / "seed.c"), "-o", str(obj)], check=True)
    from_obj = load_elf(obj, base=BASE)
    assert build_c([obj], base=BASE).functions == seed.functions  # objects among sources
    assert from_obj.kind == "elf" and from_obj.name == "seed"
    assert {n: (f.start, f.end, f.site) for n, f in from_obj.functions.items()} == \
        {n: (f.start, f.end, f.site) for n, f in seed.functions.items()}

    # Without __mcount_loc, sites are found by their bytes.
    bare = tmp_path / "bare.o"
    subprocess.run(["objcopy", "-R", "__mcount_loc", "-R", ".rela__mcount_loc", str(obj), str(bare)],
                   check=True)
    assert all(f.site == f.start for f in load_elf(bare, base=BASE).functions.values())

    # A prebuilt object can be a patch too.
    p = load_elf(obj, base=PATCH, link_against=seed, keep={"foo"})
    assert set(p.functions) == {"foo"}
    assert call_targets(p, "foo")[0] == seed.functions["bar"].start

    # Without one section per function, a static the patch does not carry may be
    # called without a relocation: refuse rather than carry a silent copy.
    flat = tmp_path / "flat.o"
    subprocess.run(["gcc", "-c", *DEFAULT_CFLAGS, *REQUIRED_CFLAGS, "-fno-function-sections",
                    "-fno-data-sections", "-I", str(INCLUDE_DIR), str(C / "seed.c"), "-o", str(flat)],
                   check=True)
    with pytest.raises(PatchError, match="-ffunction-sections"):
        load_elf(flat, base=PATCH, link_against=seed, keep={"entry"})

    exe = tmp_path / "seed.elf"
    exe.write_bytes(seed.elf)
    loaded = load_elf(exe, base=BASE)
    assert loaded.functions == {n: f.__class__(f.name, f.start, f.end, f.site, "seed")
                                for n, f in seed.functions.items()}
    assert [s.data for s in loaded.segments] == [s.data for s in seed.segments]
    with pytest.raises(BuildError, match="linked at"):
        load_elf(exe, base=PATCH)
    with pytest.raises(BuildError, match="needs a base"):
        load_elf(obj)


def test_an_image_base_is_a_page_aligned_64_bit_address():
    """ld takes an address past 2**64 modulo 2**64: build_c refuses it instead
    of linking the image at 0; a negative base is no address either."""
    from emu.images.image import check_base
    for base, words in ((1 << 64, "is not a 64-bit address"), (-PAGE, "is not a 64-bit address"),
                        (0x400001, "is not page aligned")):
        with pytest.raises(BuildError, match=words):
            check_base(base)
    check_base((1 << 64) - PAGE)
