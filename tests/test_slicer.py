"""The slicer's precise stops (csrc/slicer.c): a run given a budget ends
after exactly that many instructions, wherever the budget falls inside a
block, and the way it gets there (the cut block stepped under the trap
flag) leaves nothing the guest can see: not in the flags it pushes, not in
the time stamps it reads, not in the flags it is left with."""
import pytest
from hypothesis import given, settings, strategies as st
from unicorn.x86_const import UC_X86_REG_EFLAGS, UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, \
    UC_X86_REG_RIP, UC_X86_REG_RSP

from emu.engine import core
from emu.images.asm import assemble
from emu.images.image import PROT_R, PROT_W, PROT_X

BASE = 0x300000
STACK = 0x7000_0000
TF = 0x100
M32 = (1 << 32) - 1

# One loop, one long block: counting adds, a pushfq whose flags are kept
# (r12 gathers every flags word pushed) and popped back, and a rdtsc whose
# low half is kept (r13). The loop's jmp ends the block.
LOOP = """
f:
""" + " add r14, 1\n" * 9 + """
 pushfq
 pop rbx
 or r12, rbx
 push rbx
 popfq
""" + " add r14, 1\n" * 5 + """
 rdtsc
 mov r13, rax
""" + " add r14, 1\n" * 7 + """
 jmp f
"""


def loop_image():
    img = assemble(LOOP, base=BASE, name="loop")
    starts = sorted(img.insn_starts())
    code = b"".join(seg.data for seg in img.segments)
    adds_at = {a for a in starts if code[a - img.lo:a - img.lo + 4] == bytes.fromhex("4983c601")}
    return img, starts, adds_at


def engine_of(img, starts, *, fast_memory: bool):
    e = core.Engine(fast_memory=fast_memory)
    for seg in img.segments:
        size = (len(seg.data) + 0xFFF) & ~0xFFF
        e.map(seg.addr, size, seg.prot | PROT_X)[:len(seg.data)] = seg.data
        e.add_code(seg.addr, size, [a for a in starts if seg.addr <= a < seg.addr + size])
    e.map(STACK, 0x4000, PROT_R | PROT_W)
    rdtsc = next(a for a in starts if bytes(e.view(a, 2)) == b"\x0f\x31")
    e.add_sysinsn(rdtsc, 2, core.SI_RDTSC)
    e.init_tasks(1)
    e.switch(0)
    e.uc.reg_write(UC_X86_REG_RSP, STACK + 0x3000)
    e.uc.reg_write(UC_X86_REG_RIP, BASE)
    return e, rdtsc


def expected(starts, adds_at, rdtsc, total: int) -> tuple[int, int, int | None]:
    """(rip, adds, time of the last rdtsc) after `total` instructions from f,
    by the loop's own reckoning: instruction k runs at time k."""
    n = len(starts)
    whole, part = divmod(total, n)
    adds = whole * len(adds_at) + sum(1 for a in starts[:part] if a in adds_at)
    i = starts.index(rdtsc)     # r13 takes its stamp one instruction later
    last = whole * n + i if part > i + 1 else (whole - 1) * n + i if whole else None
    return starts[part], adds, last


def check(e, starts, adds_at, rdtsc, total):
    rip, adds, last = expected(starts, adds_at, rdtsc, total)
    assert e.uc.reg_read(UC_X86_REG_RIP) == rip
    assert e.uc.reg_read(UC_X86_REG_R14) == adds
    if last is not None:
        assert e.uc.reg_read(UC_X86_REG_R13) == last & M32
    assert not e.uc.reg_read(UC_X86_REG_R12) & TF, "the guest pushed the trap flag"
    assert not e.uc.reg_read(UC_X86_REG_EFLAGS) & TF, "the trap flag was left set"


@pytest.mark.parametrize("fast_memory", [True, False])
@settings(max_examples=60, deadline=None)
@given(budgets=st.lists(st.integers(1, 70), min_size=1, max_size=40))
def test_a_precise_run_stops_after_exactly_its_budget(fast_memory, budgets):
    img, starts, adds_at = loop_image()
    e, rdtsc = engine_of(img, starts, fast_memory=fast_memory)
    try:
        total = 0
        for b in budgets:
            stop = e.run(b, precise=True)
            assert stop.reason == core.STOP_BUDGET and stop.executed == b
            total += b
            check(e, starts, adds_at, rdtsc, total)
        assert e.retired == total
    finally:
        e.close()


def test_cutting_every_instruction_of_the_loop_in_turn():
    """Each instruction of both blocks is a cut point, twice over (the second
    time its stepped translations already exist)."""
    img, starts, adds_at = loop_image()
    e, rdtsc = engine_of(img, starts, fast_memory=True)
    try:
        total = 0
        for _ in range(2 * len(starts)):
            assert e.run(1, precise=True).executed == 1
            total += 1
            check(e, starts, adds_at, rdtsc, total)
        for b in range(2, 2 * len(starts)):
            assert e.run(b, precise=True).executed == b
            total += b
            check(e, starts, adds_at, rdtsc, total)
    finally:
        e.close()


# ---- against Unicorn's own count, on generated straight-line code -----------------

_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11")
_UNITS = (
    "add {a}, {imm}", "sub {a}, {b}", "xor {a}, {b}", "imul {a}, {b}", "shl {a}, {n}", "adc {a}, 0",
    "lea {a}, [{b} + {c}*4 + {imm}]", "push {a}\n pop {b}", "pushfq\n pop {a}",
    "mov {a}, {b}\n and {a}, 0x8d5\n push {a}\n popfq", "mov qword ptr [rsp - 64], {a}",
    "mov {a}, qword ptr [rsp - 64]", "cmp {a}, {b}\n setb {a8}",
)
_LOW8 = {"rax": "al", "rbx": "bl", "rcx": "cl", "rdx": "dl", "rsi": "sil", "rdi": "dil",
         "r8": "r8b", "r9": "r9b", "r10": "r10b", "r11": "r11b"}


@st.composite
def straight_code(draw):
    lines = []
    for _ in range(draw(st.integers(1, 30))):
        a, b, c = (draw(st.sampled_from(_REGS)) for _ in range(3))
        unit = draw(st.sampled_from(_UNITS))
        lines.append(" " + unit.format(a=a, b=b, c=c, a8=_LOW8[a], imm=draw(st.integers(-2**31, 2**31 - 1)),
                                       n=draw(st.integers(0, 63))))
    return "f:\n" + "\n".join(lines) + "\n jmp f\n"


def _uc_regs():
    import unicorn.x86_const as x
    return [getattr(x, f"UC_X86_REG_{r.upper()}") for r in _REGS] + [x.UC_X86_REG_RSP, x.UC_X86_REG_RIP]


@settings(max_examples=80, deadline=None)
@given(code=straight_code(), seed=st.integers(0, 2**32 - 1),
       budgets=st.lists(st.integers(1, 90), min_size=1, max_size=25))
def test_precise_stops_match_unicorns_own_count(code, seed, budgets):
    """Generated blocks of flag-reading and flag-writing instructions, cut at
    random budgets: after every stop the registers, the arithmetic flags and
    the stack are those of raw Unicorn stopped by its own instruction count
    (which hooks every instruction), and the trap flag is nowhere."""
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    img = assemble(code, base=BASE, name="gen")
    starts = sorted(img.insn_starts())
    regs = _uc_regs()
    init = [(seed * (i + 7) * 0x9E3779B97F4A7C15) & (2**64 - 1) for i in range(len(_REGS))]
    e = core.Engine()
    ref = Uc(UC_ARCH_X86, UC_MODE_64)
    try:
        for seg in img.segments:
            size = (len(seg.data) + 0xFFF) & ~0xFFF
            e.map(seg.addr, size, seg.prot | PROT_X)[:len(seg.data)] = seg.data
            e.add_code(seg.addr, size, [a for a in starts if seg.addr <= a < seg.addr + size])
            ref.mem_map(seg.addr, size)
            ref.mem_write(seg.addr, seg.data)
        e.map(STACK, 0x4000, PROT_R | PROT_W)
        ref.mem_map(STACK, 0x4000)
        e.init_tasks(1)
        e.switch(0)
        for uc in (e.uc, ref):
            for r, v in zip(regs, init):
                uc.reg_write(r, v)
            uc.reg_write(UC_X86_REG_RSP, STACK + 0x3000)
            uc.reg_write(UC_X86_REG_RIP, BASE)
        for b in budgets:
            assert e.run(b, precise=True).executed == b
            ref.emu_start(ref.reg_read(UC_X86_REG_RIP), 0, count=b)
            assert [e.uc.reg_read(r) for r in regs] == [ref.reg_read(r) for r in regs]
            fl = e.uc.reg_read(UC_X86_REG_EFLAGS)
            assert fl & 0x8d5 == ref.reg_read(UC_X86_REG_EFLAGS) & 0x8d5
            assert not fl & TF
            assert bytes(e.view(STACK + 0x2000, 0x1000)) == bytes(ref.mem_read(STACK + 0x2000, 0x1000))
    finally:
        e.close()
