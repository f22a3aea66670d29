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