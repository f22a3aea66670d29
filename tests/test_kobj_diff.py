"""`lpemu diff` on kernel objects: tests/kobj/driver.c and tests/kobj/subsys.c
compiled with the kernel's flags, original and patched (tests/kobj/cases.toml),
compared the way create-diff-object compares them."""
import json
import shutil
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from emu.app import cli
from emu.errors import BuildError, PatchError
from emu.images.diff import diff_objects
from emu.images.kernel_rules import decode, line_macro_change_only
from emu.images.toolchain import compile_kernel_object

KOBJ = Path(__file__).parent / "kobj"
CASES = tomllib.loads((KOBJ / "cases.toml").read_text())["case"]


def build(tmp: Path, side: str, text: str, cflags=(), source: str = "driver.c") -> Path:
    """source (a file of tests/kobj) as text, compiled as the kernel's build
    does, in tmp/side."""
    d = tmp / side
    d.mkdir()
    shutil.copy(KOBJ / "kernel.h", d)
    (d / source).write_text(text)
    obj = d / (Path(source).stem + ".o")
    compile_kernel_object(Path(source), obj, cflags, cwd=d)
    return obj


def patched(case: dict) -> str:
    text = (KOBJ / case.get("source", "driver.c")).read_text()
    text = text.replace('#include "kernel.h"\n', '#include "kernel.h"\n' + "\n" * case.get("shift", 0), 1)
    for find, replace in case.get("edits", []):
        assert text.count(find) == 1, f"{case['name']}: {find!r} occurs {text.count(find)} times"
        text = text.replace(find, replace)
    return text


def objtool_mnop(obj: Path) -> None:
    """What the kernel's objtool --mcount --mnop does to an x86 object after
    the compiler: every `call __fentry__` becomes the 5-byte NOP and its
    relocation R_X86_64_NONE, still naming __fentry__."""
    import struct
    from elftools.elf.elffile import ELFFile
    data = bytearray(obj.read_bytes())
    with open(obj, "rb") as f:
        elf = ELFFile(f)
        syms = list(elf.get_section_by_name(".symtab").iter_symbols())
        for rel in elf.iter_sections():
            if rel["sh_type"] != "SHT_RELA":
                continue
            target = elf.get_section(rel["sh_info"])
            for n, r in enumerate(rel.iter_relocations()):
                at = target["sh_offset"] + r["r_offset"]
                if syms[r["r_info_sym"]].name == "__fentry__" and data[at - 1] == 0xE8:
                    data[at - 1:at + 4] = bytes.fromhex("0f1f440000")
                    info = rel["sh_offset"] + n * rel["sh_entsize"] + 8
                    data[info:info + 8] = struct.pack("<Q", r["r_info_sym"] << 32)
    obj.write_bytes(bytes(data))


def pair(tmp_path, case) -> tuple[Path, Path]:
    cflags = case.get("cflags", [])
    source = case.get("source", "driver.c")
    objects = (build(tmp_path, "orig", (KOBJ / source).read_text(), cflags, source),
               build(tmp_path, "patched", patched(case), cflags, source))
    if case.get("objtool_mnop"):
        for obj in objects:
            objtool_mnop(obj)
    return objects


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_kernel_object_pairs_agree_with_create_diff_object(case, tmp_path, capsys):
    old, new = pair(tmp_path, case)
    if "refused" in case:
        with pytest.raises(PatchError, match=case["refused"].replace("(", r"\(").replace(")", r"\)")):
            diff_objects(old, new)
        # the command line says it once, exit 2, no traceback
        assert cli.main(["diff", str(old), str(new), "--json"]) == 2
        out, err = capsys.readouterr()
        assert case["refused"] in err and "Traceback" not in err and not out
        return
    d = diff_objects(old, new)
    assert (d.changed, d.new) == (case.get("changed", []), case.get("new", []))
    assert set(d.reasons) == set(d.changed)
    assert cli.main(["diff", str(old), str(new), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["changed"], out["new"]) == (d.changed, d.new)


def test_the_line_rule_is_what_hides_moved_lines(tmp_path):
    # Without the rule the moved __LINE__ would show: the bytes do differ.
    from elftools.elf.elffile import ELFFile
    case = {"name": "shift", "shift": 3}
    old, new = pair(tmp_path, case)

    def text(path, name):
        with open(path, "rb") as f:
            return ELFFile(f).get_section_by_name(name).data()
    assert text(old, ".text.dev_wait") != text(new, ".text.dev_wait")
    assert text(old, ".text.dev_write") != text(new, ".text.dev_write")
    assert text(old, "__bug_table") != text(new, "__bug_table")


def test_a_moved_immediate_that_feeds_no_warn_helper_is_a_change():
    # mov $0x10, %esi; call foo  vs  mov $0x11, %esi; call foo
    old = bytes.fromhex("be10000000e800000000c3")
    new = bytes.fromhex("be11000000e800000000c3")
    warn = [(6, ("sym", "__might_sleep", 0))]
    other = [(6, ("sym", "foo", 0))]
    assert line_macro_change_only(old, new, warn)
    assert not line_macro_change_only(old, new, other)
    # another register (%ecx) is a real change even before a WARN helper
    assert not line_macro_change_only(bytes.fromhex("b910000000e800000000c3"),
                                      bytes.fromhex("b911000000e800000000c3"), warn)
    assert not line_macro_change_only(old, old, warn)


def test_the_cli_prints_the_same_answer_as_json(tmp_path, capsys):
    case = next(c for c in CASES if c["name"] == "new_global_function_called")
    old, new = pair(tmp_path, case)
    assert cli.main(["diff", str(old), str(new), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["changed"] == ["dev_call"] and out["new"] == ["dev_double"]
    assert set(out) == {"changed", "new", "removed", "reasons"}


def test_the_cli_refuses_with_exit_2_and_the_reason(tmp_path, capsys):
    case = next(c for c in CASES if c["name"] == "init_code_changes")
    old, new = pair(tmp_path, case)
    assert cli.main(["diff", str(old), str(new), "--json"]) == 2
    err = capsys.readouterr().err
    assert "init code" in err and "Traceback" not in err


def test_objects_and_sources_are_not_mixed_and_bad_files_are_named(tmp_path):
    old = build(tmp_path, "orig", (KOBJ / "driver.c").read_text())
    with pytest.raises(BuildError, match="not an ELF file"):
        diff_objects(old, KOBJ / "driver.c")
    with pytest.raises(BuildError, match="nope.o: no such file"):
        diff_objects(old, tmp_path / "nope.o")


_REG = st.sampled_from([b"\xba", b"\xbe", b"\x41\xba", b"\x41\xbe"])
_WARN = st.sampled_from(["warn_slowpath_fmt", "__warn_printk", "__might_sleep", "__might_fault",
                         "_printk", "printk", "lockdep_rcu_suspicious", "__might_resched",
                         "__btrfs_abort_transaction", "__btrfs_handle_fs_error", "__btrfs_panic"])


@settings(max_examples=200, deadline=None)
@given(reg=_REG, old_line=st.integers(0, 2**31 - 1), new_line=st.integers(0, 2**31 - 1),
       helper=_WARN, strings=st.integers(0, 3), other=st.booleans())
def test_a_moved_line_number_is_ignored_only_before_a_warn_helper(reg, old_line, new_line, helper,
                                                                   strings, other):
    # mov $line, %esi/%edx; then `strings` mov $str, %rdi (R_X86_64_32S); then call helper
    def body(line):
        code = reg + line.to_bytes(4, "little")
        code += b"\x48\xc7\xc7\x00\x00\x00\x00" * strings
        return code + b"\xe8\x00\x00\x00\x00\xc3"
    head = len(reg) + 4
    relocs = [(head + 7 * i + 3, ("str", b"file.c")) for i in range(strings)]
    call = head + 7 * strings + 1
    relocs.append((call, ("sym", "some_function" if other else helper, 0)))
    expected = old_line != new_line and not other
    assert line_macro_change_only(body(old_line), body(new_line), relocs) == expected


@settings(max_examples=200, deadline=None)
@given(code=st.binary(min_size=1, max_size=40), at=st.integers(0, 39), byte=st.integers(0, 255))
def test_any_other_changed_byte_is_a_change(code, at, byte):
    # hostile bytes: whatever the code, a change outside a mov-imm before a WARN call is never hidden
    at %= len(code)
    new = bytearray(code)
    new[at] = byte
    relocs = [(len(code), ("sym", "__warn_printk", 0))]
    result = line_macro_change_only(code, bytes(new), relocs)
    if bytes(new) == code:
        assert not result
    elif result:   # only when the changed byte is the immediate of a mov into %edx/%esi
        insn = next((a, b) for a, b in decode(bytes(new)) if a <= at < b)
        op = insn[0] + (1 if 0x40 <= new[insn[0]] <= 0x4F else 0)
        assert new[op] in (0xBA, 0xBE) and at > op


@pytest.fixture(scope="module")
def driver_object(tmp_path_factory):
    return build(tmp_path_factory.mktemp("hostile"), "orig", (KOBJ / "driver.c").read_text()).read_bytes()


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                 max_size=8))
def test_a_corrupt_object_is_a_clear_error_never_a_traceback(driver_object, tmp_path_factory, cut, flips):
    data = bytearray(driver_object)
    for at, byte in flips:
        data[64 + at % (len(data) - 64)] = byte        # the ELF header itself stays intact
    data = data[:64 + cut % len(data)]
    tmp = tmp_path_factory.mktemp("bad")
    good, bad = tmp / "good.o", tmp / "bad.o"
    good.write_bytes(driver_object)
    bad.write_bytes(bytes(data))
    try:
        diff_objects(good, bad)
    except (BuildError, PatchError) as exc:
        assert str(exc)


def test_what_the_kernel_tools_do_not_see_is_said(tmp_path, capsys):
    # a changed .part child with its own fentry call: listed nowhere, warned about
    case = next(c for c in CASES if c["name"] == "part_child_with_fentry_changes")
    (tmp_path / "part").mkdir()
    old, new = pair(tmp_path / "part", case)
    assert cli.main(["diff", str(old), str(new), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["changed"] == [] and "warning: " in err and "sub_split.part.0 changed" in err
    # a switch table that changed alone: refused as a no-op, with the table named
    case = next(c for c in CASES if c["name"] == "switch_table_changes")
    (tmp_path / "cswtch").mkdir()
    old, new = pair(tmp_path / "cswtch", case)
    assert cli.main(["diff", str(old), str(new)]) == 2
    err = capsys.readouterr().err
    assert "switch table gcc made for dev_classify (CSWTCH) differs" in err
