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
