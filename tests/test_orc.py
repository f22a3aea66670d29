"""emu/images/orc.py: ORC tables by static analysis, held to gcc's .eh_frame.

Hand-made byte sequences pin down each rule; the C files in tests/orc_c/ are
compiled with the project's flags at -O0, -O1, -O2 and once without frame
pointers, and every instruction of every function is compared with the
.eh_frame gcc wrote for it.
"""

import io
import pathlib
import shutil
import subprocess

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings, strategies as st

from emu.images import orc
from emu.images.orc import (REG_BP, REG_SP, REG_UNDEFINED, TYPE_UNDEFINED, OrcEntry, OrcTable,
                     analyze_function, build_table, check_eh_frame, eh_frame_rows)

C_DIR = pathlib.Path(__file__).parent / "orc_c"
EXAMPLES = sorted(p.stem for p in C_DIR.glob("*.c"))

# The guest compile flags (as emu.images.image's REQUIRED_CFLAGS and DEFAULT_CFLAGS).
COMMON = ["-ffreestanding", "-fno-builtin", "-fno-stack-protector", "-fcf-protection=none",
          "-mno-red-zone", "-mgeneral-regs-only", "-fasynchronous-unwind-tables",
          "-fno-PIE", "-fno-pic", "-ffunction-sections", "-fdata-sections"]
FENTRY = ["-pg", "-mfentry", "-mnop-mcount", "-mrecord-mcount"]
CONFIGS = {
    "O0": ["-O0", "-fno-omit-frame-pointer", *FENTRY],
    "O1": ["-O1", "-fno-omit-frame-pointer", *FENTRY],
    "O2": ["-O2", "-fno-omit-frame-pointer", *FENTRY],
    # gcc refuses -pg together with -fomit-frame-pointer, so this build has
    # no fentry NOPs; it is here for frames that stay rsp based.
    "O2-omit-fp": ["-O2", "-fomit-frame-pointer"],
    # IBT (the kernel's CONFIG_X86_KERNEL_IBT): an endbr64 before each fentry NOP
    "O2-ibt": ["-O2", "-fno-omit-frame-pointer", *FENTRY, "-fcf-protection=branch"],
}

SP8 = OrcEntry(REG_SP, 8, REG_UNDEFINED, 0)          # at entry and at ret
SP16_BP = OrcEntry(REG_SP, 16, REG_BP, -16)          # after push rbp
BP16 = OrcEntry(REG_BP, 16, REG_BP, -16)             # after mov rbp, rsp


def sp(offset):
    return OrcEntry(REG_SP, offset, REG_UNDEFINED, 0)


def analyze(hexcode, start=0x1000, **kw):
    code = bytes.fromhex(hexcode)
    return analyze_function(code, start, start + len(code), **kw)


# ---- hand-made sequences --------------------------------------------------------

def test_frame_pointer_prologue_and_leave():
    # push rbp; mov rbp, rsp; sub rsp, 0x10; leave; ret
    got = analyze("55 4889e5 4883ec10 c9 c3")
    assert got == {0x1000: SP8, 0x1001: SP16_BP, 0x1004: BP16, 0x1008: BP16, 0x1009: SP8}


def test_push_pop_sub_add_move_an_rsp_based_cfa():
    # push rbx; push r12; sub rsp, 0x18; add rsp, 0x18; pop r12; pop rbx; ret
    got = analyze("53 4154 4883ec18 4883c418 415c 5b c3")
    assert list(got.values()) == [sp(8), sp(16), sp(24), sp(48), sp(24), sp(16), sp(8)]


def test_pop_rbp_restores_an_rsp_based_cfa():
    # push rbp; mov rbp, rsp; push rbx; pop rbx; pop rbp; ret
    got = analyze("55 4889e5 53 5b 5d c3")
    assert list(got.values()) == [SP8, SP16_BP, BP16, BP16, BP16, SP8]


def test_push_rbp_without_frame_pointer_records_the_save_only():
    # push rbx; push rbp; mov rbp, rdi (rbp reused); pop rbp; pop rbx; ret
    got = analyze("53 55 4889fd 5d 5b c3")
    saved = OrcEntry(REG_SP, 24, REG_BP, -24)
    assert list(got.values()) == [sp(8), sp(16), saved, saved, sp(16), sp(8)]


def test_state_after_a_mid_function_ret_comes_from_the_branch():
    # push rbp; mov rbp, rsp; test rdi, rdi; je L; pop rbp; ret;
    # L: mov eax, 1; pop rbp; ret
    got = analyze("55 4889e5 4885ff 7402 5d c3 b801000000 5d c3")
    assert got[0x1009] == BP16 and got[0x100a] == SP8
    assert got[0x100b] == BP16 and got[0x1010] == BP16 and got[0x1011] == SP8


def test_unreached_padding_is_undefined():
    got = analyze("c3 0f1f00 90")  # ret; nopl (%rax); nop
    assert got[0x1000] == SP8
    assert got[0x1001].type == TYPE_UNDEFINED and got[0x1004].type == TYPE_UNDEFINED


def test_paths_that_disagree_make_the_join_undefined():
    # test rdi, rdi; je L; push rax; L: ret   (rsp+8 on one path, rsp+16 on the other)
    code = bytes.fromhex("4885ff 7401 50 c3")
    got = analyze_function(code, 0x1000, 0x1000 + len(code))
    assert got[0x1006].type == TYPE_UNDEFINED
    table = build_table(code, 0x1000, [("f", 0x1000, 0x1000 + len(code))])
    assert table.lookup(0x1006) is None
    assert any("paths disagree" in w for w in table.warnings)


def test_realignment_and_alloca_with_rbp_frame():
    # push rbp; mov rbp, rsp; push rbx; and rsp, -16; sub rsp, rax;
    # lea rsp, [rbp-8]; pop rbx; pop rbp; ret
    got = analyze("55 4889e5 53 4883e4f0 4829c4 488d65f8 5b 5d c3")
    assert [got[a] for a in (0x1009, 0x100c, 0x1010, 0x1011)] == [BP16] * 4
    assert got[0x1012] == SP8


def test_realignment_without_frame_pointer_loses_the_cfa():
    got = analyze("4883e4f0 c3")  # and rsp, -16; ret
    assert got[0x1004].type == TYPE_UNDEFINED


def test_tail_call_ends_the_path():
    # push rbp; pop rbp; jmp <outside>; int3 (never reached)
    got = analyze("55 5d e900100000 cc")
    assert got[0x1002] == SP8 and got[0x1007].type == TYPE_UNDEFINED


def test_call_to_a_noreturn_function_ends_the_path():
    # f: push rbp; mov rbp, rsp; call die; pop rbp; ret     die: jmp die
    f = bytes.fromhex("55 4889e5 e802000000 5d c3")
    die = bytes.fromhex("ebfe")
    code = f + die
    funcs = [("f", 0x1000, 0x1000 + len(f)), ("die", 0x1000 + len(f), 0x1000 + len(code))]
    assert analyze_function(f, 0x1000, 0x1000 + len(f))[0x1009] == BP16
    table = build_table(code, 0x1000, funcs)
    assert table.lookup(0x1004) == BP16 and table.lookup(0x1009) is None


def test_jump_table_targets_are_read_from_data():
    # push rbp; mov rbp, rsp; jmp [rdi*8 + 0x2000]; A: pop rbp; ret; B: pop rbp; ret
    code = bytes.fromhex("55 4889e5 ff24fd00200000 5d c3 5d c3")
    table_data = (0x100b).to_bytes(8, "little") + (0x100d).to_bytes(8, "little")
    funcs = [("f", 0x1000, 0x1000 + len(code))]
    with_data = build_table(code, 0x1000, funcs, data=[(0x2000, table_data)])
    assert with_data.lookup(0x100b) == BP16 and with_data.lookup(0x100e) == SP8
    assert not with_data.warnings
    without = build_table(code, 0x1000, funcs)
    assert without.lookup(0x100b) is None
    assert any("indirect jump" in w for w in without.warnings)


def test_cold_part_starts_with_the_parents_frame():
    f = bytes.fromhex(
        "55"              # 0x1000 push rbp
        "4889e5"          # 0x1001 mov rbp, rsp
        "4885ff"          # 0x1004 test rdi, rdi
        "0f8502000000"    # 0x1007 jne f.cold (0x100f)
        "5d"              # 0x100d L: pop rbp
        "c3")             # 0x100e ret
    cold = bytes.fromhex(
        "e8ec0f0000"      # 0x100f call 0x2000 (outside)
        "ebf7")           # 0x1014 jmp L
    code, cold_start = f + cold, 0x1000 + len(f)
    table = build_table(code, 0x1000, [("f", 0x1000, cold_start),
                                       ("f.cold", cold_start, 0x1000 + len(code))])
    assert table.lookup(0x100f) == BP16 and table.lookup(0x1014) == BP16
    assert not table.warnings
    alone = analyze_function(cold, cold_start, cold_start + len(cold))
    assert alone[0x100f] == SP8  # analysed on its own it looks like a function entry


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["push", "pop", "sub", "add"]), max_size=24),
       st.integers(1, 15))
def test_rsp_based_cfa_tracks_the_depth(ops, units):
    """Random push/pop/sub/add sequences: the CFA offset is 8 plus the depth."""
    code, expected, depth, stack = b"", [], 0, []
    for op in ops:
        if op in ("pop", "add") and not stack:
            continue
        if op in ("pop", "add") and stack[-1] != op:
            continue  # undo exactly what the last push/sub did
        expected.append(sp(8 + depth))
        if op == "push":
            code += b"\x53"; depth += 8; stack.append("pop")                   # push rbx
        elif op == "sub":
            code += bytes([0x48, 0x83, 0xEC, 8 * units]); depth += 8 * units; stack.append("add")
        elif op == "pop":
            code += b"\x5b"; depth -= 8; stack.pop()                           # pop rbx
        else:
            code += bytes([0x48, 0x83, 0xC4, 8 * units]); depth -= 8 * units; stack.pop()
    got = analyze_function(code + b"\xc3", 0x1000, 0x1001 + len(code))
    assert list(got.values())[:-1] == expected


# ---- OrcTable -------------------------------------------------------------------

def test_table_lookup_merges_equal_entries_and_makes_gaps_explicit():
    t = OrcTable.from_dict({0x10: SP8, 0x11: SP8, 0x12: BP16, 0x20: orc.UNDEFINED,
                            0x30: SP8, 0x40: orc.UNDEFINED})
    assert t.ips == [0x10, 0x12, 0x20, 0x30, 0x40] and len(t) == 5
    assert t.lookup(0xF) is None and t.lookup(0x11) == SP8 and t.lookup(0x1F) == BP16
    assert t.lookup(0x25) is None and t.lookup(0x3F) == SP8 and t.lookup(0x40) is None


def test_table_merge_and_pack():
    a = OrcTable.from_dict({0x10: SP8, 0x20: orc.UNDEFINED})
    b = OrcTable.from_dict({0x20: BP16, 0x30: orc.UNDEFINED})
    m = OrcTable.merge(b, a)
    assert m.ips == [0x10, 0x20, 0x30] and m.lookup(0x25) == BP16
    ips, entries = m.pack()
    assert len(ips) == 8 * 3 and len(entries) == 12 * 3
    with pytest.raises(ValueError):
        OrcTable.merge(a, OrcTable.from_dict({0x18: SP8, 0x28: orc.UNDEFINED}))


def test_disagreement_reads_as_one_line():
    d = orc.Disagreement("foo", 0x401004, SP8, None, 4)
    assert str(d) == "foo+0x4 (0x401004): ours CFA=rsp+8 rbp=same, .eh_frame undefined"


# ---- compiled C against gcc's .eh_frame -----------------------------------------

def compile_example(name, config, tmp_path):
    if not (shutil.which("gcc") and shutil.which("ld")):
        pytest.skip("gcc and ld are needed")
    obj, elf = tmp_path / f"{name}.o", tmp_path / f"{name}.elf"
    subprocess.run(["gcc", "-c", *COMMON, *CONFIGS[config], "-o", obj, C_DIR / f"{name}.c"],
                   check=True, capture_output=True)
    # (IBT's .note.gnu.property would overlap -Ttext's .text: it is no code)
    subprocess.run(["objcopy", "-R", ".note.gnu.property", obj], check=True, capture_output=True)
    subprocess.run(["ld", "-nostdlib", "-o", elf, "-Ttext=0x400000", "-e", "0", obj],
                   check=True, capture_output=True)
    return elf.read_bytes()


def load(elf):
    """(.text bytes, its address, functions, other allocated sections)."""
    f = ELFFile(io.BytesIO(elf))
    text = f.get_section_by_name(".text")
    functions = [(s.name, s["st_value"], s["st_value"] + s["st_size"])
                 for s in f.get_section_by_name(".symtab").iter_symbols()
                 if s["st_info"]["type"] == "STT_FUNC" and s["st_size"]]
    data = [(s["sh_addr"], s.data()) for s in f.iter_sections()
            if s["sh_flags"] & 2 and s["sh_type"] == "SHT_PROGBITS" and s.name != ".text"]
    return text.data(), text["sh_addr"], functions, data


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", EXAMPLES)
def test_every_instruction_agrees_with_eh_frame(name, config, tmp_path):
    elf = compile_example(name, config, tmp_path)
    code, base, functions, data = load(elf)
    table = build_table(code, base, functions, data=data)
    assert table.warnings == ()
    report = check_eh_frame(elf, table, functions, code, base)
    assert [str(d) for d in report] == []
    # Every instruction was compared, except alignment NOPs no path reaches.
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    n_insns = sum(len(list(md.disasm(code[s - base:e - base], s))) for _, s, e in functions)
    assert report.checked + report.padding == n_insns
    assert report.checked > 0.8 * n_insns


def test_cold_parts_are_analysed_not_skipped(tmp_path):
    """gcc -O2 splits unlikely paths into `.cold` functions; each gets the
    frame state of the jump from its parent (no exception is needed)."""
    elf = compile_example("cold", "O2", tmp_path)
    code, base, functions, data = load(elf)
    table = build_table(code, base, functions, data=data)
    cold = [f for f in functions if ".cold" in f[0]]
    assert cold
    for _, start, end in cold:
        assert table.lookup(start) is not None and table.lookup(start).sp_reg == REG_BP
    assert not check_eh_frame(elf, table, cold, code, base)


@pytest.mark.parametrize("name", EXAMPLES)
def test_without_frame_pointers_the_cfa_stays_rsp_based(name, tmp_path):
    elf = compile_example(name, "O2-omit-fp", tmp_path)
    code, base, functions, data = load(elf)
    table = build_table(code, base, functions, data=data)
    rbp_based = {fn for fn, s, e in functions
                 for ip, entry in zip(table.ips, table.entries)
                 if s <= ip < e and entry.sp_reg == REG_BP}
    # Only variable-sized or over-aligned frames need rbp without -fno-omit-frame-pointer.
    assert rbp_based <= {"vla", "with_alloca", "aligned", "vla_saved"}
    assert (name == "alloca") == bool(rbp_based)


def test_eh_frame_rows_start_each_function_at_the_call_state(tmp_path):
    elf = compile_example("seed", "O2", tmp_path)
    _, _, functions, _ = load(elf)
    rows = eh_frame_rows(elf)
    assert all(rows[start] == SP8 for _, start, _ in functions)
    assert OrcTable.from_dict(rows).lookup(max(end for _, _, end in functions)) is None
