"""Stack walks: hand-made stacks for each outcome, and the C fast path held to
the pure-Python reference (emu/engine/unwind.py) on hostile inputs."""
from __future__ import annotations

import struct
from collections import namedtuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from emu.engine import core
from emu.engine import unwind
from emu.engine.unwind import (WALK_BAD_RET, WALK_NO_END, WALK_NO_ORC, WALK_NOT_PROGRESSING, WALK_OFF_STACK,
                        WALK_OK, WALK_PREEMPTED, WALK_TOO_DEEP)

# Same fields as emu/images/orc.py's OrcEntry; local so these tests stand alone.
Orc = namedtuple("Orc", "sp_reg sp_offset bp_reg bp_offset type")
UNDEF, SP, BP = 0, 1, 2
CALL, UNDEFINED = 0, 1

TOP = 2**64 - 1


def sp_frame(size):
    """A function whose CFA is rsp + size and that leaves rbp alone."""
    return Orc(SP, size, UNDEF, 0, CALL)


BP_FRAME = Orc(BP, 16, BP, -16, CALL)  # push %rbp; mov %rsp, %rbp


class Stack:
    """Guest stack memory [lo, hi) as bytes."""

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi
        self.buf = bytearray(hi - lo)

    def put(self, addr, *words):
        for i, w in enumerate(words):
            struct.pack_into("<Q", self.buf, addr - self.lo + 8 * i, w)
        return self

    def bytes(self):
        return bytes(self.buf)


def fp_both(stack, lo, hi, text, rip, rsp, rbp, **kw):
    """Walk with both twins; they must agree. Returns the common result."""
    data = bytes(stack)
    ranges = core.Ranges(text)
    c = core.walk_fp(data, lo, hi, ranges, rip, rsp, rbp, **kw)
    py = unwind.walk_fp(data, lo, hi, ranges.ranges, rip, rsp, rbp, **kw)
    assert c == py, (c, py)
    check_shape(py, rip, kw.get("max_entries", 100))
    return py


def orc_both(stack, lo, hi, text, ips, entries, rip, rsp, rbp, **kw):
    data = bytes(stack)
    ranges = core.Ranges(text)
    c = core.walk_orc(data, lo, hi, ranges, core.OrcArrays(ips, entries), rip, rsp, rbp, **kw)
    py = unwind.walk_orc(data, lo, hi, ranges.ranges, ips, entries, rip, rsp, rbp, **kw)
    assert c == py, (c, py)
    check_shape(py, rip, kw.get("max_entries", 100))
    return py


def check_shape(result, rip, max_entries):
    code, entries = result
    assert code in unwind.REASONS
    assert len(entries) <= max_entries
    assert entries[:1] == ((rip,) if max_entries else ())
    if code in (WALK_OK, WALK_PREEMPTED):
        assert len(entries) >= 2


# ---- frame pointers, by hand ---------------------------------------------------

TEXT = [(0x1000, 0x2000)]
LO, HI = 0x10000, 0x11000
END_RET = 0x7000_0000  # the entry frame's return address (to user space, not text)
RIP, RSP = 0x1100, 0x10F00
A, B, C = 0x10F10, 0x10F40, 0x10F80  # frames, innermost first


def fp_stack():
    """rip in one function, three frames above it, the last the entry frame."""
    s = Stack(LO, HI)
    s.put(A, B, 0x1210)
    s.put(B, C, 0x1310)
    s.put(C, 0, END_RET)
    return s


def fp(s, rip=RIP, rsp=RSP, rbp=A, **kw):
    kw.setdefault("end_ret", END_RET)
    kw.setdefault("end_slot", C + 8)
    return fp_both(s.bytes(), s.lo, s.hi, TEXT, rip, rsp, rbp, **kw)


FULL = (RIP, 0x1210, 0x1310, END_RET)


def test_fp_reaches_entry_frame():
    assert fp(fp_stack()) == (WALK_OK, FULL)


def test_fp_preempted_is_unreliable_but_complete():
    assert fp(fp_stack(), preempted=True) == (WALK_PREEMPTED, FULL)


def test_fp_preempted_other_failure_wins():
    assert fp(fp_stack().put(B + 8, 0), preempted=True) == (WALK_BAD_RET, (RIP, 0x1210))


@pytest.mark.parametrize("rbp", [0x20000, LO - 0x10, A + 4, HI - 8, RSP - 0x10, TOP - 7])
def test_fp_frame_off_stack(rbp):
    assert fp(fp_stack(), rbp=rbp) == (WALK_OFF_STACK, (RIP,))


def test_fp_saved_frame_off_stack():
    assert fp(fp_stack().put(B, 0x30000)) == (WALK_OFF_STACK, (RIP, 0x1210, 0x1310))


def test_fp_cycle():
    assert fp(fp_stack().put(B, A)) == (WALK_NOT_PROGRESSING, (RIP, 0x1210, 0x1310))
    assert fp(fp_stack().put(B, B)) == (WALK_NOT_PROGRESSING, (RIP, 0x1210, 0x1310))


def test_fp_zero_return_address():
    assert fp(fp_stack().put(B + 8, 0)) == (WALK_BAD_RET, (RIP, 0x1210))


def test_fp_return_address_outside_text():
    assert fp(fp_stack().put(B + 8, 0x5000)) == (WALK_BAD_RET, (RIP, 0x1210))


def test_fp_rip_outside_text():
    assert fp(fp_stack(), rip=0x900) == (WALK_BAD_RET, (0x900,))


def test_fp_too_deep():
    s = Stack(LO, HI)
    frames = [LO + 16 * i for i in range(50)]
    for f, nxt in zip(frames, frames[1:] + [0]):
        s.put(f, nxt, 0x1400)
    assert fp(s, rsp=LO, rbp=LO, max_entries=5) == (WALK_TOO_DEEP, (RIP,) + (0x1400,) * 4)
    assert fp(s, rsp=LO, rbp=LO, max_entries=0) == (WALK_TOO_DEEP, ())
    assert fp(s, rsp=LO, rbp=LO, max_entries=51) == (WALK_NO_END, (RIP,) + (0x1400,) * 50)


def test_fp_capacity_is_exact():
    assert fp(fp_stack(), max_entries=4) == (WALK_OK, FULL)
    assert fp(fp_stack(), max_entries=3) == (WALK_TOO_DEEP, FULL[:3])


def test_fp_no_end():
    # the chain ends (saved rbp 0) without passing the entry frame
    assert fp(fp_stack().put(C + 8, 0x1410)) == (WALK_NO_END, FULL[:3] + (0x1410,))
    # the entry frame's return address, but in another slot
    assert fp(fp_stack(), end_slot=C)[0] == WALK_BAD_RET
    assert fp(fp_stack(), rbp=0) == (WALK_NO_END, (RIP,))


def test_fp_near_the_top_of_the_address_space():
    lo = TOP + 1 - 0x100
    s = Stack(lo, TOP)  # hi is at most 2**64 - 1
    s.put(lo + 0x10, lo + 0x40, 0x1210)
    s.put(lo + 0x40, 0, END_RET)
    assert fp_both(s.bytes(), lo, TOP, TEXT, RIP, lo, lo + 0x10, end_ret=END_RET,
                   end_slot=lo + 0x48) == (WALK_OK, (RIP, 0x1210, END_RET))
    # the last whole word is at lo + 0xf0; a frame at lo + 0xf0 would need 16 bytes
    assert fp_both(s.bytes(), lo, TOP, TEXT, RIP, lo, lo + 0xF0)[0] == WALK_OFF_STACK


# ---- ORC, by hand ----------------------------------------------------------------
# f (0x1000) keeps a 0x18-byte frame; g (0x1100) and h (0x1200) use rbp; 0x1300..
# is code without ORC data; 0x800..0x1000 is text below the first ORC entry.

ORC_TEXT = [(0x800, 0x1400)]
ORC_IPS = [0x1000, 0x1100, 0x1200, 0x1300]
ORC_ENTRIES = [sp_frame(0x20), BP_FRAME, BP_FRAME, Orc(UNDEF, 0, UNDEF, 0, UNDEFINED)]
O_RIP, O_RSP = 0x1010, 0x10E00
G_BP, H_BP = 0x10E30, 0x10E50  # where g and h saved the caller's rbp
H_SLOT = H_BP + 8


def orc_stack():
    s = Stack(LO, HI)
    s.put(O_RSP + 0x18, 0x1150)  # f returns into g
    s.put(G_BP, H_BP, 0x1250)  # g: saved rbp, returns into h
    s.put(H_BP, 0x4321, END_RET)  # h is the entry frame
    return s


def orc(s, rip=O_RIP, rsp=O_RSP, rbp=G_BP, ips=ORC_IPS, entries=ORC_ENTRIES, **kw):
    kw.setdefault("end_ret", END_RET)
    kw.setdefault("end_slot", H_SLOT)
    return orc_both(s.bytes(), s.lo, s.hi, ORC_TEXT, ips, entries, rip, rsp, rbp, **kw)


O_FULL = (O_RIP, 0x1150, 0x1250, END_RET)


def test_orc_reaches_entry_frame():
    assert orc(orc_stack()) == (WALK_OK, O_FULL)


def test_orc_preempted_is_reliable():
    assert orc(orc_stack(), preempted=True) == (WALK_OK, O_FULL)


def test_orc_restores_rbp_from_the_stack():
    # h's CFA comes from the rbp that g saved: break it and h's frame moves
    assert orc(orc_stack().put(G_BP, H_BP + 0x100))[0] == WALK_BAD_RET
    assert orc(orc_stack().put(G_BP, 0x50000)) == (WALK_OFF_STACK, O_FULL[:3])


def test_orc_return_address_looks_up_the_call():
    # f's call is its last instruction, so it returns to g's first byte: f's
    # caller frame must still be found with g's entry (ret - 1 lies in f)
    s = Stack(LO, HI)
    s.put(O_RSP + 0x18, 0x1100)   # g returns to 0x1100, the call at the end of f
    s.put(O_RSP + 0x20 + 0x18, END_RET)  # f's frame above g's
    entries = [sp_frame(0x20), sp_frame(0x20), BP_FRAME, ORC_ENTRIES[3]]
    assert orc(s, rip=0x1110, end_slot=O_RSP + 0x38, entries=entries) == (WALK_OK, (0x1110, 0x1100, END_RET))


def test_orc_missing_entry():
    assert orc(orc_stack(), rip=0x900) == (WALK_NO_ORC, (0x900,))
    assert orc(orc_stack(), ips=[], entries=[]) == (WALK_NO_ORC, (O_RIP,))


def test_orc_undefined_entry():
    assert orc(orc_stack().put(G_BP + 8, 0x1350)) == (WALK_NO_ORC, (O_RIP, 0x1150, 0x1350))


@pytest.mark.parametrize("entry", [Orc(7, 0x20, UNDEF, 0, CALL), Orc(UNDEF, 0x20, UNDEF, 0, CALL),
                                   Orc(SP, 0x20, 9, 0, CALL)])
def test_orc_bad_registers(entry):
    assert orc(orc_stack(), entries=[entry] + ORC_ENTRIES[1:]) == (WALK_NO_ORC, (O_RIP,))


@pytest.mark.parametrize("entry", [sp_frame(0x2000), sp_frame(-0x20000), sp_frame(0x1c),
                                   Orc(SP, 0x20, BP, 0x4000, CALL), Orc(SP, 0x20, BP, -0x40000, CALL),
                                   Orc(SP, 0x20, BP, 4, CALL)])
def test_orc_off_stack(entry):
    assert orc(orc_stack(), entries=[entry] + ORC_ENTRIES[1:]) == (WALK_OFF_STACK, (O_RIP,))


def test_orc_bp_cfa_off_stack():
    assert orc(orc_stack(), rbp=TOP - 15) == (WALK_OFF_STACK, (O_RIP, 0x1150))


@pytest.mark.parametrize("entry", [sp_frame(0), sp_frame(-8)])
def test_orc_not_progressing(entry):
    assert orc(orc_stack(), entries=[entry] + ORC_ENTRIES[1:]) == (WALK_NOT_PROGRESSING, (O_RIP,))


def test_orc_bp_below_sp_is_not_progressing():
    assert orc(orc_stack(), rbp=O_RSP + 0x10) == (WALK_NOT_PROGRESSING, (O_RIP, 0x1150))


def test_orc_zero_and_outside_return_addresses():
    assert orc(orc_stack().put(G_BP + 8, 0)) == (WALK_BAD_RET, (O_RIP, 0x1150))
    assert orc(orc_stack().put(G_BP + 8, 0x5000)) == (WALK_BAD_RET, (O_RIP, 0x1150))
    assert orc(orc_stack(), rip=0x5000) == (WALK_BAD_RET, (0x5000,))


def test_orc_too_deep_and_capacity():
    s = Stack(LO, HI)
    for i in range(60):  # f calls itself
        s.put(LO + 0x18 + 0x20 * i, 0x1050)
    assert orc(s, rsp=LO, max_entries=7) == (WALK_TOO_DEEP, (O_RIP,) + (0x1050,) * 6)
    assert orc(orc_stack(), max_entries=4) == (WALK_OK, O_FULL)
    assert orc(orc_stack(), max_entries=3) == (WALK_TOO_DEEP, O_FULL[:3])
    assert orc(orc_stack(), max_entries=0) == (WALK_TOO_DEEP, ())


def test_orc_without_entry_frame_runs_off_the_stack():
    assert orc(orc_stack(), end_slot=0)[0] == WALK_BAD_RET
    s = orc_stack().put(H_BP + 8, 0x1050)  # h "returns" into f, whose frame reaches past hi
    s.put(H_BP, HI - 0x10)
    assert orc(s)[0] in (WALK_OFF_STACK, WALK_BAD_RET)


# ---- ranges and the conservative scan, by hand --------------------------------------


def test_ranges_hit():
    r = core.Ranges([(0x2000, 0x2100), (0x1000, 0x1010)])
    for impl, ranges in ((core.ranges_hit, r), (unwind.ranges_hit, r.ranges)):
        assert impl([0x10, 0x2100, 0x100F, 0x2000], ranges) == 2
        assert impl([0xFFF, 0x1010, 0x20FF + 1], ranges) == -1
        assert impl([], ranges) == -1
    assert core.ranges_hit([5], core.Ranges([])) == -1 == unwind.ranges_hit([5], [])


def test_stack_scan():
    s = Stack(LO, LO + 0x40).put(LO + 0x10, 0x1234, 0x1500, 0x1600)
    r = core.Ranges([(0x1500, 0x1501), (0x1600, 0x1700)])
    for sp, want in ((LO, (LO + 0x18, 0x1500)), (LO + 0x19, (LO + 0x20, 0x1600)), (LO + 0x28, None)):
        assert core.stack_scan(s.bytes(), LO, LO + 0x40, sp, r) == want
        assert unwind.stack_scan(s.bytes(), LO, LO + 0x40, sp, r.ranges) == want


def test_python_twin_rejects_bad_arguments():
    with pytest.raises(ValueError):
        unwind.walk_fp(b"", 0x10, 0x8, TEXT, RIP, 0, 0)
    with pytest.raises(ValueError):
        unwind.walk_orc(bytes(8), 0, 16, TEXT, [], [], RIP, 0, 0)
    with pytest.raises(ValueError):
        unwind.walk_fp(bytes(16), 0, 16, TEXT, RIP, 0, 0, max_entries=-1)
    with pytest.raises(ValueError):
        unwind.stack_scan(bytes(7), 0, 8, 0, [])


# ---- hostile inputs: C == Python -------------------------------------------------------

HOSTILE = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))


def u64(lo, hi):
    return st.integers(max(0, lo), min(TOP, hi))


@st.composite
def stack_range(draw, size):
    """[lo, hi) of the given size, near 0, in the middle or against 2**64 - 1."""
    where = draw(st.sampled_from(["low", "mid", "top"]))
    if where == "low":
        lo = draw(u64(0, 40))
    elif where == "mid":
        lo = 0x7FFF_F000 + draw(st.integers(0, 8)) * 8 + draw(st.sampled_from([0, 0, 0, 3]))
    else:
        lo = TOP - size - draw(u64(0, 40))
    return lo, lo + size


def texts(draw):
    """0..4 ranges, mostly near 0x1000, sometimes anywhere."""
    out = []
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3, 4]))):
        start = draw(st.one_of(u64(0x1000, 0x3000), u64(0, TOP), u64(TOP - 0x100, TOP)))
        out.append((start, min(TOP, start + draw(st.integers(1, 0x1000)))))
    return core.Ranges(out)


def values(lo, hi, text):
    """Words a hostile stack (or register) might hold."""
    choices = [u64(lo - 16, hi + 16), u64(lo // 8, (hi + 8) // 8).map(lambda w: min(TOP, w * 8) & ~7),
               u64(0, 64), u64(TOP - 64, TOP), st.integers(1, 4).map(lambda k: 2**64 - 8 * k),
               u64(0, TOP), st.just(0)]
    if text.ranges:
        choices += [st.sampled_from(text.ranges).flatmap(lambda r: u64(r[0] - 1, r[1]))] * 4
    return st.one_of(choices)


def int32s():
    return st.one_of(st.integers(-64, 64).map(lambda x: x * 8), st.integers(-2**31, 2**31 - 1),
                     st.sampled_from([-2**31, 2**31 - 1, 0, 8, 16, -16]))


def orc_entries():
    return st.builds(Orc, st.one_of(st.sampled_from([UNDEF, SP, BP, SP, BP]), st.integers(0, 255)), int32s(),
                     st.one_of(st.sampled_from([UNDEF, BP, BP]), st.integers(0, 255)), int32s(),
                     st.one_of(st.sampled_from([CALL, CALL, UNDEFINED]), st.integers(0, 255)))


Scene = namedtuple("Scene", "stack lo hi text ips entries rip rsp rbp kw")


@st.composite
def random_scenes(draw):
    """Random stack words, tables and registers."""
    size = draw(st.integers(0, 48)) * 8 + draw(st.sampled_from([0, 0, 0, 5]))
    lo, hi = draw(stack_range(size))
    text = texts(draw)
    val = values(lo, hi, text)
    words = draw(st.lists(val, min_size=size // 8, max_size=size // 8))
    buf = bytearray(struct.pack(f"<{len(words)}Q", *words).ljust(size, b"\xa5"))
    ips = sorted(set(draw(st.lists(val, max_size=8))))
    entries = [draw(orc_entries()) for _ in ips]
    end_ret, end_slot = draw(val), draw(val)
    if size >= 8 and draw(st.booleans()):  # plant the entry frame
        end_slot = lo + draw(st.integers(0, size // 8 - 1)) * 8
        struct.pack_into("<Q", buf, end_slot - lo, end_ret)
    kw = dict(preempted=draw(st.booleans()), max_entries=draw(st.one_of(st.integers(0, 120), st.just(100))),
              end_ret=end_ret, end_slot=end_slot)
    in_text = st.sampled_from(text.ranges).flatmap(lambda r: u64(r[0], r[1] - 1)) if text.ranges else val
    in_stack = u64(lo, hi).map(lambda a: a & ~7)
    rip = draw(st.one_of(in_text, val))
    rsp, rbp = draw(st.one_of(in_stack, val)), draw(st.one_of(in_stack, val))
    return Scene(bytes(buf), lo, hi, text, ips, entries, rip, rsp, rbp, kw)


@st.composite
def built_scenes(draw):
    """A consistent call chain (ORC table, frames, saved rbps), then damaged a little."""
    nfunc = draw(st.integers(1, 6))
    sizes = [draw(st.integers(0, 4)) for _ in range(nfunc)]
    uses_bp = [draw(st.booleans()) for _ in range(nfunc)]
    if draw(st.booleans()):
        uses_bp = [True] * nfunc  # a clean frame-pointer chain as well
    sizes = [max(s, 1) if b else s for s, b in zip(sizes, uses_bp)]
    base = draw(st.sampled_from([0x1000, 0x40_0000, TOP - 0x1000]))
    chain = draw(st.lists(st.integers(0, nfunc - 1), min_size=1, max_size=30))

    # offsets from lo: frame k's return slot, the rsp above it
    sp0 = 8 * draw(st.integers(0, 3))
    slots, sp = [], sp0
    for j in chain:
        slots.append(sp + 8 * sizes[j])
        sp = slots[-1] + 8
    size = sp + 8 * draw(st.integers(0, 3))
    lo = draw(st.sampled_from([0x10000, 0x7FFF_0000, TOP + 1 - size - 64]))
    hi = lo + size

    text = core.Ranges([(base, base + 0x100 * nfunc)])
    ips = [base + 0x100 * j for j in range(nfunc)]
    entries = [BP_FRAME if b else sp_frame(8 * s + 8) for s, b in zip(sizes, uses_bp)]
    words = [0] * (size // 8)
    end_ret = draw(st.sampled_from([0x7000_0000, base + 0x50]))
    for k, slot in enumerate(slots):
        words[slot // 8] = (base + 0x100 * chain[k + 1] + draw(st.integers(1, 0xFF))
                            if k + 1 < len(chain) else end_ret)
    bp = 0  # rbp as each frame sees it, from the outermost in
    for j, slot in reversed(list(zip(chain, slots))):
        if uses_bp[j]:
            words[slot // 8 - 1] = bp and lo + bp
            bp = slot - 8
    rbp = bp and lo + bp
    rip = base + 0x100 * chain[0] + draw(st.integers(0, 0xFF))
    rsp = lo + sp0

    val = values(lo, hi, text)
    for _ in range(draw(st.integers(0, 3))):
        words[draw(st.integers(0, len(words) - 1))] = draw(val)
    if draw(st.integers(0, 3)) == 0:
        entries[draw(st.integers(0, nfunc - 1))] = draw(orc_entries())
    regs = [rip, rsp, rbp]
    if draw(st.integers(0, 4)) == 0:
        regs[draw(st.integers(0, 2))] = draw(val)
    rip, rsp, rbp = regs
    end_slot = lo + slots[-1] if draw(st.integers(0, 5)) else draw(val)
    max_entries = draw(st.one_of(st.integers(0, 120), st.integers(len(chain) - 1, len(chain) + 2)))
    kw = dict(preempted=draw(st.booleans()), max_entries=max(0, max_entries),
              end_ret=end_ret, end_slot=end_slot)
    return Scene(struct.pack(f"<{len(words)}Q", *words), lo, hi, text, ips, entries, rip, rsp, rbp, kw)


def run_both(s: Scene):
    fp_res = fp_both(s.stack, s.lo, s.hi, s.text.ranges, s.rip, s.rsp, s.rbp, **s.kw)
    orc_res = orc_both(s.stack, s.lo, s.hi, s.text.ranges, s.ips, s.entries, s.rip, s.rsp, s.rbp, **s.kw)
    for kind, (code, entries) in (("fp", fp_res), ("orc", orc_res)):
        event(f"{kind}: {unwind.REASONS[code]}")
        event(f"{kind}: {'deep' if len(entries) > 3 else 'shallow'}")
    return fp_res, orc_res


@HOSTILE
@given(random_scenes())
def test_hostile_random_stacks_agree(scene):
    run_both(scene)


@HOSTILE
@given(built_scenes())
def test_hostile_built_chains_agree(scene):
    run_both(scene)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 8), min_size=1, max_size=25), st.booleans())
def test_built_chains_walk_completely(sizes, preempted):
    """An undamaged chain of frame-pointer functions: both unwinders see every frame."""
    lo, ips, entries, words, frames = LO, [], [], [], []
    for i, size in enumerate(sizes):
        ips.append(0x1000 + 0x100 * i)
        entries.append(BP_FRAME)
        words += [0xDEAD] * (size - 1)  # locals
        frames.append(lo + 8 * len(words))  # the saved rbp, the return address above it
        words += [0, 0x1000 + 0x100 * (i + 1) + 5]
    hi = lo + 8 * len(words)
    for f, nxt in zip(frames, frames[1:] + [0]):
        words[(f - lo) // 8] = nxt
    words[-1] = END_RET
    text = [(0x1000, 0x1000 + 0x100 * len(sizes))]
    stack = struct.pack(f"<{len(words)}Q", *words)
    kw = dict(preempted=preempted, end_ret=END_RET, end_slot=frames[-1] + 8)
    want = (0x1010,) + tuple(0x1000 + 0x100 * i + 5 for i in range(1, len(sizes))) + (END_RET,)
    assert fp_both(stack, lo, hi, text, 0x1010, lo, frames[0], **kw) == (
        WALK_PREEMPTED if preempted else WALK_OK, want)
    assert orc_both(stack, lo, hi, text, ips, entries, 0x1010, lo, frames[0], **kw) == (WALK_OK, want)


@HOSTILE
@given(st.data())
def test_hostile_ranges_hit_agree(data):
    text = texts(data.draw)
    addrs = data.draw(st.lists(values(0, 0x100, text), max_size=20))
    want = next((i for i, a in enumerate(addrs) if any(s <= a < e for s, e in text.ranges)), -1)
    assert core.ranges_hit(addrs, text) == unwind.ranges_hit(addrs, text.ranges) == want


@HOSTILE
@given(st.data())
def test_hostile_stack_scan_agree(data):
    size = data.draw(st.integers(0, 40)) * 8 + data.draw(st.sampled_from([0, 0, 3]))
    lo, hi = data.draw(stack_range(size))
    text = texts(data.draw)
    stack = data.draw(st.binary(min_size=size, max_size=size))
    if size >= 8 and text.ranges and data.draw(st.booleans()):
        off = data.draw(st.integers(0, size - 8))
        stack = stack[:off] + struct.pack("<Q", data.draw(values(lo, hi, text))) + stack[off + 8:]
    sp = data.draw(values(lo, hi, text))
    c = core.stack_scan(stack, lo, hi, sp, text)
    assert c == unwind.stack_scan(stack, lo, hi, sp, text.ranges)
    want = None
    for a in range(lo, hi - 7):
        if a % 8 == 0 and a >= sp:
            v = struct.unpack_from("<Q", stack, a - lo)[0]
            if any(s <= v < e for s, e in text.ranges):
                want = (a, v)
                break
    assert c == want


# ---- many tasks' stack checks in one C call (csrc/stacks.c) == check_stack --------------------

from unicorn.x86_const import UC_X86_REG_RBP, UC_X86_REG_RIP, UC_X86_REG_RSP  # noqa: E402

from emu.errors import CoreError, EngineClosed  # noqa: E402

ENGINE_STACKS = 0x7000_0000    # task i's stack: [ENGINE_STACKS + i * 0x3000, + 0x2000)
STACK_BYTES = 0x2000


class TaskStacks:
    """An Engine with n tasks: each a mapped stack and saved registers."""

    def __init__(self, n):
        self.engine = core.Engine()
        self.engine.init_tasks(n)
        self.n = n
        self.regs = [(0, 0, 0)] * n
        for i in range(n):
            self.engine.map(self.lo(i), STACK_BYTES, 3)

    def lo(self, i):
        return ENGINE_STACKS + i * 0x3000

    def fill(self, i, data: bytes, rip, rsp, rbp):
        view = self.engine.view(self.lo(i), STACK_BYTES)
        view[:] = data.ljust(STACK_BYTES, b"\0")[:STACK_BYTES]
        self.engine.switch(i)
        uc = self.engine.uc
        for reg, v in ((UC_X86_REG_RIP, rip), (UC_X86_REG_RSP, rsp), (UC_X86_REG_RBP, rbp)):
            uc.reg_write(reg, v)
        self.regs[i] = (rip, rsp, rbp)

    def twin(self, i, kind, text, ips, entries, *, check, empty, max_entries, preempted, end_ret, end_slot):
        rip, rsp, rbp = self.regs[i]
        lo = self.lo(i)
        return unwind.check_stack(bytes(self.engine.view(lo, STACK_BYTES)), lo, lo + STACK_BYTES,
                                  text.ranges, rip, rsp, rbp, kind=kind, orc_ips=ips, orc_entries=entries,
                                  preempted=preempted, max_entries=max_entries, end_ret=end_ret,
                                  end_slot=end_slot, empty=empty, check=check.ranges)


def checker_for(ts, kind, text, ips, entries, **kw):
    return ts.engine.stack_checker(kind, text, orc=core.OrcArrays(ips, entries), **kw)


def test_check_stacks_by_hand():
    """Frame-pointer chains in three tasks: one reliable, one with the
    checked function on it, one between kernel entries."""
    ts = TaskStacks(3)
    text = core.Ranges([(0x1000, 0x2000), (0x9000, 0x9100)])
    empty = (0x9000, 0x9100)
    for i, ret in enumerate((0x1210, 0x1510, 0x1210)):
        lo = ts.lo(i)
        s = Stack(lo, lo + STACK_BYTES)
        a, b = lo + 0x1000, lo + 0x1040
        s.put(a, b, ret)
        s.put(b, 0, END_RET)
        ts.fill(i, s.bytes(), 0x9010 if i == 2 else 0x1100, lo + 0xF00, a)
    ts.engine.switch(1)              # task 1's registers are live in the engine
    check = core.Ranges([(0x1500, 0x1600)])
    tasks = core.StackTasks([(i, False, ts.lo(i), ts.lo(i) + STACK_BYTES, END_RET, ts.lo(i) + 0x1048)
                             for i in range(3)])
    res = ts.engine.stack_checker("fp", text, empty=empty, max_entries=10).check(tasks, check)
    assert len(res) == 3 and res.failed == 1 and res.failing() == [1]
    assert res.codes == (WALK_OK, WALK_OK, WALK_OK) and res.hits == (-1, 1, -1)
    assert res[0].entries == (0x1100, 0x1210, END_RET)
    assert res[1].entries == (0x1100, 0x1510, END_RET) and res[1].rsp == ts.lo(1) + 0xF00
    assert res[2].entries == (0x9010,)
    for i in range(3):
        assert res[i] == ts.twin(i, "fp", text, [], [], check=check, empty=empty, max_entries=10,
                                 preempted=False, end_ret=END_RET, end_slot=ts.lo(i) + 0x1048)
    # a preempted task: unreliable under frame pointers, fine for a kpatch-style check
    tasks.set_preempted(0, True)
    assert ts.engine.stack_checker("fp", text, max_entries=10).check(tasks, check).failing() == [0, 1]
    assert ts.engine.stack_checker("fp", text, max_entries=10, reliable=False).check(tasks, check).failing() == [1]
    # Ksplice's scan finds the checked function's address among the words
    scan = ts.engine.stack_checker("scan", text, max_entries=2).check(tasks, check)
    assert scan.hits == (-1, 1, -1) and scan[1].entries == (0x1100, 0x1510)
    assert scan[1].where == ts.lo(1) + 0x1048 - 0x40
    ts.engine.close()


def test_check_stacks_refuses_bad_arguments():
    ts = TaskStacks(1)
    text = core.Ranges([(0x1000, 0x2000)])
    with pytest.raises(ValueError):
        ts.engine.stack_checker("fp", text, max_entries=0)
    with pytest.raises(ValueError):
        ts.engine.stack_checker("scan", text, max_entries=1)
    with pytest.raises(ValueError):
        ts.engine.stack_checker("orc", text)          # no ORC table
    with pytest.raises(ValueError):
        ts.engine.stack_checker("dwarf", text)
    with pytest.raises(ValueError):
        unwind.check_stack(b"", 0, 0, [], 0, 0, 0, kind="scan", max_entries=1)
    checker = ts.engine.stack_checker("fp", text)
    with pytest.raises(CoreError, match="tid 5"):
        checker.check(core.StackTasks([(5, False, ts.lo(0), ts.lo(0) + STACK_BYTES, 0, 0)]), text)
    with pytest.raises(CoreError, match="not found"):   # a stack that is not mapped
        checker.check(core.StackTasks([(0, False, 0x10000, 0x12000, 0, 0)]), text)
    assert len(checker.check(core.StackTasks([]), text)) == 0
    ts.engine.close()


@st.composite
def engine_scenes(draw):
    """Up to four tasks with hostile stacks and registers, one set of
    tables, checked ranges and an empty range."""
    text = texts(draw)
    ips = sorted(set(draw(st.lists(values(0x1000, 0x3000, text), max_size=8))))
    entries = [draw(orc_entries()) for _ in ips]
    n = draw(st.integers(1, 4))
    tasks = []
    for i in range(n):
        lo = ENGINE_STACKS + i * 0x3000
        hi = lo + STACK_BYTES
        val = values(lo, hi, text)
        words = draw(st.lists(val, min_size=0, max_size=64))
        top = hi - 8 * len(words)                   # the words sit at the top of the stack
        in_stack = u64(top, hi).map(lambda a: a & ~7)
        rip = draw(st.one_of(st.sampled_from(text.ranges).flatmap(lambda r: u64(r[0], r[1] - 1))
                             if text.ranges else val, val))
        rsp, rbp = draw(st.one_of(in_stack, val)), draw(st.one_of(in_stack, val))
        end_ret = draw(val)
        end_slot = top + 8 * draw(st.integers(0, max(0, len(words) - 1))) if words else draw(val)
        if words and draw(st.booleans()):
            words[(end_slot - top) // 8] = end_ret
        data = bytes(STACK_BYTES - 8 * len(words)) + struct.pack(f"<{len(words)}Q", *words)
        tasks.append((data, rip, rsp, rbp, draw(st.booleans()), end_ret, end_slot))
    check = core.Ranges(draw(st.lists(st.tuples(u64(0, TOP), st.integers(1, 0x400))
                                      .map(lambda t: (t[0], min(TOP, t[0] + t[1]))), max_size=3))
                        + ([draw(st.sampled_from(text.ranges))] if text.ranges and draw(st.booleans()) else []))
    empty = draw(st.one_of(st.just((0, 0)), st.sampled_from(text.ranges) if text.ranges else st.just((0, 0))))
    kind = draw(st.sampled_from(["fp", "orc", "scan"]))
    max_entries = draw(st.integers(2 if kind == "scan" else 1, 120))
    current = draw(st.integers(-1, n - 1))
    reliable = draw(st.booleans())
    return text, ips, entries, tasks, check, empty, kind, max_entries, current, reliable


# The walks themselves are held to their twins above with more examples; these
# hold the batch's plumbing (registers from contexts, regions, packing, hits).
ENGINE_HOSTILE = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def four_stacks():
    ts = TaskStacks(4)
    yield ts
    ts.engine.close()


@ENGINE_HOSTILE
@given(engine_scenes())
def test_hostile_check_stacks_agree(four_stacks, scene):
    text, ips, entries, tasks, check, empty, kind, max_entries, current, reliable = scene
    ts = four_stacks
    for i, (data, rip, rsp, rbp, *_rest) in enumerate(tasks):
        ts.fill(i, data, rip, rsp, rbp)
    if current >= 0:
        ts.engine.switch(current)     # that task's registers are the engine's, the others saved
    spec = core.StackTasks([(i, pre, ts.lo(i), ts.lo(i) + STACK_BYTES, end_ret, end_slot)
                            for i, (_, _, _, _, pre, end_ret, end_slot) in enumerate(tasks)])
    res = checker_for(ts, kind, text, ips, entries, empty=empty, max_entries=max_entries,
                      reliable=reliable).check(spec, check)
    twins = [ts.twin(i, kind, text, ips, entries, check=check, empty=empty, max_entries=max_entries,
                     preempted=pre, end_ret=end_ret, end_slot=end_slot)
             for i, (_, _, _, _, pre, end_ret, end_slot) in enumerate(tasks)]
    assert list(res) == twins
    assert res.codes == tuple(t.code for t in twins) and res.hits == tuple(t.hit for t in twins)
    failing = [i for i, t in enumerate(twins)
               if t.hit >= 0 or t.code == WALK_TOO_DEEP or (reliable and t.code != WALK_OK)]
    assert res.failed == len(failing) and res.failing() == failing
    for t in twins:
        event(f"{kind}: {unwind.REASONS[t.code]}{', hit' if t.hit >= 0 else ''}")


@pytest.fixture(scope="module")
def chain_engine():
    """One task whose stack may lie where built_scenes() puts it."""
    e = core.Engine()
    e.init_tasks(1)
    for base in (0x10000, 0x7FFF_0000):
        e.map(base, 0x10000, 3)
    yield e
    e.close()


@ENGINE_HOSTILE
@given(built_scenes().filter(lambda s: s.lo in (0x10000, 0x7FFF_0000)), st.sampled_from(["fp", "orc"]),
       st.data())
def test_hostile_built_chains_check_stacks_agree(chain_engine, scene, kind, data):
    """Deep, mostly sound call chains (then damaged) checked in the engine."""
    e = chain_engine
    e.view(scene.lo, scene.hi - scene.lo)[:] = scene.stack
    e.switch(0)
    for reg, v in ((UC_X86_REG_RIP, scene.rip), (UC_X86_REG_RSP, scene.rsp), (UC_X86_REG_RBP, scene.rbp)):
        e.uc.reg_write(reg, v)
    kw = dict(scene.kw)
    kw["max_entries"] = max(1, kw["max_entries"])
    check = core.Ranges(data.draw(st.lists(st.sampled_from(scene.text.ranges).flatmap(
        lambda r: st.tuples(u64(r[0], r[1] - 1), st.integers(1, 0x80))).map(
        lambda t: (t[0], t[0] + t[1])), max_size=2)))
    spec = core.StackTasks([(0, kw["preempted"], scene.lo, scene.hi, kw["end_ret"], kw["end_slot"])])
    res = e.stack_checker(kind, scene.text, orc=core.OrcArrays(scene.ips, scene.entries),
                          max_entries=kw["max_entries"]).check(spec, check)
    twin = unwind.check_stack(scene.stack, scene.lo, scene.hi, scene.text.ranges, scene.rip, scene.rsp,
                              scene.rbp, kind=kind, orc_ips=scene.ips, orc_entries=scene.entries,
                              check=check.ranges, **kw)
    assert res[0] == twin
    walker = e.task_walker(kind, scene.text, orc=core.OrcArrays(scene.ips, scene.entries),
                           max_entries=kw["max_entries"])
    assert walker.walk(0, scene.lo, scene.hi, preempted=kw["preempted"], end_ret=kw["end_ret"],
                       end_slot=kw["end_slot"]) == (twin.code, twin.entries)
    event(f"{kind}: {unwind.REASONS[twin.code]}{', hit' if twin.hit >= 0 else ''}")


# ---- one task's walk in one C call (TaskWalker) == check_stack with nothing checked ---------

@ENGINE_HOSTILE
@given(engine_scenes().filter(lambda s: s[6] != "scan"), st.data())
def test_hostile_task_walks_agree(four_stacks, scene, data):
    """Each task's walk from its saved registers (or the engine's, for the
    loaded task) is check_stack's on the same registers and memory, with
    the empty and register-frame ranges; the walk switches no task."""
    text, ips, entries, tasks, _, empty, kind, max_entries, current, _ = scene
    ts = four_stacks
    for i, (stack, rip, rsp, rbp, *_rest) in enumerate(tasks):
        ts.fill(i, stack, rip, rsp, rbp)
    if current >= 0:
        ts.engine.switch(current)
    loaded = ts.engine.current
    regs = data.draw(st.one_of(st.just((0, 0)), st.sampled_from(text.ranges) if text.ranges else st.just((0, 0)),
                               st.tuples(u64(0, TOP), u64(0, TOP))))
    walker = ts.engine.task_walker(kind, text, orc=core.OrcArrays(ips, entries), empty=empty, regs=regs,
                                   max_entries=max_entries)
    for i, (_, _, _, _, pre, end_ret, end_slot) in enumerate(tasks):
        lo = ts.lo(i)
        twin = unwind.check_stack(bytes(ts.engine.view(lo, STACK_BYTES)), lo, lo + STACK_BYTES, text.ranges,
                                  *ts.regs[i], kind=kind, orc_ips=ips, orc_entries=entries, preempted=pre,
                                  max_entries=max_entries, end_ret=end_ret, end_slot=end_slot, empty=empty,
                                  regs=regs)
        got = walker.walk(i, lo, lo + STACK_BYTES, preempted=pre, end_ret=end_ret, end_slot=end_slot)
        assert got == (twin.code, twin.entries)
        assert type(got[1]) is tuple
        event(f"{kind}: {unwind.REASONS[twin.code]}")
    assert ts.engine.current == loaded


def test_task_walker_refuses_bad_arguments():
    ts = TaskStacks(1)
    text = core.Ranges([(0x1000, 0x2000)])
    orc = core.OrcArrays([], [])
    for kind, kw in (("scan", {}), ("dwarf", {}), ("orc", {"orc": None}), ("fp", {"max_entries": 0}),
                     ("fp", {"max_entries": 4097})):
        with pytest.raises(ValueError):
            ts.engine.task_walker(kind, text, **{"orc": orc, **kw})
    walker = ts.engine.task_walker("fp", text, max_entries=10)
    lo, hi = ts.lo(0), ts.lo(0) + STACK_BYTES
    with pytest.raises(CoreError, match="task 5"):
        walker.walk(5, lo, hi, preempted=False, end_ret=0, end_slot=0)
    with pytest.raises(CoreError, match="not found"):       # a stack that is not mapped
        walker.walk(0, 0x10000, 0x12000, preempted=False, end_ret=0, end_slot=0)
    for tid, a, b in ((-1, lo, hi), (0, hi, lo), (0, -8, hi), (0, lo, 1 << 64)):
        with pytest.raises(ValueError):
            walker.walk(tid, a, b, preempted=False, end_ret=0, end_slot=0)
    assert walker.walk(0, lo, hi, preempted=False, end_ret=-1, end_slot=1 << 70)[0] >= 0   # masked to 64 bits
    ts.engine.close()
    with pytest.raises(EngineClosed):
        walker.walk(0, lo, hi, preempted=False, end_ret=0, end_slot=0)


# ---- a call that ends its function (noreturn) -----------------------------------------------

def test_return_address_just_past_its_function_is_text():
    """gcc ends a function with the call of a noreturn function: the return
    address is the first byte after it, maybe not text at all. The walks
    check ret - 1, the call itself, as the kernel's ORC lookup does."""
    s = fp_stack().put(A + 8, 0x2000)          # text is [0x1000, 0x2000)
    assert fp(s) == (WALK_OK, (RIP, 0x2000, 0x1310, END_RET))
    s = fp_stack().put(A + 8, 0x1000)          # ret - 1 lies before all text
    assert fp(s) == (WALK_BAD_RET, (RIP,))


def test_a_task_asleep_below_a_noreturn_call_is_reliable(compile_c):
    from emu.machine.machine import Machine
    from emu.machine.task import RunState

    img = compile_c("""
        __attribute__((noinline, noreturn)) void block(long x) { for (;;) lpemu_sleep(-1); }
        long entry(long x) { block(x); }
    """)
    entry = img.functions["entry"]
    m = Machine(img)
    t = m.add_task("blocked", "entry", (0,), kind="kthread")
    m.run(stop_when=lambda: t.state is RunState.SLEEPING)
    for unwinder in ("orc", "fp"):
        code, entries = m.stack(t, unwinder=unwinder)
        assert code == WALK_OK and entries[1] == entry.end, unwinder   # returns past entry()'s end
    m.engine.close()
