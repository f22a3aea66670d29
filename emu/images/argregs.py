"""Which argument registers a function reads.

A System V function takes its first six integer arguments in rdi, rsi, rdx,
rcx, r8 and r9. Which of them it takes shows in its code: the registers live
at its entry, read on some path before anything writes them. This module
finds them by backward liveness over the function's control flow, decoded by
capstone, as a compiler's register allocator sees it:

- an instruction uses the registers it reads and kills the ones it writes
  whole (a 64- or 32-bit write; an 8- or 16-bit write, or a conditional
  move, keeps the rest of the old value, so it kills nothing); `xor r, r`
  and `sub r, r` only write;
- a call uses what its callee takes (`callee(target)`; all six when the
  callee is unknown or called through a pointer) and kills all six (they are
  caller-saved); a jump out of the function is a tail call: it uses what
  the target takes; `ret` uses none; an indirect jump (a jump table, a tail
  call through a pointer) uses all six;
- `syscall` is lpemu.h's hypercall: it reads rdi, rsi and rdx, and the CPU
  writes rcx.

Whatever it cannot decode makes every register live: the answer errs towards
"the function may take it", never the other way. Value handovers
(emu/runs/handover.py) use it so that a stale copy of a value in a register
the function does not take is not reported as an argument it received.
"""
from __future__ import annotations

from typing import Callable

import capstone
from capstone import x86_const as X

__all__ = ["ARG_REGS", "ALL", "live_arguments"]

ARG_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
ALL = frozenset(range(len(ARG_REGS)))

# capstone register id -> (argument index, width in bytes)
_REGS: dict[int, tuple[int, int]] = {}
for _i, _names in enumerate((("RDI", "EDI", "DI", "DIL"), ("RSI", "ESI", "SI", "SIL"),
                             ("RDX", "EDX", "DX", "DL", "DH"), ("RCX", "ECX", "CX", "CL", "CH"),
                             ("R8", "R8D", "R8W", "R8B"), ("R9", "R9D", "R9W", "R9B"))):
    for _n, _w in zip(_names, (8, 4, 2, 1, 1)):
        _REGS[getattr(X, f"X86_REG_{_n}")] = (_i, _w)

_HYPERCALL_USES = frozenset((0, 1, 2))     # rdi, rsi, rdx (include/lpemu.h)
_HYPERCALL_KILLS = frozenset((3,))         # rcx <- the return rip
_STOP = {X.X86_INS_RET, X.X86_INS_RETF, X.X86_INS_UD2, X.X86_INS_HLT, X.X86_INS_INT3}
_UNCOND = {X.X86_INS_JMP, X.X86_INS_LJMP}


def _disassembler() -> capstone.Cs:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    return cs


def live_arguments(code: bytes, start: int, end: int, *, base: int | None = None,
                   callee: Callable[[int], frozenset | None] | None = None) -> frozenset:
    """The indices (0 = rdi ... 5 = r9) of the argument registers live at
    the entry of the function [start, end), whose bytes are code mapped at
    base (default: start). callee(address) gives what a function called or
    jumped to there takes (None: unknown, all six)."""
    base = start if base is None else base
    if not (base <= start < end <= base + len(code)):
        return ALL

    def takes(target: int) -> frozenset:
        got = callee(target) if callee is not None else None
        return ALL if got is None else frozenset(got)

    insns = []
    at = start
    for ins in _disassembler().disasm(code[start - base:end - base], start):
        insns.append(ins)
        at = ins.address + ins.size
    if at != end or not insns:
        return ALL                                   # bytes it could not decode
    index = {ins.address: k for k, ins in enumerate(insns)}
    use: list[frozenset] = []
    kill: list[frozenset] = []
    succ: list[tuple[int, ...]] = []
    for k, ins in enumerate(insns):
        u, d, nxt = _effects(ins, takes, index, start, end)
        use.append(u)
        kill.append(d)
        # the last instruction's fall-through (after a call that does not
        # return, say) leads nowhere
        succ.append(tuple(k + 1 if s is None else s for s in nxt if s is not None or k + 1 < len(insns)))
    live = [frozenset()] * len(insns)
    changed = True
    while changed:                                   # backward, to the fixpoint
        changed = False
        for k in range(len(insns) - 1, -1, -1):
            out = frozenset().union(*(live[s] for s in succ[k])) if succ[k] else frozenset()
            new = use[k] | (out - kill[k])
            if new != live[k]:
                live[k], changed = new, True
    return live[0]


def _effects(ins, takes, index: dict, start: int, end: int):
    """(uses, kills, successors) of one instruction; a successor is an
    instruction index, or None for the next instruction."""
    iid = ins.id
    if iid in _STOP:
        return frozenset(), frozenset(), ()
    if iid == X.X86_INS_SYSCALL:
        return _HYPERCALL_USES, _HYPERCALL_KILLS, (None,)
    target = _direct_target(ins)
    if iid == X.X86_INS_CALL:
        return (ALL if target is None else takes(target)), ALL, (None,)
    if ins.group(capstone.CS_GRP_JUMP):
        inside = target is not None and start <= target < end
        if target is None:
            uses = ALL                               # a jump table or a tail call through a pointer
        elif not inside:
            uses = takes(target)                     # a tail call
        elif target not in index:
            return ALL, frozenset(), ()              # into the middle of an instruction
        else:
            uses = frozenset()
        there = (index[target],) if inside else ()
        if iid in _UNCOND:
            return uses, frozenset(), there
        return uses, frozenset(), there + (None,)
    try:
        reads, writes = ins.regs_access()
    except capstone.CsError:
        return ALL, frozenset(), (None,)
    uses, kills = set(), set()
    zero_idiom = iid in (X.X86_INS_XOR, X.X86_INS_SUB) and len(ins.operands) == 2 \
        and all(op.type == X.X86_OP_REG for op in ins.operands) \
        and ins.operands[0].reg == ins.operands[1].reg
    for r in reads:
        if r in _REGS and not zero_idiom:
            uses.add(_REGS[r][0])
    partial = ins.mnemonic.startswith("cmov")
    for r in writes:
        if r in _REGS:
            i, width = _REGS[r]
            if width >= 4 and not partial:
                kills.add(i)
            elif width < 4:
                pass                                 # the rest of the register survives
    return frozenset(uses), frozenset(kills), (None,)


def _direct_target(ins) -> int | None:
    if len(ins.operands) == 1 and ins.operands[0].type == X.X86_OP_IMM:
        return ins.operands[0].imm
    return None
