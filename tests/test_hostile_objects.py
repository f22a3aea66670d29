"""Damaged object files: `lpemu diff` and a kernel object as a source get
one message naming the file and the section, symbol or relocation at fault,
exit status 2, never a traceback and never a diff of what the compiler never
made (pyelftools reads such a file without a word: a slice past the end of a
section is short, a relocation section's target is overwritten by the
next). Each row damages one field of tests/kobj/driver.c compiled with the
kernel's flags (emu/images/elf.py check_tables says what is checked)."""
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from emu.app import cli
from emu.errors import BuildError
from emu.images.build import build_c
from emu.images.toolchain import compile_kernel_object

KOBJ = Path(__file__).parent / "kobj"
SECTION, SYMBOL, RELA = struct.Struct("<IIQQQQIIQQ"), struct.Struct("<IBBHQQ"), struct.Struct("<QQq")


class Obj:
    """The section headers and symbols of an ELF64 object, by name, for damaging it."""

    def __init__(self, data: bytes):
        self.data = bytearray(data)
        self.shoff, = struct.unpack_from("<Q", data, 0x28)
        shnum, shstrndx = struct.unpack_from("<HH", data, 0x3c)
        self.secs = [SECTION.unpack_from(data, self.shoff + i * 64) for i in range(shnum)]
        self.names = [self._str(self.secs[shstrndx][4], s[0]) for s in self.secs]

    def _str(self, table: int, at: int) -> str:
        start = table + at
        return self.data[start:self.data.index(0, start)].decode()

    def index(self, name: str) -> int:
        return self.names.index(name)

    def section(self, name: str, field: str, value: int) -> "Obj":
        offset, fmt = {"name": (0, "<I"), "type": (4, "<I"), "flags": (8, "<Q"), "offset": (24, "<Q"), "size": (32, "<Q"),
                       "link": (40, "<I"), "info": (44, "<I"), "entsize": (56, "<Q")}[field]
        struct.pack_into(fmt, self.data, self.shoff + self.index(name) * 64 + offset, value)
        return self

    def symbol_index(self, name: str) -> int:
        symtab = self.secs[self.index(".symtab")]
        strtab = self.secs[symtab[6]][4]
        for k in range(symtab[5] // 24):
            if self._str(strtab, SYMBOL.unpack_from(self.data, symtab[4] + k * 24)[0]) == name:
                return k
        raise KeyError(name)

    def symbol(self, name: str, field: str, value: int) -> "Obj":
        offset, fmt = {"name": (0, "<I"), "shndx": (6, "<H"), "value": (8, "<Q"), "size": (16, "<Q")}[field]
        at = self.secs[self.index(".symtab")][4] + self.symbol_index(name) * 24
        struct.pack_into(fmt, self.data, at + offset, value)
        return self

    def rela(self, name: str, n: int, field: str, value: int) -> "Obj":
        at = self.secs[self.index(name)][4] + n * 24
        if field == "sym":
            value = (value << 32) | (struct.unpack_from("<Q", self.data, at + 8)[0] & 0xFFFFFFFF)
        struct.pack_into("<Q", self.data, at + (8 if field == "sym" else 0), value)
        return self

    def size_of(self, name: str) -> int:
        return self.secs[self.index(name)][5]


#: (what, damage(Obj) -> Obj, words of the message after the file's name)
ROWS = [
    ("a section past the end of the file", lambda o: o.section(".text.dev_read", "size", len(o.data)),
     ["section .text.dev_read (", "runs past the end of the file", "truncated?"]),
    ("section headers past the end of the file", lambda o: (struct.pack_into("<Q", o.data, 0x28, len(o.data)), o)[1],
     ["the section headers (e_shoff", "lie past the end of the file"]),
    ("section headers of another size", lambda o: (struct.pack_into("<H", o.data, 0x3a, 40), o)[1],
     ["section headers of 40 bytes (e_shentsize), not 64"]),
    ("e_shstrndx naming no string table", lambda o: (struct.pack_into("<H", o.data, 0x3e, 1), o)[1],
     ["e_shstrndx 1 names no string table of section names"]),
    ("a section's name past the name table", lambda o: o.section(".text.dev_read", "name", 0xFFFFFF),
     ["'s name (sh_name 0xffffff) lies past the end of the section-name table"]),
    ("a section named .symtab that is none", lambda o: o.section("__mcount_loc", "name", o.secs[o.index(".symtab")][0]),
     ["is named .symtab but is of type 1, not a symbol table (SHT_SYMTAB); the object has no symbol table"]),
    ("a symbol table of partial entries", lambda o: o.section(".symtab", "entsize", 16),
     ["symbol table .symtab of", "in entries of 16 (sh_entsize)"]),
    ("a second symbol table", lambda o: o.section("__mcount_loc", "type", 2),
     ["2 symbol tables (__mcount_loc, .symtab)"]),
    ("a symbol's name past the string table", lambda o: o.symbol("dev_read", "name", 0xFFFFFFF0),
     ["'s name (st_name 0xfffffff0) lies past the end of the string table .strtab"]),
    ("a symbol in a section the file does not have", lambda o: o.symbol("dev_read", "shndx", 0xFF00 - 1),
     ["(dev_read) is in section 65279 (st_shndx), which the file does not have"]),
    ("a symbol with an extended section index", lambda o: o.symbol("dev_read", "shndx", 0xFFFF),
     ["(dev_read) has its section in an extended index (SHN_XINDEX)"]),
    ("a function starting past its section", lambda o: o.symbol("dev_write", "value", o.size_of(".text.dev_write")),
     ["(dev_write) (", "lies outside its section .text.dev_write"]),
    ("a function longer than its section", lambda o: o.symbol("dev_read", "size", 1 << 40),
     ["(dev_read) (0x10000000000 bytes at 0x0) lies outside its section .text.dev_read"]),
    ("a function's size wrapping past 2^64", lambda o: o.symbol("dev_read", "value", 4).symbol("dev_read", "size", 2**64 - 2),
     ["(dev_read) (0xfffffffffffffffe bytes at 0x4) lies outside its section .text.dev_read"]),
    ("a relocation of a symbol the table does not have", lambda o: o.rela(".rela.text.dev_read", 0, "sym", 0xFFFFFF),
     ["relocation 0 of .rela.text.dev_read refers to symbol 16777215, which the symbol table does not have"]),
    ("a relocation past its section", lambda o: o.rela(".rela.text.dev_read", 0, "offset", 1 << 63),
     ["relocation 0 of .rela.text.dev_read (type", "at 0x8000000000000000 lies outside .text.dev_read"]),
    ("a relocation whose field ends past its section",
     lambda o: o.rela(".rela.text.dev_read", 0, "offset", o.size_of(".text.dev_read") - 2),
     ["relocation 0 of .rela.text.dev_read (type", "lies outside .text.dev_read"]),
    ("two relocation sections for one section",
     lambda o: o.section(".rela.text.dev_write", "info", o.index(".text.dev_read")),
     ["relocation sections .rela.text.dev_read and .rela.text.dev_write both apply to .text.dev_read"]),
    ("a relocation section for section 0", lambda o: o.section(".rela.text.dev_read", "info", 0),
     ["relocation section .rela.text.dev_read applies to section 0 (sh_info), which is not one relocations apply to"]),
    ("a relocation section for the symbol table", lambda o: o.section(".rela.text.dev_read", "info", o.index(".symtab")),
     ["relocation section .rela.text.dev_read applies to section", "which is not one relocations apply to"]),
    ("a string table moved by a byte", lambda o: o.section(".strtab", "offset", o.secs[o.index(".strtab")][4] + 1),
     ["the string table .strtab (", "bytes) does not start with a NUL byte: its offset or size is damaged"]),
    ("a section-name table cut short", lambda o: o.section(".shstrtab", "size", o.size_of(".shstrtab") - 1),
     ["the section-name table (", "bytes) does not end with a NUL byte"]),
    ("a function in a section without code", lambda o: o.section(".text.dev_read", "flags", 2),
     ["(dev_read) is a function in section .text.dev_read, which holds no code (no SHF_EXECINSTR)"]),
    ("a relocation section naming no symbol table", lambda o: o.section(".rela.text.dev_read", "link", 1),
     ["relocation section .rela.text.dev_read names section 1 (sh_link) as its symbol table, which is none"]),
    ("relocations of partial entries", lambda o: o.section(".rela.text.dev_read", "entsize", 16),
     ["relocation section .rela.text.dev_read of", "in entries of 16 (sh_entsize)"]),
    ("REL relocations", lambda o: o.section(".rela.text.dev_read", "type", 9),
     ["section .rela.text.dev_read holds REL relocations, which x86-64 objects never use"]),
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """orig/driver.o and patched/driver.o (dev_read changed), as in tests/test_kobj_diff.py."""
    tmp = tmp_path_factory.mktemp("hostile_objects")
    text = (KOBJ / "driver.c").read_text()
    out = []
    for side, source in (("orig", text), ("patched", text.replace("n = d->size - d->pos;", "n = d->size - d->pos - 1;"))):
        d = tmp / side
        d.mkdir()
        shutil.copy(KOBJ / "kernel.h", d)
        (d / "driver.c").write_text(source)
        compile_kernel_object(Path("driver.c"), d / "driver.o", (), cwd=d)
        out.append(d / "driver.o")
    return tuple(out)


def diff(capsys, old: Path, new: Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["diff", str(old), str(new)])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def test_the_undamaged_pair_is_a_diff(pair, capsys):
    code, out, err = diff(capsys, *pair)
    assert code == 0 and "dev_read" in out, err


@pytest.mark.parametrize("what,damage,words", ROWS, ids=[r[0] for r in ROWS])
def test_a_damaged_object_is_refused_naming_the_file_and_the_field(pair, tmp_path, capsys, what, damage, words):
    orig, patched = pair
    bad = tmp_path / "patched" / "driver.o"
    bad.parent.mkdir()
    bad.write_bytes(bytes(damage(Obj(patched.read_bytes())).data))
    for old, new in ((orig, bad), (bad, orig)):
        code, out, err = diff(capsys, old, new)
        assert code == 2 and out == "" and "Traceback" not in err, err
        assert err.startswith(f"lpemu: error: {bad}: ") and err.count("\n") == 0, err
        for w in words:
            assert w in err, err
    # the same object as a kernel object of a program's sources (a scenario's [program] sources)
    with pytest.raises(BuildError) as exc:
        build_c([bad], base=0x400000)
    assert str(exc.value).startswith(f"{bad}: ") and all(w in str(exc.value) for w in words), exc.value


def test_an_archive_named_like_an_object_is_said_to_be_one(pair, tmp_path, capsys):
    """`ar rcs` output named .o was compiled as a C source ('mix C sources and
    object files', or gcc's own complaint)."""
    archive = tmp_path / "driver.o"
    subprocess.run(["ar", "rcs", str(archive), str(pair[0])], check=True)
    for old, new in ((pair[0], archive), (archive, archive)):
        code, out, err = diff(capsys, old, new)
        assert code == 2 and err == f"lpemu: error: {archive}: an ar archive (a static library), not an object " \
                                    f"file; give the objects it holds (ar x)", err
    with pytest.raises(BuildError, match="an ar archive"):
        build_c([archive], base=0x400000)


def _tables(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of the headers and tables a damage may hit: the ELF header,
    the section headers, the symbol table, the relocations of code."""
    o = Obj(data)
    spans = [(0, 64), (o.shoff, o.shoff + 64 * len(o.secs))]
    for name, (_, typ, _, _, offset, size, *_rest) in zip(o.names, o.secs):
        if typ == 2 or (typ == 4 and name.startswith(".rela.text")):
            spans.append((offset, offset + size))
    return spans


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_to_the_tables_never_escapes_as_a_traceback(pair, tmp_path, capsys, data):
    orig, patched = pair
    raw = bytearray(patched.read_bytes())
    spans = _tables(bytes(raw))
    for _ in range(data.draw(st.integers(1, 4), label="damages")):
        lo, hi = data.draw(st.sampled_from(spans), label="table")
        at = data.draw(st.integers(lo, hi - 1), label="offset")
        width = data.draw(st.sampled_from([1, 2, 4, 8]), label="width")
        raw[at:at + width] = data.draw(st.binary(min_size=width, max_size=width), label="bytes")
    bad = tmp_path / "bad.o"
    bad.write_bytes(bytes(raw))
    code, out, err = diff(capsys, orig, bad)
    assert "Traceback" not in err
    assert code in (0, 1, 2)
    if code == 2:
        # a refusal of the pair as a whole (no changed function) names no file
        assert str(bad) in err or "no changed functions" in err or "driver.o" in err, err


@pytest.fixture(scope="module")
def executable(tmp_path_factory):
    """A linked x86-64 executable (load_elf takes one at its own addresses)."""
    d = tmp_path_factory.mktemp("hostile_exec")
    (d / "f.c").write_text("int f(int x) { return x + 1; }\n")
    subprocess.run(["gcc", "-O2", "-nostdlib", "-static", "-no-pie", "-fno-pic", "-Wl,-e,f", "-o",
                    str(d / "f"), str(d / "f.c")], check=True)
    return d / "f"


def _load_segment(data: bytearray) -> int:
    """The offset of the first PT_LOAD's program header."""
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phnum, = struct.unpack_from("<H", data, 0x38)
    return next(phoff + i * 56 for i in range(phnum) if struct.unpack_from("<I", data, phoff + i * 56)[0] == 1)


EXEC_ROWS = [
    ("a segment of 2^64-1 bytes", lambda b: struct.pack_into("<Q", b, _load_segment(b) + 40, 2**64 - 1),
     ["(PT_LOAD, 0xffffffffffffffff bytes at", "is no memory lpemu can map"]),
    ("a segment of 1 TiB", lambda b: struct.pack_into("<Q", b, _load_segment(b) + 40, 1 << 40),
     ["(PT_LOAD, 0x10000000000 bytes at", "is no memory lpemu can map"]),
    ("a segment past the end of the file", lambda b: struct.pack_into("<Q", b, _load_segment(b) + 8, 2**63),
     ["(PT_LOAD, ", "at file offset 0x8000000000000000) runs past the end of the file"]),
    ("program headers past the end of the file", lambda b: struct.pack_into("<Q", b, 0x20, 2**63),
     ["program headers at 0x8000000000000000 run past the end of the file"]),
    ("program headers of no size", lambda b: struct.pack_into("<H", b, 0x36, 0),
     ["program headers of 0 bytes (e_phentsize), not 56"]),
]


@pytest.mark.parametrize("what,damage,words", EXEC_ROWS, ids=[r[0] for r in EXEC_ROWS])
def test_a_damaged_executable_is_refused_naming_the_segment(executable, tmp_path, what, damage, words):
    """load_elf read it with pyelftools: an OverflowError, a MemoryError or
    an ELFParseError came out of the API."""
    from emu.images.build import load_elf
    data = bytearray(executable.read_bytes())
    damage(data)
    bad = tmp_path / "f"
    bad.write_bytes(bytes(data))
    with pytest.raises(BuildError) as exc:
        load_elf(bad)
    assert str(exc.value).startswith(f"{bad}: ") and all(w in str(exc.value) for w in words), exc.value


def test_the_undamaged_executable_loads(executable):
    from emu.images.build import load_elf
    assert "f" in load_elf(executable).functions


def test_a_kernel_object_whose_mcount_records_miss_its_functions_is_named(pair, tmp_path):
    """dev_write made 1 byte long: its __mcount_loc entry records no fentry
    site; the refusal named the image ('base') and not the object it came from."""
    bad = tmp_path / "driver.o"
    bad.write_bytes(bytes(Obj(pair[0].read_bytes()).symbol("dev_write", "size", 1).data))
    with pytest.raises(BuildError) as exc:
        build_c([bad], base=0x400000)
    assert str(exc.value).startswith("base (driver.o): __mcount_loc records 0x"), exc.value


def test_an_alternative_whose_instructions_lie_outside_the_image_is_refused(pair, tmp_path):
    """The first entry of .altinstructions aimed 2 GiB away (its relocation's
    addend): applied, it was a struct.error out of build_c (the rel32 of its
    replacement re-aimed past 32 bits), or silently not applied."""
    o = Obj(pair[0].read_bytes())
    rela = o.secs[o.index(".rela.altinstructions")][4]
    struct.pack_into("<q", o.data, rela + 16, 2**31 - 1)
    flags, = struct.unpack_from("<I", o.data, o.secs[o.index(".altinstructions")][4] + 8)
    bad = tmp_path / "driver.o"
    bad.write_bytes(bytes(o.data))
    features = set() if flags & (1 << 16) else {flags & 0xFFFF}     # what applies entry 0
    with pytest.raises(BuildError) as exc:
        build_c([bad], base=0x400000, cpu_features=features)
    assert str(exc.value).startswith("base: alternative 0 of .altinstructions (") and \
        str(exc.value).endswith("outside the image: the table is damaged"), exc.value
    build_c([bad], base=0x400000)      # left original, the table is not read
