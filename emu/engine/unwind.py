"""Stack walks for reliable-stack checks: the pure-Python reference.

csrc/unwind.c is the fast path (reached through emu/engine/core.py) with exactly the
same results; tests/test_unwind.py holds the two together. Change the
semantics in both places or in neither.

A stack is given as bytes mirroring the guest range [lo, hi). Nothing read
from it is trusted: a read must lie wholly inside [lo, hi), and every step of
a walk moves strictly up the stack, so a walk always ends. A walk returns
(code, entries): one of the WALK_* codes and the addresses collected, the
task's rip first, then one return address per frame.
"""
from __future__ import annotations

import struct
from bisect import bisect_right
from typing import NamedTuple

from emu.images.orc import REG_BP, REG_SP, REG_UNDEFINED, TYPE_TRAMPOLINES, TYPE_UNDEFINED

__all__ = [
    "WALK_OK", "WALK_OFF_STACK", "WALK_BAD_RET", "WALK_TOO_DEEP", "WALK_PREEMPTED",
    "WALK_NO_END", "WALK_NO_ORC", "WALK_NOT_PROGRESSING", "REASONS",
    "walk_fp", "walk_orc", "ranges_hit", "stack_scan", "StackCheck", "check_stack", "UNWINDERS",
    "graph_ret_addr", "GRAPH_HEADER", "GRAPH_RECORD",
]

# As EMU_WALK_* in csrc/emu.h.
(WALK_OK, WALK_OFF_STACK, WALK_BAD_RET, WALK_TOO_DEEP, WALK_PREEMPTED,
 WALK_NO_END, WALK_NO_ORC, WALK_NOT_PROGRESSING) = range(8)

REASONS = {
    WALK_OK: "reliable",
    WALK_OFF_STACK: "frame outside the task's stack",
    WALK_BAD_RET: "return address outside known text",
    WALK_TOO_DEEP: "stack deeper than the walk allows",
    WALK_PREEMPTED: "preempted task: frame pointers cannot vouch for its frame",
    WALK_NO_END: "walk did not reach the task's entry frame",
    WALK_NO_ORC: "no ORC data for an address",
    WALK_NOT_PROGRESSING: "frame does not lie above the previous one",
}

#: EMU_STUB_SIZE (csrc/emu.h): the trampolines' ORC rule needs it (tests/test_layers.py holds them equal)
STUB_SIZE = 32

_MASK = (1 << 64) - 1
_WORD = struct.Struct("<Q")


class _Ranges:
    """Membership in sorted, disjoint [start, end) ranges by binary search."""

    __slots__ = ("starts", "ends")

    def __init__(self, ranges):
        self.starts = [s for s, _ in ranges]
        self.ends = [e for _, e in ranges]

    def __contains__(self, a: int) -> bool:
        i = bisect_right(self.starts, a) - 1
        return i >= 0 and a < self.ends[i]


# As EMU_GRAPH_HEADER and EMU_GRAPH_RECORD in csrc/emu.h ("function exits").
GRAPH_HEADER, GRAPH_RECORD = 16, 32


def graph_ret_addr(graph, value: int, slot: int) -> int:
    """ftrace_graph_ret_addr, as emu_graph_ret_addr: graph is (return
    trampoline, the task's return stack bytes) or None. The real return
    address for the word value read at stack address slot: value itself
    unless it is the trampoline; else the newest record for slot whose ret
    is not the trampoline (a tail call leaves one that is), or 0 when there
    is none (or the return stack's depth is beyond what it can hold)."""
    if not graph or not graph[0] or value != graph[0]:
        return value
    ret, data = graph
    if len(data) < GRAPH_HEADER:
        return 0
    depth = _WORD.unpack_from(data, 0)[0]
    if depth > (len(data) - GRAPH_HEADER) // GRAPH_RECORD:
        return 0
    for i in range(depth - 1, -1, -1):
        rec_slot, rec_ret = struct.unpack_from("<QQ", data, GRAPH_HEADER + i * GRAPH_RECORD)
        if rec_slot == slot and rec_ret != ret:
            return rec_ret
    return 0


def _check_stack(stack, lo: int, hi: int) -> None:
    if not 0 <= lo <= hi or len(stack) != hi - lo:
        raise ValueError(f"stack bytes must cover [lo, hi) exactly ({lo:#x}-{hi:#x}, {len(stack)} bytes)")


def _word(stack, lo: int, hi: int, a: int) -> int | None:
    """The word at guest address a, or None when a is misaligned or the word
    is not wholly inside [lo, hi)."""
    if a % 8 or a < lo or a + 8 > hi:
        return None
    return _WORD.unpack_from(stack, a - lo)[0]


def _push(out: list, max_entries: int, value: int) -> bool:
    """Append value unless out is full (the walk is then too deep)."""
    if len(out) == max_entries:
        return False
    out.append(value)
    return True


def walk_fp(stack, lo: int, hi: int, text, rip: int, rsp: int, rbp: int, *, preempted: bool = False,
            max_entries: int = 100, end_ret: int = 0, end_slot: int = 0,
            graph=None) -> tuple[int, tuple[int, ...]]:
    """Frame-pointer walk, as the kernel's reliable unwinder -> (WALK_*, entries).

    text: sorted, disjoint (start, end) ranges of known code. The walk is
    complete when it finds end_ret at end_slot (the task's entry frame); a
    preempted task then gives WALK_PREEMPTED, since its innermost frame may
    not be set up yet. graph: (return trampoline, return stack bytes) of
    the task, to read diverted return addresses back (graph_ret_addr).
    Raises ValueError when stack does not cover [lo, hi) or max_entries is
    negative.
    """
    text, out, first = _begin(stack, lo, hi, text, rip, max_entries)
    if first is not None:
        return first, tuple(out)

    def end(code):
        return code, tuple(out)

    frame = rbp
    while True:
        if frame == 0:
            return end(WALK_NO_END)
        # A frame is [saved rbp][return address]; it must lie above rsp.
        if frame % 8 or frame < lo or frame + 16 > hi or frame < rsp:
            return end(WALK_OFF_STACK)
        ret = graph_ret_addr(graph, _word(stack, lo, hi, frame + 8), frame + 8)
        if ret == end_ret and frame + 8 == end_slot:
            if not _push(out, max_entries, ret):
                return end(WALK_TOO_DEEP)
            return end(WALK_PREEMPTED if preempted else WALK_OK)
        # ret - 1: the call itself, which may end its function (a call of a
        # noreturn function), with ret already past the function's end.
        if ret == 0 or ret - 1 not in text:
            return end(WALK_BAD_RET)
        if not _push(out, max_entries, ret):
            return end(WALK_TOO_DEEP)
        nxt = _word(stack, lo, hi, frame)
        if nxt and nxt <= frame:
            return end(WALK_NOT_PROGRESSING)
        frame = nxt


def _begin(stack, lo, hi, text, rip, max_entries):
    """Argument checks and entry 0 (rip), shared by both walks: (text ranges,
    entries, a final code when the walk already ends at rip, else None)."""
    _check_stack(stack, lo, hi)
    if max_entries < 0:
        raise ValueError("max_entries must not be negative")
    text = _Ranges(text)
    out: list[int] = []
    if not _push(out, max_entries, rip):
        return text, out, WALK_TOO_DEEP
    if rip not in text:
        return text, out, WALK_BAD_RET
    return text, out, None


def walk_orc(stack, lo: int, hi: int, text, orc_ips, orc_entries, rip: int, rsp: int, rbp: int, *,
             preempted: bool = False, max_entries: int = 100, end_ret: int = 0,
             end_slot: int = 0, graph=None) -> tuple[int, tuple[int, ...]]:
    """ORC walk -> (WALK_*, entries).

    orc_ips: sorted ascending; orc_entries[i] (with sp_reg, sp_offset,
    bp_reg, bp_offset, type, as emu/images/orc.py's OrcEntry) covers
    [orc_ips[i], orc_ips[i + 1]). ORC knows the frame at every instruction,
    so a preempted task is as reliable as any other (preempted is accepted
    for symmetry with walk_fp and ignored). Raises ValueError as walk_fp.
    """
    text, out, first = _begin(stack, lo, hi, text, rip, max_entries)
    if first is not None:
        return first, tuple(out)

    def end(code):
        return code, tuple(out)

    ip, sp, bp, first = rip, rsp, rbp, True
    while True:
        # A return address points after its call, which may be the last
        # instruction of the function: look the call itself up.
        look = ip if first else (ip - 1) & _MASK
        i = bisect_right(orc_ips, look) - 1
        if i < 0:
            return end(WALK_NO_ORC)
        e = orc_entries[i]
        if e.type == TYPE_UNDEFINED or e.sp_reg not in (REG_SP, REG_BP) or \
                (e.type == TYPE_TRAMPOLINES and (look - orc_ips[i]) % STUB_SIZE):
            return end(WALK_NO_ORC)
        cfa = ((sp if e.sp_reg == REG_SP else bp) + e.sp_offset) & _MASK
        slot = (cfa - 8) & _MASK
        ret = _word(stack, lo, hi, slot)
        if ret is None:
            return end(WALK_OFF_STACK)
        ret = graph_ret_addr(graph, ret, slot)
        if cfa <= sp:
            return end(WALK_NOT_PROGRESSING)
        if e.bp_reg == REG_BP:
            bp = _word(stack, lo, hi, (cfa + e.bp_offset) & _MASK)
            if bp is None:
                return end(WALK_OFF_STACK)
        elif e.bp_reg != REG_UNDEFINED:
            return end(WALK_NO_ORC)
        sp = cfa
        if ret == end_ret and slot == end_slot:
            if not _push(out, max_entries, ret):
                return end(WALK_TOO_DEEP)
            return end(WALK_OK)
        # ret - 1: the call itself, which may end its function (a call of a
        # noreturn function), with ret already past the function's end.
        if ret == 0 or ret - 1 not in text:
            return end(WALK_BAD_RET)
        if not _push(out, max_entries, ret):
            return end(WALK_TOO_DEEP)
        ip, first = ret, False


def ranges_hit(addrs, ranges) -> int:
    """Index of the first address that lies in one of the sorted, disjoint
    (start, end) ranges, or -1."""
    ranges = _Ranges(ranges)
    for i, a in enumerate(addrs):
        if a in ranges:
            return i
    return -1


def stack_scan(stack, lo: int, hi: int, sp: int, ranges, *, graph=None) -> tuple[int, int] | None:
    """Ksplice's conservative check: (address, value) of the first 8-byte
    aligned word at or above sp whose value lies in one of the ranges, or
    None; a diverted return address counts as the real one (graph as in
    walk_fp). Raises ValueError when stack does not cover [lo, hi)."""
    _check_stack(stack, lo, hi)
    start = -(-max(sp, lo) // 8) * 8
    count = (hi - start) // 8
    if count <= 0:
        return None
    ranges = _Ranges(ranges)
    for i, value in enumerate(struct.unpack_from(f"<{count}Q", stack, start - lo)):
        value = graph_ret_addr(graph, value, start + 8 * i)
        if value in ranges:
            return start + 8 * i, value
    return None


# ---- one task's stack check (twin of csrc/stacks.c) -------------------------------------

#: As EMU_UNWIND_* in csrc/emu.h: how check_stack reads a stack.
UNWINDERS = {"fp": 0, "orc": 1, "scan": 2}


class StackCheck(NamedTuple):
    """One task's stack check: the walk's code and entries (rip first), the
    index of the first entry in a checked range (-1 for none), and for a scan
    the stack address of the word that hit (else 0); the registers the check
    started from."""
    code: int
    entries: tuple[int, ...]
    hit: int
    where: int
    rip: int
    rsp: int
    rbp: int


def check_stack(stack, lo: int, hi: int, text, rip: int, rsp: int, rbp: int, *, kind: str = "orc",
                orc_ips=(), orc_entries=(), preempted: bool = False, max_entries: int = 100,
                end_ret: int = 0, end_slot: int = 0, empty: tuple[int, int] = (0, 0),
                regs: tuple[int, int] = (0, 0), check=(), graph=None) -> StackCheck:
    """What a consistency model asks of a task's stack, as emu_check_stacks
    does it for each task (csrc/stacks.c).

    kind "fp" or "orc": walk the stack, except when rip lies in empty (the
    runtime between kernel entries: no kernel frame, the trace is just rip);
    a rip in regs is at a register frame (the ftrace trampoline), which fp
    walks treat as preempted. graph: the task's return stack (walk_fp).
    kind "scan" (Ksplice): the entries are rip and, unless rip is in a checked
    range, the first word at or above rsp that is (its address in where).
    text and check are sorted, disjoint (start, end) ranges. Raises
    ValueError for an unknown kind, a stack that does not cover [lo, hi), or
    max_entries below 1 (below 2 for a scan)."""
    if kind not in UNWINDERS:
        raise ValueError(f"unknown unwinder {kind!r} (one of {', '.join(UNWINDERS)})")
    if max_entries < (2 if kind == "scan" else 1):
        raise ValueError("max_entries must be at least 1 (2 for a scan)")
    _check_stack(stack, lo, hi)
    where = 0
    if kind == "scan":
        code, entries = WALK_OK, (rip,)
        if ranges_hit(entries, check) < 0:
            found = stack_scan(stack, lo, hi, rsp, check, graph=graph)
            if found is not None:
                where, value = found
                entries = (rip, value)
    elif empty[0] <= rip < empty[1]:
        code, entries = WALK_OK, (rip,)
    elif kind == "fp":
        code, entries = walk_fp(stack, lo, hi, text, rip, rsp, rbp,
                                preempted=preempted or regs[0] <= rip < regs[1],
                                max_entries=max_entries, end_ret=end_ret, end_slot=end_slot, graph=graph)
    else:
        code, entries = walk_orc(stack, lo, hi, text, orc_ips, orc_entries, rip, rsp, rbp,
                                 preempted=preempted, max_entries=max_entries, end_ret=end_ret,
                                 end_slot=end_slot, graph=graph)
    return StackCheck(code, entries, ranges_hit(entries, check), where, rip, rsp, rbp)
