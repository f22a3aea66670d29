"""Images from assembly text: keystone assembles, capstone checks every instruction."""

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from emu.images.asm import assemble
from emu.errors import BuildError, PatchError
from emu.images.image import FENTRY_NOP, PAGE, PROT_R, PROT_X

BASE = 0x10000

GOOD = """\
# a patchable function calling a plain one
foo:
    fentry
    push rbp
    mov rbp, rsp
    call bar            ; the callee below
    test rax, rax
    jz .Ldone
    sal rax, 1
    rep stosq
.Ldone:
    pop rbp
    ret
    .p2align 4
bar:
    mov rax, 0x1122334455667788
    lea rax, [rip + table]
    cmovz rax, rbx
    je bar
    ret
table:
    .quad foo, bar
"""


def test_good_snippet():
    image = assemble(GOOD, base=BASE, name="snippet")
    assert image.kind == "asm" and image.elf is None and image.name == "snippet"
    assert [(s.addr, len(s.data), s.prot) for s in image.segments] == [(BASE, PAGE, PROT_R | PROT_X)]
    assert image.code_ranges() == [(BASE, BASE + PAGE)] and (image.lo, image.hi) == (BASE, BASE + PAGE)
    foo, bar = image.functions["foo"], image.functions["bar"]
    assert set(image.functions) == {"foo", "bar"}  # table holds only data
    assert foo.start == BASE and foo.end == bar.start == BASE + 0x20  # .p2align 4
    assert bar.end == image.symbols["table"]
    assert ".Ldone" not in image.symbols
    # fentry gives a site; bar has none.
    assert foo.site == BASE and image.read(BASE, 5) == FENTRY_NOP
    assert bar.site is None
    assert image.require_site("foo") is foo
    with pytest.raises(PatchError, match="'bar'"):
        image.require_site("bar")
    # The call reaches bar and the table holds the two function addresses.
    insns = list(Cs(CS_ARCH_X86, CS_MODE_64).disasm(image.read(foo.start, foo.end - foo.start), foo.start))
    assert [i.mnemonic for i in insns][:4] == ["nop", "push", "mov", "call"]
    assert int(insns[3].op_str, 16) == bar.start
    table = image.read(image.symbols["table"], 16)
    assert table == foo.start.to_bytes(8, "little") + bar.start.to_bytes(8, "little")
    starts = image.insn_starts()
    assert starts[0] == foo.start and bar.start in starts and image.function_at(starts[-1]) is bar


def test_fentry_nop_misencoding_is_reported():
    text = "f:\n    push rbp\n    nop dword ptr [rax+rax*1+0]\n    ret\n"
    with pytest.raises(BuildError) as e:
        assemble(text, base=BASE, source="patch.s")
    msg = str(e.value)
    assert msg.startswith("patch.s: line 3: 'nop dword ptr [rax+rax*1+0]' was encoded as 0f 18 24 00")
    assert "0f 1f" in msg


def test_keystone_rejection_names_the_line():
    with pytest.raises(BuildError, match=r"x\.s: line 3: 'bogus rax'"):
        assemble("f:\n    ret\n    bogus rax\n", base=BASE, source="x.s")
    with pytest.raises(BuildError, match=r"line 2: 'call nowhere'"):
        assemble("f:\n    call nowhere\n", base=BASE, source="x.s")


def test_other_checks():
    with pytest.raises(BuildError, match=r"line 3: label 'f' already defined on line 1"):
        assemble("f:\n ret\nf:\n ret\n", base=BASE)
    with pytest.raises(BuildError, match="16-bit"):
        assemble("f:\n pushf\n ret\n", base=BASE)  # keystone's pushf is pushfw
    with pytest.raises(BuildError, match="page aligned"):
        assemble("f:\n ret\n", base=BASE + 8)
    # Labels sharing a line with an instruction, comments with ';' inside strings.
    image = assemble('g: fentry\n    ret\nmsg: .ascii "a;b"\n', base=BASE)
    assert image.functions["g"].site == BASE and image.read(image.symbols["msg"], 3) == b"a;b"


def test_displacements_are_checked_against_the_source():
    """Displacements written in decimal, with a scale of 1 and a zero, or as
    a label, agree with what capstone prints back."""
    for insn in ("mov r8, qword ptr [r12 + 40]", "mov eax, dword ptr [rax+rax*1+0]",
                 "mov rax, qword ptr [rbp - 24]", "lea rax, [rip + f]"):
        assemble(f"f:\n    {insn}\n    ret\n", base=BASE)


def test_a_displacement_keystone_misreads_is_refused(monkeypatch):
    """keystone has been seen to read a decimal displacement as hexadecimal:
    a keystone that does (this one, made to) gets the line refused, naming
    the displacement."""
    import re

    from emu.images import asm
    from keystone import Ks

    class Misreading(Ks):
        def asm(self, text, *args, **kw):
            return super().asm(re.sub(r"\+ (\d+)\]", r"+ 0x\1]", text), *args, **kw)

    monkeypatch.setattr(asm, "Ks", Misreading)
    with pytest.raises(BuildError, match=r"line 2: .*\[r12 \+ 40\].*another displacement"):
        assemble("f:\n    mov r8, qword ptr [r12 + 40]\n    ret\n", base=BASE)
    assemble("f:\n    mov r8, qword ptr [r12 + 0x40]\n    ret\n", base=BASE)     # hexadecimal was meant

# ---- keystone's uninitialised radix --------------------------------------------------
# keystone 0.9.2 never initialises its lexer's default radix unless ks_option is
# called (which sets 16): an engine made over heap memory that last held a 16 reads
# every decimal number as hexadecimal. Setting an option makes that deterministic.

RADIX_TEXT = """\
f:
    fentry
    mov eax, 12
    add rsp, -8
    .skip 20, 0x90
after:
    ret
"""


def _heap_of_sixteens():
    """Leave the C heap's free chunks (16 bytes to 4 KiB) holding the int 16,
    as a process that used such memory would: keystone's next engine then
    reads decimal numbers as hexadecimal (reproduced every time)."""
    import ctypes
    import struct
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunks = []
    for size in range(16, 4096, 16):
        for _ in range(4):
            p = libc.malloc(size)
            ctypes.memmove(p, struct.pack("<I", 16) * (size // 4), size)
            chunks.append(p)
    for p in chunks:
        libc.free(p)


def _decimal_right(img) -> None:
    code = img.read(img.symbols["f"], img.symbols["after"] + 1 - img.symbols["f"])
    assert code[5:10] == bytes.fromhex("b8 0c 00 00 00")          # mov eax, 12
    assert img.symbols["after"] - img.symbols["f"] == 5 + 5 + 4 + 20


def test_decimal_numbers_stay_decimal_over_a_heap_of_sixteens():
    for _ in range(5):
        _heap_of_sixteens()
        _decimal_right(assemble(RADIX_TEXT, base=BASE, name="radix"))


class _HexEngine:
    """A keystone engine whose radix is 16 (as garbage can make it)."""

    def __new__(cls, arch, mode):
        from keystone import KS_OPT_SYNTAX_INTEL, Ks
        ks = Ks(arch, mode)
        ks.syntax = KS_OPT_SYNTAX_INTEL        # ks_option sets the radix to 16
        return ks


class _LateHexEngine:
    """An engine that passes the radix test (its first assembly) and reads
    decimal numbers as hexadecimal from then on."""

    def __init__(self, arch, mode):
        from keystone import Ks
        self.good, self.bad = Ks(arch, mode), _HexEngine(arch, mode)
        self.calls = 0

    def asm(self, text, addr):
        self.calls += 1
        return (self.good if self.calls == 1 else self.bad).asm(text, addr)


def test_engines_that_read_decimal_as_hex_are_refused_by_name(monkeypatch):
    import emu.images.asm as asm
    monkeypatch.setattr(asm, "Ks", _HexEngine)
    with pytest.raises(BuildError, match=r"^radix\.s: keystone read the decimal number .* as hexadecimal "
                                         r"in each of \d+ engines"):
        assemble(RADIX_TEXT, base=BASE, source="radix.s")


def test_a_number_encoded_as_another_is_refused(monkeypatch):
    """An engine that passes the radix test but then reads a number as hex
    (or any other wrong immediate) is caught by the capstone check."""
    import emu.images.asm as asm
    monkeypatch.setattr(asm, "Ks", _LateHexEngine)
    with pytest.raises(BuildError, match=r"^x\.s: line 3: 'mov eax, 12' was encoded as b8 12 00 00 00 "
                                         r"\(mov eax, 0x12\): another immediate$"):
        assemble(RADIX_TEXT, base=BASE, source="x.s")


@pytest.mark.parametrize("text,line", [("f:\n    ret\n    .skip 20, 0x90\n", 3),
                                       ("f:\n    ret\n    .quad 10, -1\n", 3),
                                       ("f:\n    ret\n    .byte 0x90\n    .long 16\n", 4)])
def test_data_written_as_numbers_is_checked_too(monkeypatch, text, line):
    """A data directive of literal numbers (.skip, .quad, .byte, ...) must
    give the bytes it writes: an engine that reads a decimal number as hex
    after the radix test is caught there as well."""
    import emu.images.asm as asm
    assemble(text, base=BASE, source="d.s")          # a sound engine: the same text is fine
    monkeypatch.setattr(asm, "Ks", _LateHexEngine)
    with pytest.raises(BuildError, match=rf"^d\.s: line {line}: '\.[a-z]+ [^']*' was assembled as \d+ bytes "):
        assemble(text, base=BASE, source="d.s")


@pytest.mark.parametrize("line", ["mov eax, -1", "add rsp, -8", "and rsp, -16", "mov al, 255", "mov rcx, 0xc3",
                                  "mov rax, 0x1122334455667788", "imul rax, rbx, 5", "imul rax, 5", "shl rax, 3",
                                  "push 10", "mov word ptr [rax], 300", "cmp byte ptr [rdi], -1"])
def test_immediates_at_their_width_agree(line):
    assemble(f"f:\n    {line}\n    ret\n", base=BASE)
