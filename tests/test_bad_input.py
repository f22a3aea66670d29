"""Bad input: one clear message naming the file, line, key or function; exit
status 2; no traceback; nothing the user had is overwritten.

Each case of CASES and ROWS is one row of the table in docs/bad-input.md,
which is generated from real runs of these very cases:

    .venv/bin/python tests/test_bad_input.py > docs/bad-input.md

and test_the_table_is_the_one_these_cases_print holds the file to them."""
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emu.app import cli
from emu.runs.scenario import invisible

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed"

SCENARIO = """\
[program]
sources = ["base.c"]

[[task]]
name = "user"
entry = "user_entry"
args = [0]

[[patch]]
name = "p"
sources = ["patch.c"]
functions = ["bar", "baz"]

[[action]]
at = 20000
do = "enable"
patch = "p"
"""


@pytest.fixture
def d(seed_copy):
    return seed_copy


def lpemu(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err and out.out == ""
    return code, out.err.strip()


def run(d, capsys, scenario_text, *extra):
    (d / "s.toml").write_text(scenario_text)
    return lpemu(capsys, "run", d / "s.toml", "--model", "livepatch", *extra)


CASES = [
    # (case, change to the scenario text, words the message must contain)
    ("not TOML", lambda s: s.replace('name = "user"', 'name = user'), ["s.toml: not valid TOML", "line 5"]),
    ("unknown key", lambda s: s.replace("args = [0]", "args = [0]\nprio = 3"),
     ["s.toml:8: task[0].prio: unknown key"]),
    ("missing key", lambda s: s.replace('entry = "user_entry"\n', ""), ["s.toml:4: task[0]: missing key 'entry'"]),
    ("wrong type", lambda s: s.replace("at = 20000", 'at = "soon"'),
     ["s.toml:15: action[0].at: must be an integer, not string 'soon'"]),
    ("unknown model", lambda s: s + '\n[fuzz]\nmodels = ["kpatch"]\n',
     ["s.toml:20: fuzz.models: unknown model 'kpatch'"]),
    ("task entry that does not exist", lambda s: s.replace('"user_entry"', '"user_main"'),
     ["s.toml:4: task[user].entry: no function 'user_main'"]),
    ("patched function that does not exist", lambda s: s.replace('["bar", "baz"]', '["bar", "qux"]'),
     ["patch[p].functions: no function 'qux'"]),
    ("two patches in one transition",
     lambda s: s.replace("[[action]]", '[[patch]]\nname = "q"\nsources = ["patch.c"]\nfunctions = ["bar"]\n\n'
                         '[[action]]\nat = 20000\ndo = "enable"\npatch = "q"\n\n[[action]]', 1),
     ["one transition at a time"]),
    ("action on an unknown patch", lambda s: s.replace('patch = "p"', 'patch = "p2"'),
     ["s.toml:17: action[0].patch: no patch named 'p2' (known: p)"]),
    ("source file missing", lambda s: s.replace('["patch.c"]', '["patch2.c"]'),
     ["s.toml:11: patch[0].sources: no such file: patch2.c"]),
    ("a patched function named twice", lambda s: s.replace('["bar", "baz"]', '["bar", "baz", "bar"]'),
     ["s.toml:12: patch[0].functions: 'bar' is named twice"]),
]


@pytest.mark.parametrize("case,change,words", CASES, ids=[c[0] for c in CASES])
def test_bad_scenarios(d, capsys, case, change, words):
    code, err = run(d, capsys, change(SCENARIO))
    assert code == 2, err
    for w in words:
        assert w in err, err
    assert err.startswith("lpemu: error: ")



# ---- rows: every other class of bad input -------------------------------------------------------
# (label, setup(d) -> argv, words the message must contain). setup writes what it
# needs into d, a copy of the seed's C files, and returns the lpemu command line.
def scn(d: Path, text: str, *extra, command="run", model=True) -> list:
    (d / "s.toml").write_text(text)
    return [command, d / "s.toml", *(["--model", "livepatch"] if model and command != "fuzz" else []), *extra]


def edit(d: Path, name: str, old: str, new: str) -> None:
    text = (d / name).read_text()
    assert old in text, old
    (d / name).write_text(text.replace(old, new))


def no_fentry(d):
    edit(d, "base.c", "__attribute__((noinline)) long baz(", "__attribute__((noinline, no_instrument_function)) long baz(")
    return scn(d, SCENARIO)


def compile_error(d):
    (d / "patch.c").write_text((d / "patch.c").read_text() + "\nint broken( {\n")
    return scn(d, SCENARIO)


@contextlib.contextmanager
def no_gcc(d):
    old = os.environ["PATH"]
    os.environ["PATH"] = str(d / "empty")
    try:
        yield
    finally:
        os.environ["PATH"] = old


@contextlib.contextmanager
def no_tmp(d):
    """The temporary directory (TMPDIR, as tempfile has it) is gone."""
    import tempfile
    old = tempfile.tempdir
    tempfile.tempdir = str(d / "gone")
    try:
        yield
    finally:
        tempfile.tempdir = old


@contextlib.contextmanager
def trace_raced(d):
    """Another run makes t.json while this one runs (after the check before
    the run that it is absent, before the trace is written)."""
    from emu.app import report
    perfetto = report.perfetto

    def racing(*a, **k):
        (d / "t.json").write_text("theirs")
        return perfetto(*a, **k)
    report.perfetto = racing
    try:
        yield
    finally:
        report.perfetto = perfetto


@contextlib.contextmanager
def trace_disk_full(d):
    """The file-size limit drops to 4 KiB as the trace is written (a disk
    that fills up midway: the write fails with EFBIG after a part of it)."""
    import resource
    from emu.app import report
    perfetto, limits = report.perfetto, resource.getrlimit(resource.RLIMIT_FSIZE)

    def filling(*a, **k):
        data = perfetto(*a, **k)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
        return data
    report.perfetto = filling
    try:
        yield
    finally:
        report.perfetto = perfetto
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)


@contextlib.contextmanager
def stdout_full(d):
    """Standard output is /dev/full while the command runs (a full disk)."""
    old = sys.stdout
    sys.stdout = open("/dev/full", "w")
    try:
        yield
    finally:
        full, sys.stdout = sys.stdout, old
        with contextlib.suppress(OSError):
            full.close()


def missing_symbol(d):
    edit(d, "patch.c", "total += f / 1000;", "total += f / 1000; extern long nowhere(void); nowhere();")
    return scn(d, SCENARIO)


def missing_symbol_not_utf8(d):
    """The patch object calls a function the base lacks, whose name (in the
    object's string table) holds a byte that is not UTF-8: ld quotes it."""
    edit(d, "patch.c", "total += f / 1000;", "total += f / 1000; extern long nowhere(void); nowhere();")
    objects(d)
    data = (d / "patch.o").read_bytes()
    assert data.count(b"nowhere") == 1
    (d / "patch.o").write_bytes(data.replace(b"nowhere", b"now\x9bere"))
    return scn(d, SCENARIO.replace('["base.c"]', '["base.o"]').replace('["patch.c"]', '["patch.o"]'))


def data_change(d):
    edit(d, "patch.c", "extern long total;", "long total = 7;")
    return scn(d, SCENARIO)


def not_x86(d):
    from emu.images.toolchain import INCLUDE_DIR
    subprocess.run(["gcc", "-c", "-o", str(d / "base.o"), str(d / "base.c"), "-I", str(INCLUDE_DIR)], check=True)
    data = bytearray((d / "base.o").read_bytes())
    data[18:20] = (40).to_bytes(2, "little")       # e_machine = EM_ARM
    (d / "base.o").write_bytes(bytes(data))
    return scn(d, SCENARIO.replace('["base.c"]', '["base.o"]'))


def objects(d):
    """base.o and patch.o of the seed's sources, as a kernel build compiles them."""
    from emu.images.toolchain import INCLUDE_DIR
    for name in ("base", "patch"):
        subprocess.run(["gcc", "-c", "-O2", "-pg", "-mfentry", "-mrecord-mcount", "-ffunction-sections",
                        "-fdata-sections", "-fno-PIE", "-o", str(d / f"{name}.o"), str(d / f"{name}.c"),
                        "-I", str(INCLUDE_DIR)], check=True)


def no_symtab(d):
    """patch.o whose .symtab section is of type SHT_NULL: named a symbol table, holding none."""
    import struct
    objects(d)
    data = bytearray((d / "patch.o").read_bytes())
    shoff, shnum, shstrndx = struct.unpack_from("<Q", data, 0x28)[0], *struct.unpack_from("<HH", data, 0x3c)
    names = shoff + shstrndx * 64
    names = struct.unpack_from("<Q", data, names + 24)[0]
    for i in range(shnum):
        header = shoff + i * 64
        start = names + struct.unpack_from("<I", data, header)[0]
        if data[start:data.index(0, start)] == b".symtab":
            struct.pack_into("<I", data, header + 4, 0)
    (d / "patch.o").write_bytes(bytes(data))
    return ["diff", d / "base.o", d / "patch.o"]


def section_symbol_of_no_section(d):
    """patch.o whose section symbol, that a relocation of the code uses, has
    st_shndx SHN_UNDEF (a damaged object: a section symbol of no section)."""
    import struct
    from elftools.elf.elffile import ELFFile
    for name, text in (("base.c", "lpemu"), ("patch.c", "lpemu 2")):     # a string: a section symbol's relocation
        (d / name).write_text((d / name).read_text() + f'\nconst char *label(void) {{ return "{text}"; }}\n')
    objects(d)
    data = bytearray((d / "patch.o").read_bytes())
    with open(d / "patch.o", "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        index = next(r["r_info_sym"] for sec in elf.iter_sections() if sec.name.startswith(".rela.text")
                     for r in sec.iter_relocations()
                     if symtab.get_symbol(r["r_info_sym"])["st_info"]["type"] == "STT_SECTION")
        entry = symtab["sh_offset"] + index * symtab["sh_entsize"]
    struct.pack_into("<H", data, entry + 6, 0)
    (d / "patch.o").write_bytes(bytes(data))
    return ["diff", d / "base.o", d / "patch.o"]


#: a trace an earlier run wrote (report.perfetto's first and last fields, no events)
EARLIER_TRACE = '{"traceEvents":[],"displayTimeUnit":"ms","otherData":{"machine":"s","instructions_per_second":100000}}'


def trace_exists(d):
    (d / "t.json").write_text("mine")
    return scn(d, SCENARIO, "--trace", d / "t.json")


def out_exists(d):
    (d / "out").mkdir()
    (d / "out" / "runs.jsonl").write_text("mine\n")
    return scn(d, SCENARIO, "--runs", "2", "--jobs", "1", "--out", d / "out", command="fuzz")


def out_holds_a_campaign(d):
    argv = scn(d, SCENARIO + FUZZ, "--runs", "1", "--jobs", "1", "--quiet", "--out", d / "c", command="fuzz")
    assert cli.main([str(a) for a in argv]) == 0
    return argv


def resume_not_a_campaign(d):
    (d / "other").mkdir()
    (d / "other" / "notes.txt").write_text("mine\n")
    return scn(d, SCENARIO, "--runs", "2", "--jobs", "1", "--out", d / "other", "--resume", command="fuzz")


def symlink_loop(d):
    os.symlink("loop2.c", d / "loop1.c")
    os.symlink("loop1.c", d / "loop2.c")
    return scn(d, SCENARIO.replace('["base.c"]', '["loop1.c"]'))


def section_past_2_63(d):
    """patch.o whose .text.bar section starts at 2^64-1: an offset seek() cannot take."""
    import struct
    objects(d)
    data = bytearray((d / "patch.o").read_bytes())
    shoff, shnum, shstrndx = struct.unpack_from("<Q", data, 0x28)[0], *struct.unpack_from("<HH", data, 0x3c)
    names = struct.unpack_from("<Q", data, shoff + shstrndx * 64 + 24)[0]
    for i in range(shnum):
        header = shoff + i * 64
        start = names + struct.unpack_from("<I", data, header)[0]
        if data[start:data.index(0, start)] == b".text.bar":
            struct.pack_into("<Q", data, header + 24, (1 << 64) - 1)
    (d / "patch.o").write_bytes(bytes(data))
    return ["diff", d / "base.o", d / "patch.o"]


def _damage(d, what) -> list:
    """base.o and patch.o, patch.o damaged by what(data, sections by name, symbol table header)."""
    import struct
    objects(d)
    data = bytearray((d / "patch.o").read_bytes())
    shoff, shnum, shstrndx = struct.unpack_from("<Q", data, 0x28)[0], *struct.unpack_from("<HH", data, 0x3c)
    names = struct.unpack_from("<Q", data, shoff + shstrndx * 64 + 24)[0]
    sections = {}
    for i in range(shnum):
        header = shoff + i * 64
        start = names + struct.unpack_from("<I", data, header)[0]
        sections[data[start:data.index(0, start)].decode()] = header
    what(data, sections)
    (d / "patch.o").write_bytes(bytes(data))
    return ["diff", d / "base.o", d / "patch.o"]


def function_past_its_section(d):
    """patch.o whose function bar starts where its section ends."""
    import struct

    def damage(data, sections):
        symtab = sections[".symtab"]
        offset, size, link = struct.unpack_from("<QQI", data, symtab + 24)
        strings = struct.unpack_from("<Q", data, sections[".strtab"] + 24)[0]
        text_size = struct.unpack_from("<Q", data, sections[".text.bar"] + 32)[0]
        for at in range(offset, offset + size, 24):
            name = strings + struct.unpack_from("<I", data, at)[0]
            if data[name:data.index(0, name)] == b"bar":
                struct.pack_into("<Q", data, at + 8, text_size)
    return _damage(d, damage)


def relocation_past_its_section(d):
    """patch.o whose first relocation of bar's code is at 0x1000, past the code."""
    import struct
    return _damage(d, lambda data, sections: struct.pack_into(
        "<Q", data, struct.unpack_from("<Q", data, sections[".rela.text.bar"] + 24)[0], 0x1000))


def campaign_json_endless(d):
    """A campaign whose campaign.json became a link to /dev/zero: --resume
    must not read it to the end (there is none)."""
    assert cli.main(["fuzz", str(d / "s.toml"), "--runs", "1", "--jobs", "1", "--quiet", "--out", str(d / "c")]) == 0
    (d / "c" / "campaign.json").unlink()
    (d / "c" / "campaign.json").symlink_to("/dev/zero")
    return ["fuzz", d / "s.toml", "--runs", "1", "--jobs", "1", "--quiet", "--out", d / "c", "--resume"]


def campaign_file_linked(name):
    """A campaign whose lock or rejected.txt became a link to a file of the
    user's: --resume refuses it instead of writing through it."""
    def setup(d):
        assert cli.main(["fuzz", str(d / "s.toml"), "--runs", "1", "--jobs", "1", "--quiet", "--out", str(d / "c")]) == 0
        (d / "mine.txt").write_text("mine")
        (d / "c" / name).unlink(missing_ok=True)
        (d / "c" / name).symlink_to(d / "mine.txt")
        with open(d / "c" / "runs.jsonl", "a") as f:
            f.write("a damaged line\n")          # so that --resume sets it aside in rejected.txt
        return ["fuzz", d / "s.toml", "--runs", "1", "--jobs", "1", "--quiet", "--out", d / "c", "--resume"]
    return setup


def campaign_file_moved_and_linked(name):
    """A campaign whose runs.jsonl, campaign.json or summary.json was moved
    to a file of the user's, a link to it left in its place (the content
    whole, so that nothing but the link stops --resume): --resume refuses
    the link instead of writing the user's file through it."""
    def setup(d):
        assert cli.main(["fuzz", str(d / "s.toml"), "--runs", "1", "--jobs", "1", "--quiet", "--out", str(d / "c")]) == 0
        (d / "c" / name).rename(d / "mine.txt")
        (d / "c" / name).symlink_to(d / "mine.txt")
        return ["fuzz", d / "s.toml", "--runs", "2", "--jobs", "1", "--quiet", "--out", d / "c", "--resume"]
    return setup


def campaign_json_numbers(d):
    """campaign.json edited so that its kernels list holds a null and a number."""
    import json
    assert cli.main(["fuzz", str(d / "s.toml"), "--runs", "1", "--jobs", "1", "--quiet", "--out", str(d / "c")]) == 0
    meta = json.loads((d / "c" / "campaign.json").read_text())
    (d / "c" / "campaign.json").write_text(json.dumps({**meta, "kernels": [None, 1]}))
    return ["fuzz", d / "s.toml", "--runs", "1", "--jobs", "1", "--quiet", "--out", d / "c", "--resume"]


def changed_program(d):
    assert cli.main(["fuzz", str(d / "s.toml"), "--runs", "2", "--jobs", "1", "--out", str(d / "c")]) == 0
    edit(d, "base.c", "return 5 + zero;", "return 6 + zero;")
    return ["fuzz", d / "s.toml", "--runs", "2", "--jobs", "1", "--out", d / "c", "--resume"]


def big_bss(d):
    (d / "base.c").write_text((d / "base.c").read_text() + "\nchar big_buffer[300 << 20];\n")
    return scn(d, SCENARIO)


def patches(n):
    return SCENARIO + "".join(f'\n[[patch]]\nname = "p{i}"\nsources = ["patch.c"]\nfunctions = ["bar"]\n'
                              for i in range(n))


def lto_objects(d):
    """base.o and patch.o built with -flto alone, as an LTO build makes them:
    GIMPLE bytecode, no machine code."""
    from emu.images.toolchain import INCLUDE_DIR
    for name in ("base", "patch"):
        subprocess.run(["gcc", "-c", "-O2", "-flto", "-fno-pic", "-pg", "-mfentry", "-mnop-mcount", "-I",
                        str(INCLUDE_DIR), "-o", str(d / f"{name}.o"), str(d / f"{name}.c")], check=True)
    return ["diff", d / "base.o", d / "patch.o"]


FUZZ = '\n[fuzz]\nmodels = ["kgraft"]\n'
ROWS = [
    ("patched function without a fentry site", no_fentry,
     ["s.toml:9: patch[p].functions: 'baz' has no fentry site, so it cannot be patched"]),
    ("compile error", compile_error, ["compiling", "patch.c", "error:"]),
    ("gcc missing", lambda d: scn(d, SCENARIO),
     ["gcc not found on PATH", "install"]),
    ("patch uses a symbol the base lacks", missing_symbol, ["s.toml:9: patch[p]: linking failed", "nowhere"]),
    ("patch object using a symbol whose name is not UTF-8", missing_symbol_not_utf8,
     ["linking failed", "undefined reference to `now\\x9bere'"]),
    ("no temporary directory", lambda d: scn(d, SCENARIO),
     ["no temporary directory for the compiler's files (", ": No such file or directory); set TMPDIR"]),
    ("diff with no temporary directory", lambda d: ["diff", d / "base.c", d / "patch.c"],
     ["no temporary directory for the compiler's files"]),
    ("patch changes existing data", data_change,
     ["patch[p]", "'total' changes its initial value", "shadow variable"]),
    ("ELF that is not x86-64", not_x86, ["base.o", "not x86-64"]),
    ("unknown model on the command line", lambda d: scn(d, SCENARIO, model=False) + ["--model", "kpatch"],
     ["invalid choice: 'kpatch'"]),
    ("scenario file absent", lambda d: ["run", d / "absent.toml", "--model", "kgraft"],
     ["absent.toml: no such scenario file"]),
    ("scenario is a directory", lambda d: ["run", d, "--model", "kgraft"], ["is a directory"]),
    ("scenario is /dev/zero", lambda d: ["run", "/dev/zero", "--model", "kgraft"],
     ["/dev/zero: larger than 1048576 bytes"]),
    ("scenario not UTF-8", lambda d: (d.joinpath("s.toml").write_bytes(b"[program]\nsources = [\"\xff\"]\n"),
                                      ["run", d / "s.toml", "--model", "kgraft"])[1], ["not UTF-8 text"]),
    ("--trace file exists", trace_exists, ["t.json: already exists", "--force"]),
    ("--trace made by another run while this one ran", lambda d: scn(d, SCENARIO, "--trace", d / "t.json"),
     ["--trace", "t.json: already exists (it was made while this run ran); remove it or pass --force"]),
    ("--trace --force over a file, the disk filling up midway",
     lambda d: ((d / "t.json").write_text(EARLIER_TRACE), scn(d, SCENARIO, "--trace", d / "t.json", "--force"))[1],
     ["--trace", "t.json: cannot write it (File too large)"]),
    ("--trace /dev/stdout with --json", lambda d: scn(d, SCENARIO, "--json", "--trace", "/dev/stdout", "--force"),
     ["--trace /dev/stdout: is standard output, which holds the --json document alone: name a file"]),
    ("--trace --force over a file of the user's",
     lambda d: ((d / "t.json").write_text("mine"), scn(d, SCENARIO, "--trace", d / "t.json", "--force"))[1],
     ["--trace", "t.json: exists and is not a trace lpemu wrote; --force replaces only such a file, never one of yours"]),
    ("--timeline --force over a picture not lpemu's",
     lambda d: ((d / "t.png").write_bytes(b"\x89PNG\r\n\x1a\nmine"), scn(d, SCENARIO, "--timeline", d / "t.png", "--force"))[1],
     ["--timeline", "t.png: exists and is not a picture lpemu drew (a PNG or SVG by Matplotlib)"]),
    ("bench --plot --force over a file of the user's",
     lambda d: ((d / "p.svg").write_text("<svg>mine</svg>"), ["bench", "--quick", "--plot", d / "p.svg", "--force"])[1],
     ["--plot", "p.svg: exists and is not a picture lpemu drew"]),
    ("run > /dev/full", lambda d: scn(d, SCENARIO),
     ["cannot write the output to standard output (No space left on device)"]),
    ("diff > /dev/full", lambda d: ["diff", d / "base.c", d / "patch.c"],
     ["cannot write the output to standard output (No space left on device)"]),
    ("--trace with a 300-character file name", lambda d: scn(d, SCENARIO, "--trace", d / ("x" * 300 + ".json")),
     ["argument --trace: ", "...: File name too long (", "a name has at most 255, a path 4095)"]),
    ("--junit with a 300-character file name", lambda d: scn(d, SCENARIO + FUZZ, "--junit", d / ("x" * 300 + ".xml"),
                                                             command="fuzz"),
     ["argument --junit: ", "...: File name too long ("]),
    ("diff of a path longer than 4095 bytes", lambda d: ["diff", "/".join(["y" * 200] * 25) + "/a.c", d / "base.c"],
     ["argument old: yyyy", "...: File name too long (5028 bytes; a name has at most 255, a path 4095)"]),
    ("--trace into a missing directory", lambda d: scn(d, SCENARIO, "--trace", d / "no" / "t.json"),
     ["--trace", "no such directory"]),
    ("--trace into a directory", lambda d: scn(d, SCENARIO, "--trace", d), ["--trace", "is a directory"]),
    ("--trace to /dev/full", lambda d: scn(d, SCENARIO, "--trace", "/dev/full", "--force"),
     ["--trace /dev/full: cannot write it (No space left on device)"]),
    ("--trace where nothing can be written", lambda d: scn(d, SCENARIO, "--trace", "/sys/t.json"),
     ["--trace /sys/t.json"]),
    ("--timeline into a missing directory", lambda d: scn(d, SCENARIO, "--timeline", d / "no" / "t.svg"),
     ["--timeline", "no such directory"]),
    ("--out directory holding a runs.jsonl of the user's", out_exists,
     ["--out", "runs.jsonl there is not a file a campaign wrote", "even with --force", "another --out"]),
    ("--out directory holding a campaign", out_holds_a_campaign,
     ["--out", "the directory holds a campaign; continue it with --resume or replace its results with --force"]),
    ("--out directory of other files", lambda d: ((d / "other").mkdir(), (d / "other" / "notes.txt").write_text("x"),
                                                  scn(d, SCENARIO, "--out", d / "other", command="fuzz"))[2],
     ["the directory exists and holds no campaign (no campaign.json)", "another --out", "--force"]),
    ("--junit naming the campaign's own runs.jsonl",
     lambda d: ((d / "c").mkdir(), scn(d, SCENARIO + FUZZ, "--runs", "1", "--out", d / "c", "--force", "--junit",
                                       d / "c" / "runs.jsonl", command="fuzz"))[1],
     ["--junit", "runs.jsonl: is the campaign's own runs.jsonl in --out", "name another file"]),
    ("--junit naming the --out directory",
     lambda d: scn(d, SCENARIO + FUZZ, "--runs", "1", "--out", d / "c", "--junit", d / "c", command="fuzz"),
     ["--junit", "c: is the --out directory; name a file (in it, or elsewhere)"]),
    ("--out --force over a summary.json of the user's",
     lambda d: ((d / "other").mkdir(), (d / "other" / "summary.json").write_text("mine\n"),
                scn(d, SCENARIO, "--out", d / "other", "--force", command="fuzz"))[2],
     ["summary.json there is not a file a campaign wrote (not the JSON summary lpemu fuzz writes",
      "even with --force"]),
    ("--resume of a directory no campaign wrote", resume_not_a_campaign,
     ["no campaign.json there", "another --out", "--force"]),
    ("--out where nothing can be written",
     lambda d: scn(d, SCENARIO, "--runs", "2", "--jobs", "1", "--out", "/sys/lpemu-c", command="fuzz"),
     ["--out /sys/lpemu-c"]),
    ("--resume of a changed program", lambda d: (scn(d, SCENARIO + FUZZ), changed_program(d))[1],
     ["the program changed", "base.c changed", "--force"]),
    ("huge number (tick = 2^62)", lambda d: scn(d, SCENARIO.replace("[[task]]", "[machine]\ntick = 4611686018427387904\n\n[[task]]", 1)),
     ["s.toml:5: machine.tick: must be at most 100_000, not 4611686018427387904"]),
    ("huge number (horizon = 1e30)", lambda d: scn(d, SCENARIO + "\n[fuzz]\nhorizon = 1e30\n"),
     ["fuzz.horizon: must be above 0", "not 1e+30"]),
    ("huge number (at = 2^63-1)", lambda d: scn(d, SCENARIO.replace("at = 20000", "at = 9223372036854775807")),
     ["s.toml:15: action[0].at: must be at most 100_000_000 instructions"]),
    ("first action far in the future (at = 10^13)", lambda d: scn(d, SCENARIO.replace("at = 20000", "at = 10000000000000")),
     ["action[0].at: must be at most 100_000_000 instructions"]),
    ("last action plus horizon past the bound", lambda d: scn(d, SCENARIO.replace("at = 20000", "at = 99999000")),
     ["plus a horizon of 20 s", "100_000_000 instructions a run may reach"]),
    ("--at 10**30", lambda d: scn(d, SCENARIO, "--at", str(10**30)), ["argument --at", "outside 0..100_000_000"]),
    ("state version a string", lambda d: scn(d, SCENARIO.replace('functions = ["bar", "baz"]', 'functions = ["bar", "baz"]\nstates = [{id = 1, version = "x"}]')),
     ["patch[0].states[0].version: must be an integer, not string 'x'"]),
    ("state version 1.9", lambda d: scn(d, SCENARIO.replace('functions = ["bar", "baz"]', 'functions = ["bar", "baz"]\nstates = [{id = 1, version = 1.9}]')),
     ["patch[0].states[0].version: must be an integer, not float 1.9"]),
    ("at a TOML date (at = 1979-05-27)", lambda d: scn(d, SCENARIO.replace("at = 20000", "at = 1979-05-27")),
     ["s.toml:15: action[0].at: must be an integer, not date 1979-05-27"]),
    ("name a TOML date-time", lambda d: scn(d, SCENARIO.replace('name = "user"', "name = 1979-05-27T07:32:00+01:00")),
     ["s.toml:5: task[0].name: must be a string, not date-time 1979-05-27T07:32:00+01:00"]),
    ("state id = true", lambda d: scn(d, SCENARIO.replace('functions = ["bar", "baz"]', 'functions = ["bar", "baz"]\nstates = [{id = true}]')),
     ["patch[0].states[0].id: must be an integer, not boolean True"]),
    ("10^5-deep array", lambda d: scn(d, SCENARIO + "\n[check]\nassert = " + "[" * 100_000 + "]" * 100_000 + "\n"),
     ["nested too deeply"]),
    ("10^5-deep inline tables", lambda d: scn(d, SCENARIO + "\n[fuzz]\nx = " + "{a=" * 100_000 + "1" + "}" * 100_000 + "\n"),
     ["nested too deeply"]),
    ("sources symlink loop", symlink_loop, ["s.toml:2: program.sources: loop1.c:", "ymlink loop"]),
    ("3 MB cflags", lambda d: scn(d, SCENARIO.replace('sources = ["base.c"]', 'sources = ["base.c"]\ncflags = ["' + "-O2 " * 750_000 + '"]')),
     ["larger than 1048576 bytes"]),
    ("100 kB of cflags", lambda d: scn(d, SCENARIO.replace('sources = ["base.c"]', 'sources = ["base.c"]\ncflags = [' + ", ".join(['"' + "-O2 " * 1000 + '"'] * 25) + ']')),
     ["program.cflags: 100000 characters of flags (at most 65536)"]),
    ("assert of 5000 unary minuses", lambda d: scn(d, SCENARIO + '\n[check]\nassert = ["' + "-" * 5000 + 'value > 0"]\n'),
     ["check.assert: holds a string longer than 4096 characters"]),
    ("assert of 3000 unary minuses", lambda d: scn(d, SCENARIO + '\n[check]\nassert = ["' + "-" * 3000 + 'value > 0"]\n'),
     ["s.toml:20: check.assert:", "an assertion has at most 1000"]),
    ("assert that walks to os.system", lambda d: scn(d, SCENARIO + "\n[check]\nassert = [\"(lambda: 0).__globals__['os'].system('true')\"]\n"),
     ["s.toml:20: check.assert:", "attribute is not in the language"]),
    ("assert with a misspelt name", lambda d: scn(d, SCENARIO + '\n[check]\nobserve = { 2 = "vlaue >= 1000" }\n'),
     ["s.toml:20: check.observe: 'vlaue >= 1000': unknown name 'vlaue'"]),
    ("fuzz --runs 10**12", lambda d: scn(d, SCENARIO, "--runs", str(10**12), command="fuzz"),
     ["argument --runs", "outside 1..1_000_000"]),
    ("demo --runs 10**11", lambda d: ["demo", "--runs", str(10**11)], ["argument --runs", "outside 1..100_000"]),
    ("300 MiB .bss", big_bss, ["program.sources: its image maps", "more than the 12_582_912"]),
    ("70 patches", lambda d: scn(d, patches(70)), ["71 patches and 0 modules: at most 60 together"]),
    ("a patch listing 4100 functions", lambda d: scn(d, SCENARIO.replace('["bar", "baz"]', "[" + ", ".join(f'"f{i}"' for i in range(4100)) + "]")),
     ["patch[0].functions: a list of 4100 elements (at most 4096)"]),
    ("models = []", lambda d: scn(d, SCENARIO + "\n[fuzz]\nmodels = []\n", command="fuzz"),
     ["s.toml:20: fuzz.models: names no model"]),
    ("args beyond 64 bits", lambda d: scn(d, SCENARIO.replace("args = [0]", "args = [18446744073709551616]")),
     ["task[0].args: task 'user': must be a list of 64-bit integers"]),
    ("an argument template with a name other than {i}",
     lambda d: scn(d, SCENARIO.replace("args = [0]", 'args = ["{n} * 2"]')),
     ["task[0].args: task 'user': '{n} * 2' is not an argument template (unknown placeholder {n}"]),
    ("a source gcc does not compile (notes.txt)",
     lambda d: ((d / "notes.txt").write_text("int x;"), scn(d, SCENARIO.replace('["base.c"]', '["notes.txt"]')))[1],
     ["notes.txt: gcc made no object of it", "C (.c), assembly (.s, .S) or an x86-64 ELF object"]),
    ("diff of an empty file named .o", lambda d: ((d / "e.o").write_bytes(b""), ["diff", d / "e.o", d / "e.o"])[1],
     ["e.o: gcc made no object of it"]),
    ("diff of an object whose .symtab is no symbol table", no_symtab, ["patch.o", "has no symbol table"]),
    ("diff of a source with a thread-local variable",
     lambda d: ((d / "tls.c").write_text("__thread long t;\nlong get(void) { return t; }\n"),
                ["diff", d / "tls.c", d / "tls.c"])[1],
     ["tls.c: its debug information (-g) cannot be read"]),
    ("patch listing a function its sources lack", lambda d: scn(d, SCENARIO.replace('["bar", "baz"]', '["bar", "foo"]')),
     ["s.toml:9: patch[p]: its sources define no function foo"]),
    ("patch of objects over a program of sources",
     lambda d: (objects(d), scn(d, SCENARIO.replace('["patch.c"]', '["patch.o"]')))[1],
     ["s.toml:9: patch[p].sources: patch.o is an ELF object but the program is built from sources"]),
    ("patch of sources over a program of objects",
     lambda d: (objects(d), scn(d, SCENARIO.replace('["base.c"]', '["base.o"]')))[1],
     ["s.toml:9: patch[p].sources: patch.c is a source but the program is built from ELF objects (base.o)"]),
    ("entry with an empty module name", lambda d: scn(d, SCENARIO.replace('"user_entry"', '":user_entry"')),
     ["s.toml:6: task[0].entry: ':user_entry' is not a function name"]),
    ("--trace and --timeline naming one file", lambda d: scn(d, SCENARIO, "--trace", d / "t.svg", "--timeline", d / "t.svg"),
     ["--trace and --timeline name the same file"]),
    ("--timeline of another suffix", lambda d: scn(d, SCENARIO, "--trace", d / "t.json", "--timeline", d / "t.txt"),
     ["timeline: cannot write '.txt' files", "use .png or .svg"]),
    ("--junit naming a source file", lambda d: scn(d, SCENARIO + FUZZ, "--runs", "1", "--jobs", "1", "--junit", d / "base.c",
                                                   command="fuzz"),
     ["--junit", "base.c: exists and is not a JUnit report"]),
    ("first-failure --limit 10**30", lambda d: scn(d, SCENARIO, "--limit", str(10**30), command="first-failure", model=False),
     ["argument --limit", "outside 1..1_000_000"]),
    ("bench --plot of another suffix", lambda d: ["bench", "--quick", "--plot", d / "p.txt"],
     ["--plot", "p.txt: the plot is written as .png or .svg"]),
    ("bench --plot file exists", lambda d: ((d / "p.png").write_text("mine"), ["bench", "--quick", "--plot", d / "p.png"])[1],
     ["--plot", "p.png: already exists", "--force"]),
    ("task name with a comma", lambda d: scn(d, SCENARIO.replace('name = "user"', 'name = "a,b"')),
     ["s.toml:5: task[0].name: 'a,b' is not a task name (non-empty, no ',')"]),
    ("--window with a 400-digit end", lambda d: scn(d, SCENARIO, "--timeline", d / "t.svg", "--window", "0:" + "9" * 400),
     ["--window '0:99999", "at most 100_000_000"]),
    ("--window without --timeline", lambda d: scn(d, SCENARIO, "--window", "a:b"),
     ["--window 'a:b': it chooses the span of --timeline"]),
    ("until = \"never\"", lambda d: scn(d, SCENARIO + "\n[fuzz]\nuntil = \"never\"\n"),
     ["fuzz.until: must be one of transitions, horizon, exit, not 'never'"]),
    ("a task name holding an escape sequence", lambda d: scn(d, SCENARIO.replace('name = "user"', 'name = "us\\u001b[31mer"')),
     ["s.toml:5: task[0].name: 'us\\x1b[31mer': a task name cannot hold the control character '\\x1b'"]),
    ("a patch name holding a bidi override (U+202E)",
     lambda d: scn(d, SCENARIO.replace('name = "p"', 'name = "p\\u202eq"').replace('patch = "p"', 'patch = "p\\u202eq"')),
     ["s.toml:10: patch[0].name: 'p\\u202eq': a patch name cannot hold the control character '\\u202e'"]),
    ("an entry holding a line break", lambda d: scn(d, SCENARIO.replace('"user_entry"', '"user\\nentry"')),
     ["s.toml:6: task[0].entry: 'user\\nentry' is not a function name: it holds the control character '\\n'"]),
    ("a missing source whose name holds an escape sequence",
     lambda d: scn(d, SCENARIO.replace('["base.c"]', '["b\\u001b[2Jase.c"]')),
     ["s.toml:2: program.sources: no such file: b\\x1b[2Jase.c"]),
    ("a source name holding a NUL", lambda d: scn(d, SCENARIO.replace('["base.c"]', '["ba\\u0000se.c"]')),
     ["s.toml:2: program.sources: 'ba\\x00se.c': a file name cannot hold a NUL character"]),
    ("cflags holding a NUL", lambda d: scn(d, SCENARIO.replace('sources = ["base.c"]', 'sources = ["base.c"]\ncflags = ["-DX=\\u0000"]')),
     ["s.toml:3: program.cflags: '-DX=\\x00': a flag cannot hold a NUL character"]),
    ("diff of a file the system cannot read (/proc/self/mem)", lambda d: ["diff", "/proc/self/mem", d / "base.c"],
     ["/proc/self/mem: cannot read it (Input/output error)"]),
    ("diff of an object with a section at 2^64-1", section_past_2_63,
     ["patch.o: section .text.bar (0x", "bytes at 0xffffffffffffffff) runs past the end of the file"]),
    ("diff of an ar archive named .o", lambda d: (objects(d), subprocess.run(["ar", "rcs", str(d / "lib.o"), str(d / "patch.o")], check=True),
                                                 ["diff", d / "base.o", d / "lib.o"])[2],
     ["lib.o: an ar archive (a static library), not an object file; give the objects it holds (ar x)"]),
    ("diff of an object with a function past its section", function_past_its_section,
     ["patch.o: symbol ", "(bar) (0x", "lies outside its section .text.bar"]),
    ("diff of an object with a relocation past its section", relocation_past_its_section,
     ["patch.o: relocation 0 of .rela.text.bar (type ", "at 0x1000 lies outside .text.bar"]),
    ("diff of a 2 GiB sparse source", lambda d: ((d / "big.c").write_text("int f(void) { return 1; }\n"),
                                                os.truncate(d / "big.c", 2 << 30), ["diff", d / "big.c", d / "patch.c"])[2],
     ["big.c: 2_147_483_648 bytes, larger than the 67_108_864 a source may be"]),
    ("diff of a 2 GiB sparse object", lambda d: ((d / "big.o").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57)),
                                                os.truncate(d / "big.o", 2 << 30), ["diff", d / "big.o", d / "big.o"])[2],
     ["big.o: larger than 1_073_741_824 bytes, more than any object lpemu reads"]),
    ("diff of an object whose section symbol names no section", section_symbol_of_no_section,
     ["patch.o: a relocation refers to section symbol ", "which names no section (st_shndx SHN_UNDEF)"]),
    ("--out ''", lambda d: scn(d, SCENARIO + FUZZ, "--runs", "1", "--out", "", command="fuzz"),
     ["argument --out: an empty path names no file"]),
    ("--trace ''", lambda d: scn(d, SCENARIO, "--trace", ""), ["argument --trace: an empty path names no file"]),
    ("--tasks naming no task (',')", lambda d: scn(d, SCENARIO, "--tasks", ","),
     ["--tasks: names no task (tasks: user; leave it out for all)"]),
    ("check.unit naming no function", lambda d: scn(d, SCENARIO + '\n[check]\nunit = "nope"\n'),
     ["s.toml:20: check.unit: no function 'nope' in the program"]),
    ("a source named twice", lambda d: scn(d, SCENARIO.replace('["base.c"]', '["base.c", "./base.c"]')),
     ["s.toml:2: program.sources: ./base.c: named twice (a file is compiled and linked once)"]),
    ("a stub that is also a source", lambda d: scn(d, SCENARIO.replace('["base.c"]', '["base.c"]\nstubs = ["base.c"]')),
     ["s.toml:3: program.stubs: base.c: named twice"]),
    ("an empty cflag", lambda d: scn(d, SCENARIO.replace('sources = ["base.c"]', 'sources = ["base.c"]\ncflags = ["-O2", ""]')),
     ["s.toml:3: program.cflags: holds an empty flag"]),
    ("a patch name with a '/'", lambda d: scn(d, SCENARIO.replace('name = "p"', 'name = "../p"').replace('patch = "p"', 'patch = "../p"')),
     ["s.toml:10: patch[0].name: '../p' is not a patch name (non-empty, no ':', '/' or NUL)"]),
    ("--resume of a campaign.json linked to /dev/zero", lambda d: (scn(d, SCENARIO + FUZZ), campaign_json_endless(d))[1],
     ["--out", "c: campaign.json is a symbolic link; lpemu writes only files of its own there"]),
    ("--resume of a campaign whose lock links to a file of the user's",
     lambda d: (scn(d, SCENARIO + FUZZ), campaign_file_linked("lock")(d))[1],
     ["--out", "c: lock is a symbolic link; lpemu writes only files of its own there"]),
    ("--resume of a campaign whose rejected.txt links to a file of the user's",
     lambda d: (scn(d, SCENARIO + FUZZ), campaign_file_linked("rejected.txt")(d))[1],
     ["--out", "c: rejected.txt is a symbolic link"]),
    ("--resume of a campaign whose runs.jsonl links to a file of the user's",
     lambda d: (scn(d, SCENARIO + FUZZ), campaign_file_moved_and_linked("runs.jsonl")(d))[1],
     ["--out", "c: runs.jsonl is a symbolic link; lpemu writes only files of its own there"]),
    ("--resume of a campaign whose campaign.json links to a file of the user's",
     lambda d: (scn(d, SCENARIO + FUZZ), campaign_file_moved_and_linked("campaign.json")(d))[1],
     ["--out", "c: campaign.json is a symbolic link; lpemu writes only files of its own there"]),
    ("--trace naming the scenario itself, with --force", lambda d: scn(d, SCENARIO, "--trace", d / "s.toml", "--force"),
     ["--trace", "s.toml: is the scenario itself; an output never replaces an input, even with --force"]),
    ("--timeline naming a link to a source, with --force",
     lambda d: ((d / "t.svg").symlink_to("base.c"), scn(d, SCENARIO, "--timeline", d / "t.svg", "--force"))[1],
     ["--timeline", "t.svg: is a source of the scenario", "base.c"]),
    ("fuzz --seed whose last run's seed passes 2**63 - 1",
     lambda d: scn(d, SCENARIO + FUZZ, "--seed", str(2 ** 63 - 2), "--runs", "3", "--jobs", "1", command="fuzz"),
     ["--seed 9223372036854775806 with 3 runs: the last seed would be 9223372036854775808"]),
    ("fuzz --scheduler ''", lambda d: scn(d, SCENARIO + FUZZ, "--scheduler", "", "--runs", "1", command="fuzz"),
     ["--scheduler '': no address"]),
    ("diff of LTO objects (-flto)", lto_objects,
     ["base.o: an LTO object (built with -flto: GIMPLE bytecode, no machine code)"]),
    ("an LTO object as a source", lambda d: (lto_objects(d), scn(d, SCENARIO.replace('["base.c"]', '["base.o"]')))[1],
     ["base.o: an LTO object"]),
    ("cflags -flto", lambda d: scn(d, SCENARIO.replace('sources = ["base.c"]', 'sources = ["base.c"]\ncflags = ["-flto"]')),
     ["base.c: compiled with -flto, gcc made an LTO object", "remove -flto"]),
    ("cflags -fpatchable-function-entry=5 (the fentry call inside the function)",
     lambda d: scn(d, SCENARIO.replace('sources = ["base.c"]', 'sources = ["base.c"]\ncflags = ["-fpatchable-function-entry=5"]')),
     ["vmlinux (base.c): __mcount_loc records 0x", "+0x5: an fentry call that is not the function's first instruction",
      "-fpatchable-function-entry=N"]),
    ("--resume of a campaign.json whose kernels hold null and 1",
     lambda d: (scn(d, SCENARIO + FUZZ), campaign_json_numbers(d))[1],
     ["--resume", "it holds a different campaign (kernels 'None 1'"]),
]


def run_row(d: Path, capsys, label, setup) -> tuple[int, str]:
    ctx = {"gcc missing": no_gcc, "no temporary directory": no_tmp, "diff with no temporary directory": no_tmp,
           "--trace made by another run while this one ran": trace_raced,
           "--trace --force over a file, the disk filling up midway": trace_disk_full,
           "run > /dev/full": stdout_full, "diff > /dev/full": stdout_full,
           }.get(label, lambda d: contextlib.nullcontext())(d)
    argv = setup(d)
    capsys.readouterr()
    with ctx:
        code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


@pytest.mark.parametrize("label,setup,words", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_rows(d, capsys, label, setup, words):
    code, out, err = run_row(d, capsys, label, setup)
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    for w in words:
        assert w in err, err
    # nothing that a terminal would act on or hide (an escape sequence, a bidi override): escaped
    assert invisible(err.replace("\n", "").replace("\t", "")) is None, repr(err)
    if not err.startswith("usage:"):           # argparse's own usage errors are two lines
        assert err.startswith("lpemu: error: ") and err.count("lpemu: error:") == 1, err


def test_an_existing_output_is_not_overwritten(d, capsys):
    code, _, err = run_row(d, capsys, "trace", trace_exists)
    assert code == 2 and (d / "t.json").read_text() == "mine"
    code, _, err = run_row(d, capsys, "out", out_exists)
    assert code == 2 and (d / "out" / "runs.jsonl").read_text() == "mine\n"
    code, _, err = run_row(d, capsys, "resume", resume_not_a_campaign)
    assert code == 2 and (d / "other" / "notes.txt").read_text() == "mine\n"
    (d / "other" / "summary.json").write_text("mine\n")
    for extra in ("--force", "--resume"):
        code, _, err = run_row(d, capsys, "force", lambda d: scn(d, SCENARIO, "--out", d / "other", extra, command="fuzz"))
        assert code == 2 and (d / "other" / "summary.json").read_text() == "mine\n", err
    base = (d / "base.c").read_text()
    code, _, err = run_row(d, capsys, "junit", lambda d: scn(d, SCENARIO + FUZZ, "--runs", "1", "--jobs", "1",
                                                             "--junit", d / "base.c", command="fuzz"))
    assert code == 2 and (d / "base.c").read_text() == base
    (d / "p.png").write_text("mine")
    code, _, err = run_row(d, capsys, "plot", lambda d: ["bench", "--quick", "--plot", d / "p.png"])
    assert code == 2 and (d / "p.png").read_text() == "mine"
    code, _, err = run_row(d, capsys, "--trace made by another run while this one ran",
                           lambda d: ((d / "t.json").unlink(), scn(d, SCENARIO, "--trace", d / "t.json"))[1])
    assert code == 2 and (d / "t.json").read_text() == "theirs", err
    code, _, err = run_row(d, capsys, "--trace --force over a file, the disk filling up midway",
                           lambda d: ((d / "t.json").write_text(EARLIER_TRACE), scn(d, SCENARIO, "--trace", d / "t.json", "--force"))[1])
    assert code == 2 and (d / "t.json").read_text() == EARLIER_TRACE and not list(d.glob(".t.json*")), err
    # --force replaces an output of lpemu's, never a file of the user's under its name
    for option, name, mine in (("--trace", "t.json", b"mine"), ("--timeline", "t.svg", b"<svg>mine</svg>"),
                               ("--timeline", "t.png", b"\x89PNG\r\n\x1a\nmine")):
        (d / name).write_bytes(mine)
        code, _, err = run_row(d, capsys, "force", lambda d: scn(d, SCENARIO, option, d / name, "--force"))
        assert code == 2 and (d / name).read_bytes() == mine and "never one of yours" in err, err
    (d / "p.png").write_text("mine")
    code, _, err = run_row(d, capsys, "plot", lambda d: ["bench", "--quick", "--plot", d / "p.png", "--force"])
    assert code == 2 and (d / "p.png").read_text() == "mine"
    for name in ("lock", "rejected.txt"):
        shutil.rmtree(d / "c", ignore_errors=True)
        scn(d, SCENARIO + FUZZ)
        code, _, err = run_row(d, capsys, name, campaign_file_linked(name))
        assert code == 2 and (d / "mine.txt").read_text() == "mine", err
    for name in ("runs.jsonl", "campaign.json", "summary.json"):
        shutil.rmtree(d / "c", ignore_errors=True)
        scn(d, SCENARIO + FUZZ)
        setup = campaign_file_moved_and_linked(name)
        argv = setup(d)
        mine = (d / "mine.txt").read_bytes()
        code, _, err = run_row(d, capsys, name, lambda d: argv)
        assert code == 2 and f"{name} is a symbolic link" in err and (d / "mine.txt").read_bytes() == mine, err
    # a link where the campaign writes a file's new content aside is not
    # followed either (the new content goes to a new file of its own)
    shutil.rmtree(d / "c", ignore_errors=True)
    scn(d, SCENARIO + FUZZ)
    assert cli.main(["fuzz", str(d / "s.toml"), "--runs", "1", "--jobs", "1", "--quiet", "--out", str(d / "c")]) == 0
    (d / "mine.txt").write_text("mine")
    for name in ("campaign.json.tmp", "summary.json.tmp", "runs.jsonl.tmp"):
        (d / "c" / name).symlink_to(d / "mine.txt")
    code = cli.main(["fuzz", str(d / "s.toml"), "--runs", "2", "--jobs", "1", "--quiet", "--out", str(d / "c"),
                     "--resume"])
    assert code == 0 and (d / "mine.txt").read_text() == "mine"


def test_an_output_never_replaces_an_input(d, capsys):
    """--force replaces an output, never the scenario or a source, by its name,
    a symbolic link or a hard link."""
    before = {n: (d / n).read_bytes() for n in ("base.c", "patch.c")}
    (d / "hard.json").unlink(missing_ok=True)
    os.link(d / "patch.c", d / "hard.json")
    (d / "soft.svg").symlink_to("base.c")
    for option, path, culprit in [("--trace", d / "s.toml", "the scenario itself"),
                                  ("--trace", d / "hard.json", "patch.c"), ("--timeline", d / "soft.svg", "base.c")]:
        code, _, err = run_row(d, capsys, option, lambda d: scn(d, SCENARIO, option, path, "--force"))
        assert code == 2 and culprit in err and "never replaces an input" in err, err
        assert (d / "s.toml").read_text() == SCENARIO
        assert {n: (d / n).read_bytes() for n in before} == before


def test_output_paths_are_checked_before_the_run(d, capsys):
    """A mistake in one output path is found before anything runs or is written:
    the other output is not left behind."""
    for second in (["--timeline", d / "t.txt"], ["--timeline", d / "t.json"]):
        code, _, err = run_row(d, capsys, "trace", lambda d: scn(d, SCENARIO, "--trace", d / "t.json", *second))
        assert code == 2 and not (d / "t.json").exists(), err


def test_a_junit_report_is_rewritten(d, capsys):
    """--junit replaces a report it wrote before (a CI report is rewritten on every run)."""
    argv = scn(d, SCENARIO + FUZZ, "--runs", "1", "--jobs", "1", "--quiet", "--junit", d / "j.xml", command="fuzz")
    assert cli.main([str(a) for a in argv]) in (0, 1)
    assert "<testsuites" in (d / "j.xml").read_text()
    (d / "j.xml").write_text((d / "j.xml").read_text().replace('name="kgraft"', 'name="old run"'))
    assert cli.main([str(a) for a in argv]) in (0, 1)
    assert "old run" not in (d / "j.xml").read_text() and 'name="kgraft"' in (d / "j.xml").read_text()
    # another tool's JUnit report (pytest's) is the user's: kept
    for theirs in ('<?xml version="1.0"?><testsuites name="pytest tests"><testsuite name="pytest" tests="0"/></testsuites>',
                   '<testsuite name="pytest" tests="1"><testcase name="t"/></testsuite>'):
        (d / "j.xml").write_text(theirs)
        code, _, err = run_row(d, capsys, "junit", lambda d: argv)
        assert code == 2 and "not a JUnit report lpemu wrote" in err and (d / "j.xml").read_text() == theirs, err


def shorten(text: str, d: Path) -> str:
    text = text.replace(str(d) + "/", "").replace(str(d), "DIR")
    text = re.sub(r"/\S*/emu/seed/", "", text)
    if text.startswith("usage: "):             # argparse: its usage line, shortened, then its message
        lines = text.splitlines()
        text = " ".join(lines[0].split()[:3]) + " …\n" + lines[-1]
    text = text.replace("\n", " ⏎ ").replace("|", "\\|")
    return text if len(text) <= 300 else text[:297] + "…"


HEADER = """\
# Bad input and the answers it gets

Every row is a case of `tests/test_bad_input.py` (CASES and ROWS), and this file is what those
cases print when run (`.venv/bin/python tests/test_bad_input.py > docs/bad-input.md`; a test holds
the file to them). Each row is one message on stderr, exit status 2, no traceback, and nothing on
stdout; the command is `lpemu run s.toml --model livepatch` on a copy of the seed scenario with the
one change named in the first column, unless the first column names another command. Paths are
shortened (DIR is the scenario's directory); `⏎` marks a line break inside the message (the
compiler's and linker's own output, argparse's usage line).

| bad input | exit | message |
|---|---|---|
"""

FOOTER = """
Limits (each keeps a run finite in memory and time; README, "Limits"): a scenario file of at most
1 MiB; a C or assembly source of at most 64 MiB, an object file of at most 1 GiB; strings of at most 4,096 characters and lists of at most 4,096 elements; 64 KiB of cflags;
virtual time (`at`, `window`, the last action plus `horizon`) up to 10^8 instructions; a run keeps at
most 10^6 events (a run past it is an error record in a campaign, exit 2 for `lpemu run`); at most
64 CPUs, 1,000 tasks, a tick of 100,000 instructions; at most 60 patches and modules together (the
C core maps 64 code regions) and 4,095 patched functions (4,096 fentry sites); the program's image
fits in 12 MiB, a module's or patch's in the 240 MiB above it; a campaign has at most 10^6 runs.

Guest faults are not input errors: a run whose guest code faults (unmapped access, invalid
opcode, stack overflow into the guard page, a soft lockup past the instruction budget, every task
asleep forever) ends with outcome `fault` and a report naming the task, the CPU, the symbol and
offset, the instruction and the backtrace; a campaign records it as a result, counts it, names the
first one and its seed in its summary, and goes on.
"""


def table() -> str:
    """The document: each case run for real, its message as printed."""
    import shutil
    import tempfile
    rows = []

    class Capture:
        def __init__(self):
            self.out, self.err = io.StringIO(), io.StringIO()

        def readouterr(self):
            o, e = self.out.getvalue(), self.err.getvalue()
            self.out.seek(0), self.out.truncate(), self.err.seek(0), self.err.truncate()
            return type("Out", (), {"out": o, "err": e})()
    cases = [(c, (lambda change: lambda d: scn(d, change(SCENARIO)))(change)) for c, change, _ in CASES]
    for label, setup in cases + [(r[0], r[1]) for r in ROWS]:
        d = Path(tempfile.mkdtemp(prefix="lpemu-bad-"))
        for name in ("base.c", "patch.c", "patch_foo.c"):
            shutil.copy(SEED / name, d / name)
        cap = Capture()
        with contextlib.redirect_stdout(cap.out), contextlib.redirect_stderr(cap.err):
            code, _, err = run_row(d, cap, label, setup)
        rows.append(f"| {label} | {code} | `{shorten(err, d)}` |")
        shutil.rmtree(d, ignore_errors=True)
    return HEADER + "\n".join(rows) + "\n" + FOOTER


def test_the_table_is_the_one_these_cases_print():
    """docs/bad-input.md has a row for every case, with the words the case checks."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "bad-input.md").read_text()
    rows = {line.split(" | ")[0][2:]: line for line in doc.splitlines() if line.startswith("| ") and " | 2 | " in line}
    for label, _, words in list(CASES) + list(ROWS):
        assert label in rows, f"docs/bad-input.md has no row '{label}': regenerate it"
        for w in words:
            assert w.replace("|", "\\|") in rows[label], (label, w)


def test_images_that_overlap_are_refused(d):
    from emu.errors import UserError
    from emu.images.build import build_c
    from emu.machine.machine import Machine
    base = build_c([d / "base.c"], base=0x400000)
    other = build_c([d / "base.c"], base=0x400000, name="again")
    m = Machine(base)
    with pytest.raises(UserError, match="image 'again' .* overlaps image 'base'"):
        m.load(other)


def test_guest_faults_are_results_not_crashes(d, capsys):
    (d / "base.c").write_text(textwrap.dedent((d / "base.c").read_text()).replace(
        "return 5 + zero;", "return 5 + *(volatile long *)0x10;"))
    (d / "s.toml").write_text(SCENARIO)
    code = cli.main(["run", str(d / "s.toml"), "--model", "kgraft", "--json"])
    out = capsys.readouterr()
    import json
    res = json.loads(out.out)
    assert code == 1 and res["outcome"] == "fault" and res["failing"] == ["fault"]   # a finding
    assert "unmapped" in res["fault"] and "bar+0x" in res["fault"] and "task 'user'" in res["fault"]


if __name__ == "__main__":
    sys.stdout.write(table())


def test_the_reproduce_command_survives_spaces_in_paths_and_names(tmp_path, capsys):
    """The printed command is one a shell runs as it is: the scenario's path
    and the task names are quoted."""
    import shlex
    import shutil
    d = tmp_path / "my scenarios"
    d.mkdir()
    for name in ("base.c", "patch.c"):
        shutil.copy(SEED / name, d / name)
    (d / "s.toml").write_text(SCENARIO.replace('name = "user"', 'name = "user one"'))
    argv = ["run", str(d / "s.toml"), "--model", "livepatch", "--tasks", "user one", "--json"]
    code = cli.main(argv)
    import json
    first = json.loads(capsys.readouterr().out)
    again = shlex.split(first["command"])
    assert again[0] == "lpemu" and str(d / "s.toml") in again and "user one" in again
    assert cli.main(again[1:] + ["--json"]) == code
    assert json.loads(capsys.readouterr().out)["trace_hash"] == first["trace_hash"]


def test_a_source_the_system_cannot_read_is_named(d, capsys):
    """A scenario source that is a file whose reads fail (here a /proc file
    that answers EIO) is one message naming it, not a traceback."""
    code, _, err = run_row(d, capsys, "proc", lambda d: scn(d, SCENARIO.replace('["base.c"]', '["/proc/self/mem"]')))
    assert code == 2 and err.startswith("lpemu: error: /proc/") and "/mem: cannot read it (" in err, err


def test_sigterm_midway_is_an_interrupt_that_leaves_the_outputs_as_they_were(d, capsys, monkeypatch):
    """SIGTERM (a CI timeout, kill) while the trace is being written: exit
    143 (128 + SIGTERM, as a shell reports a process SIGTERM killed), the
    user's old t.json intact, nothing left beside it."""
    import signal
    from emu.app import report
    perfetto = report.perfetto

    def killed_midway(*a, **k):
        data = perfetto(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        return data
    monkeypatch.setattr(report, "perfetto", killed_midway)
    (d / "t.json").write_text(EARLIER_TRACE)
    missed = []              # the test's own handler: the signal reached it, not lpemu's (and pytest lives on)
    def ours(signum, frame):
        missed.append(signum)
    before = signal.signal(signal.SIGTERM, ours)
    try:
        code, _, err = run_row(d, capsys, "term", lambda d: scn(d, SCENARIO, "--trace", d / "t.json", "--force"))
        assert not missed and code == 143 and err == "lpemu: interrupted", err
        assert (d / "t.json").read_text() == EARLIER_TRACE and not list(d.glob(".t.json*"))
        assert signal.getsignal(signal.SIGTERM) is ours        # lpemu's handler is gone again
    finally:
        signal.signal(signal.SIGTERM, before)



@pytest.mark.parametrize("redirect,argv,code,message", [
    ("2>/dev/full", ["run", "absent.toml", "--model", "kgraft"], 2, ""),
    ("2>&-", ["run", "absent.toml", "--model", "kgraft"], 2, ""),
    (">&-", ["run", "s.toml", "--model", "kgraft", "--json"], 2,
     "lpemu: error: cannot write the output: standard output is closed\n"),
    (">/dev/full", ["diff", "base.c", "patch.c"], 2,
     "lpemu: error: cannot write the output to standard output (No space left on device)\n"),
    (">&-", ["--help"], 2, "lpemu: error: cannot write the output: standard output is closed\n"),
    (">/dev/full", ["run", "--help"], 2,
     "lpemu: error: cannot write the output to standard output (No space left on device)\n"),
], ids=["stderr full", "stderr closed", "stdout closed", "stdout full", "--help, stdout closed", "run --help, stdout full"])
def test_standard_streams_that_cannot_be_written(d, redirect, argv, code, message):
    """A full or closed stdout loses the command's output: exit 2 saying so.
    A full or closed stderr loses the message, not the exit status (Python's
    own failure to print it, or to flush at exit, said 1 or 120)."""
    (d / "s.toml").write_text(SCENARIO)
    r = subprocess.run(["bash", "-c", f'cd "$1" && shift && exec "$@" {redirect}', "-", str(d), sys.executable, "-m", "emu",
                        *argv], capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (code, message)


@pytest.mark.parametrize("stem,shown", [("e\x1bx", "e\\x1bx"), ("tab\there", "tab\there"),
                                        (os.fsdecode(b"s\xff"), "s\\udcff")], ids=["escape", "tab", "not UTF-8"])
def test_a_junit_report_is_xml_whatever_the_scenario_is_named(d, capsys, stem, shown):
    """The scenario's name goes into the report: one holding a character XML
    cannot hold (an escape, a byte that is not UTF-8) is written escaped, so
    that CI can read the report and the next campaign rewrites it."""
    import xml.etree.ElementTree as ET
    (d / f"{stem}.toml").write_text(SCENARIO + FUZZ)
    argv = ["fuzz", str(d / f"{stem}.toml"), "--runs", "1", "--jobs", "1", "--quiet", "--junit", str(d / "j.xml")]
    for _ in range(2):                  # the second campaign replaces the first's report
        assert cli.main(argv) in (0, 1), capsys.readouterr().err
        suite = ET.parse(d / "j.xml").getroot()[0]
    assert suite.get("name") == shown
