"""ORC unwind tables made by static analysis of machine code, objtool style.

For every instruction of a function the table says where the CFA is (rsp or
rbp plus an offset; the CFA is rsp before the call that made the frame, so the
return address sits at CFA - 8) and where the caller's rbp is saved. The
analysis follows control flow through each function like objtool's
validate_branch(): push/pop and rsp arithmetic move the CFA while it is rsp
based, `mov rbp, rsp` makes it rbp based, `leave` and `pop rbp` undo that.

The layout of an entry and the meaning of its fields must agree with
`struct emu_orc_entry` and the EMU_ORC_* constants in csrc/emu.h, which the C
stack walker (emu_walk_orc) reads.

gcc's .eh_frame describes the same thing, so check_eh_frame() compares the two
at every instruction: it is how the tests hold this analysis to the compiler.
"""

from __future__ import annotations

import bisect
import io
import struct
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import capstone
from capstone import x86_const as X
from elftools.dwarf.callframe import FDE, RegisterRule
from elftools.elf.elffile import ELFFile

__all__ = [
    "REG_UNDEFINED", "REG_SP", "REG_BP", "TYPE_CALL", "TYPE_UNDEFINED",
    "UNDEFINED", "OrcEntry", "OrcTable", "Disagreement", "EhFrameReport",
    "analyze_function", "build_table", "eh_frame_rows", "check_eh_frame",
]

# As EMU_ORC_REG_* and EMU_ORC_TYPE_* in csrc/emu.h.
REG_UNDEFINED, REG_SP, REG_BP = 0, 1, 2
TYPE_CALL, TYPE_UNDEFINED = 0, 1
TYPE_TRAMPOLINES = 2    # one entry for a region of trampolines (csrc/emu.h EMU_ORC_TYPE_TRAMPOLINES)


@dataclass(frozen=True)
class OrcEntry:
    """CFA = (rsp or rbp) + sp_offset; the caller's rbp is at CFA + bp_offset
    when bp_reg is REG_BP, and still in rbp when bp_reg is REG_UNDEFINED."""

    sp_reg: int
    sp_offset: int
    bp_reg: int
    bp_offset: int
    type: int = TYPE_CALL

    def __str__(self):
        if self.type == TYPE_UNDEFINED:
            return "undefined"
        reg = {REG_SP: "rsp", REG_BP: "rbp"}.get(self.sp_reg, "?")
        bp = f"rbp@CFA{self.bp_offset:+d}" if self.bp_reg == REG_BP else "rbp=same"
        return f"CFA={reg}{self.sp_offset:+d} {bp}"


# Unreached code, gaps between functions, and states the analysis lost.
UNDEFINED = OrcEntry(REG_UNDEFINED, 0, REG_UNDEFINED, 0, TYPE_UNDEFINED)

# struct emu_orc_entry: int32 sp_offset, int32 bp_offset, u8 sp_reg, bp_reg, type, pad.
_C_ENTRY = struct.Struct("<iiBBBx")


class OrcTable:
    """Sorted ORC entries; entry i covers [ips[i], ips[i+1]).

    Consecutive equal entries are merged. Every function end carries a
    TYPE_UNDEFINED entry, so gaps between functions are explicit.
    """

    def __init__(self, ips: Iterable[int], entries: Iterable[OrcEntry], warnings=()):
        ips, entries = list(ips), list(entries)
        if len(ips) != len(entries):
            raise ValueError(f"{len(ips)} ORC ips for {len(entries)} entries")
        self.ips: list[int] = []
        self.entries: list[OrcEntry] = []
        for ip, entry in zip(ips, entries):
            if self.ips and ip <= self.ips[-1]:
                raise ValueError(f"ORC ips not strictly increasing at {ip:#x}")
            if self.entries and self.entries[-1] == entry:
                continue
            self.ips.append(ip)
            self.entries.append(entry)
        self.warnings: tuple[str, ...] = tuple(warnings)

    @classmethod
    def from_dict(cls, rows: dict[int, OrcEntry], warnings=()) -> "OrcTable":
        ips = sorted(rows)
        return cls(ips, [rows[ip] for ip in ips], warnings)

    def lookup(self, ip: int) -> OrcEntry | None:
        """The entry for ip; None below the first entry, in a gap between
        functions, or where the state is unknown (TYPE_UNDEFINED)."""
        i = bisect.bisect_right(self.ips, ip) - 1
        if i < 0 or self.entries[i].type == TYPE_UNDEFINED:
            return None
        return self.entries[i]

    @classmethod
    def merge(cls, *tables: "OrcTable") -> "OrcTable":
        """One table covering the functions of all; raises ValueError when two
        tables describe overlapping code."""
        spans = sorted((t.ips[0], t.ips[-1]) for t in tables if t.ips)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            if start < end:
                raise ValueError(f"ORC tables overlap at {start:#x}")
        rows: dict[int, OrcEntry] = {}
        for table in tables:
            for ip, entry in zip(table.ips, table.entries):
                # A table's closing UNDEFINED entry may sit where the next
                # table's first function starts; the real entry wins.
                if entry.type != TYPE_UNDEFINED or ip not in rows:
                    rows[ip] = entry
        return cls.from_dict(rows, [w for t in tables for w in t.warnings])

    def pack(self) -> tuple[bytes, bytes]:
        """(ips as uint64[], entries as struct emu_orc_entry[]) for the C walker."""
        ips = struct.pack(f"<{len(self.ips)}Q", *self.ips)
        entries = b"".join(_C_ENTRY.pack(e.sp_offset, e.bp_offset, e.sp_reg, e.bp_reg, e.type)
                           for e in self.entries)
        return ips, entries

    def __len__(self):
        return len(self.ips)

    def __repr__(self):
        return f"OrcTable({len(self)} entries)"


# ---- decoding ---------------------------------------------------------------

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_md.detail = True

_RSP = {X.X86_REG_RSP, X.X86_REG_ESP, X.X86_REG_SP, X.X86_REG_SPL}
_RBP = {X.X86_REG_RBP, X.X86_REG_EBP, X.X86_REG_BP, X.X86_REG_BPL}


def _decode(code: bytes, base: int, start: int, end: int) -> list:
    """Instructions of [start, end) of code mapped at base; stops early at
    bytes capstone cannot decode."""
    if start < base or end > base + len(code) or start > end:
        raise ValueError(f"[{start:#x}, {end:#x}) is outside the code at {base:#x}")
    return list(_md.disasm(code[start - base:end - base], start))


def _is_reg(op, reg) -> bool:
    return op.type == X.X86_OP_REG and op.reg == reg


def _branch_target(insn) -> int | None:
    op = insn.operands[0] if insn.operands else None
    return op.imm & 0xFFFFFFFFFFFFFFFF if op is not None and op.type == X.X86_OP_IMM else None


class _Memory:
    """Read-only view of (address, bytes) segments, for jump tables."""

    def __init__(self, segments):
        self.segments = [(addr, bytes(data)) for addr, data in segments]

    def word(self, addr: int) -> int | None:
        for start, data in self.segments:
            if start <= addr and addr + 8 <= start + len(data):
                return int.from_bytes(data[addr - start:addr - start + 8], "little")
        return None


class _Function:
    """A function's decoded instructions and its jump-table targets."""

    def __init__(self, name, start, end, insns, memory):
        self.name, self.start, self.end = name, start, end
        self.insns = insns
        self.at = {insn.address: insn for insn in insns}
        self.cold = ".cold" in name  # gcc's split-off unlikely part of a function
        self.tables = {insn.address: self._jump_table(i, memory)
                       for i, insn in enumerate(insns) if _flow_kind(insn) == "ijmp"}

    def _jump_table(self, i, memory) -> list[int] | None:
        """Targets of the indirect jump insns[i], read from memory.

        gcc (-fno-pic) emits `jmp [T + reg*8]` at -O2, `mov reg, [T + reg*8];
        jmp reg` at -O1 and `add reg, T; mov reg, [reg]; jmp reg` at -O0. The
        table address T is a displacement or immediate of the jump or of one of
        the few instructions before it, as objtool finds the table through the
        relocation next to the jump. A candidate counts only when its words are
        instruction starts of this function.
        """
        candidates = []
        for insn in reversed(self.insns[max(0, i - 8):i + 1]):
            for op in insn.operands:
                if op.type == X.X86_OP_MEM and op.mem.base in (0, X.X86_REG_RIP):
                    disp = op.mem.disp + (insn.address + insn.size if op.mem.base else 0)
                    candidates.append(disp & 0xFFFFFFFFFFFFFFFF)
                elif op.type == X.X86_OP_IMM:
                    candidates.append(op.imm & 0xFFFFFFFFFFFFFFFF)
        for table in candidates:
            targets = []
            while (word := memory.word(table + 8 * len(targets))) in self.at:
                targets.append(word)
            if len(targets) >= 2:
                return targets
        return None


def _flow_kind(insn) -> str:
    i = insn.id
    if i in (X.X86_INS_RET, X.X86_INS_RETF, X.X86_INS_RETFQ, X.X86_INS_IRET, X.X86_INS_IRETQ):
        return "ret"
    if i == X.X86_INS_UD2:
        return "stop"
    if i == X.X86_INS_JMP:
        return "jmp" if _branch_target(insn) is not None else "ijmp"
    if insn.group(capstone.CS_GRP_JUMP):
        return "jcc"
    if i == X.X86_INS_CALL:
        return "call"
    return "next"


def _successors(fn: _Function, insn, noreturn) -> tuple[list[int], list[int], bool]:
    """(targets inside fn, jump targets outside fn, is a ret). Targets inside
    fn that are not instruction starts are left for the caller to report."""
    kind = _flow_kind(insn)
    nxt = insn.address + insn.size
    inside, outside = [], []
    if kind == "ret":
        return inside, outside, True
    if kind in ("jmp", "jcc"):
        target = _branch_target(insn)
        (inside if fn.start <= target < fn.end else outside).append(target)
    if kind == "ijmp":
        # Jump tables lead back into the function; any other indirect jump is
        # a tail call through a pointer.
        inside.extend(fn.tables.get(insn.address) or ())
    falls_through = kind in ("jcc", "next") or (
        kind == "call" and _branch_target(insn) not in noreturn)
    if falls_through and nxt < fn.end:
        inside.append(nxt)
    return inside, outside, False


# ---- the stack state ----------------------------------------------------------

class _State(NamedTuple):
    """What the analysis knows before an instruction. Offsets are CFA - reg."""

    cfa_reg: int           # REG_SP or REG_BP
    sp: int | None         # CFA - rsp; None after alloca or realignment
    bp: int | None         # CFA - rbp while rbp points into this frame
    bp_caller: bool        # rbp still holds the caller's value
    bp_saved: int | None   # the caller's rbp is at CFA + bp_saved

    @property
    def entry(self) -> OrcEntry:
        offset = self.sp if self.cfa_reg == REG_SP else self.bp
        if self.bp_saved is None:
            return OrcEntry(self.cfa_reg, offset, REG_UNDEFINED, 0)
        return OrcEntry(self.cfa_reg, offset, REG_BP, self.bp_saved)


_ENTRY = _State(REG_SP, 8, None, True, None)


def _settle(cfa_reg, sp, bp, bp_caller, bp_saved) -> _State | None:
    """A consistent state, or None when the CFA can no longer be found."""
    if cfa_reg == REG_BP and bp is None:
        # rbp was restored or reused: the CFA follows rsp again, as objtool
        # does after `pop %rbp` and gcc after `.cfi_def_cfa 7, N`.
        cfa_reg = REG_SP
    if (sp if cfa_reg == REG_SP else bp) is None:
        return None
    return _State(cfa_reg, sp, bp, bp_caller, bp_saved)


def _frame_offset(s: _State, mem) -> int | None:
    """CFA-relative offset of an [rsp + d] or [rbp + d] operand."""
    if mem.index:
        return None
    if mem.base == X.X86_REG_RSP and s.sp is not None:
        return mem.disp - s.sp
    if mem.base == X.X86_REG_RBP and s.bp is not None:
        return mem.disp - s.bp
    return None


def _step(s: _State, insn) -> _State | None:
    """The state after insn (which is not a ret or jump)."""
    sp, bp, caller, saved, cfa_reg = s.sp, s.bp, s.bp_caller, s.bp_saved, s.cfa_reg
    i, ops = insn.id, insn.operands

    def restore_or_clobber_rbp(slot):
        # Loading rbp from the slot that holds the caller's rbp restores it;
        # any other load makes rbp a scratch register.
        nonlocal bp, caller, saved
        if saved is not None and slot == saved:
            bp, caller, saved = None, True, None
        else:
            bp, caller = None, False

    if i in (X.X86_INS_PUSH, X.X86_INS_PUSHFQ):
        size = 2 if ops and ops[0].size == 2 else 8
        sp = None if sp is None else sp + size
        if ops and _is_reg(ops[0], X.X86_REG_RBP) and caller and saved is None and sp is not None:
            saved = -sp
    elif i in (X.X86_INS_POP, X.X86_INS_POPFQ):
        if ops and _is_reg(ops[0], X.X86_REG_RBP):
            restore_or_clobber_rbp(None if sp is None else -sp)
        elif ops and ops[0].type == X.X86_OP_REG and ops[0].reg in _RSP:
            return None
        size = 2 if ops and ops[0].size == 2 else 8
        sp = None if sp is None else sp - size
    elif i == X.X86_INS_LEAVE:  # mov rsp, rbp; pop rbp
        sp = bp
        restore_or_clobber_rbp(None if sp is None else -sp)
        sp = None if sp is None else sp - 8
    elif i == X.X86_INS_CALL:
        pass  # the callee pops its return address
    elif i == X.X86_INS_MOV and _is_reg(ops[0], X.X86_REG_RBP) and _is_reg(ops[1], X.X86_REG_RSP):
        bp, caller = sp, False
        if cfa_reg == REG_SP:
            cfa_reg = REG_BP  # the frame pointer is set: gcc's .cfi_def_cfa_register 6
    elif i == X.X86_INS_MOV and _is_reg(ops[0], X.X86_REG_RSP) and _is_reg(ops[1], X.X86_REG_RBP):
        sp = bp
    elif i == X.X86_INS_MOV and _is_reg(ops[0], X.X86_REG_RBP) and ops[1].type == X.X86_OP_MEM:
        restore_or_clobber_rbp(_frame_offset(s, ops[1].mem))
    elif i in (X.X86_INS_ADD, X.X86_INS_SUB) and _is_reg(ops[0], X.X86_REG_RSP) \
            and ops[1].type == X.X86_OP_IMM:
        delta = ops[1].imm if i == X.X86_INS_SUB else -ops[1].imm
        sp = None if sp is None else sp + delta
    elif i == X.X86_INS_LEA and ops[0].reg in (X.X86_REG_RSP, X.X86_REG_RBP) \
            and not ops[1].mem.index and ops[1].mem.base in (X.X86_REG_RSP, X.X86_REG_RBP):
        src = sp if ops[1].mem.base == X.X86_REG_RSP else bp
        value = None if src is None else src - ops[1].mem.disp
        if ops[0].reg == X.X86_REG_RSP:
            sp = value
        else:
            bp, caller = value, False
            if cfa_reg == REG_SP and value is not None:
                cfa_reg = REG_BP  # lea rbp, [rsp + d]: a frame pointer too
    else:
        # Anything else that writes rsp (and rsp, -16; sub rsp, reg; ...)
        # makes its depth unknown; anything that writes rbp reuses it.
        written = set(insn.regs_access()[1])
        if written & _RSP:
            sp = None
        if written & _RBP:
            bp, caller = None, False
    return _settle(cfa_reg, sp, bp, caller, saved)


_CONFLICT = object()


def _join(old: _State | None, new: _State | None):
    """The state where two paths meet: what both agree on; None (unknown)
    when they disagree on the CFA or on where rbp is saved (_CONFLICT then
    tells the caller to report it)."""
    if old == new:
        return old
    if old is None or new is None:
        return None
    if old.entry != new.entry:
        return _CONFLICT
    return _State(old.cfa_reg,
                  old.sp if old.sp == new.sp else None,
                  old.bp if old.bp == new.bp else None,
                  old.bp_caller and new.bp_caller,
                  old.bp_saved)


class _Flow(NamedTuple):
    states: dict        # address -> _State, or None where unknown; absent: unreached
    exits: list         # (target, state) of jumps out of the function
    warnings: list


def _flow(fn: _Function, seeds: dict, noreturn) -> _Flow:
    """Worklist dataflow over fn from the seed states (objtool's validate_branch)."""
    states, exits, warnings = {}, [], []
    work = []

    def meet(addr, state, src):
        if addr not in states:
            states[addr] = state
            work.append(addr)
            return
        joined = _join(states[addr], state)
        if joined is _CONFLICT:
            warnings.append(f"{fn.name}+{addr - fn.start:#x}: paths disagree: "
                            f"{states[addr].entry} vs {state.entry} (from {src:#x})")
            joined = None
        if joined != states[addr]:
            states[addr] = joined
            work.append(addr)

    for addr, state in sorted(seeds.items()):
        if addr in fn.at:
            meet(addr, state, addr)
    while work:
        addr = work.pop()
        insn, state = fn.at[addr], states[addr]
        after = state if state is None else _step(state, insn)
        inside, outside, _ = _successors(fn, insn, noreturn)
        for target in inside:
            if target in fn.at:
                meet(target, after, addr)
            else:
                warnings.append(f"{fn.name}+{addr - fn.start:#x}: branch to {target:#x}, "
                                f"which is not an instruction start")
        exits.extend((target, after) for target in outside)
        if _flow_kind(insn) == "ijmp" and fn.tables.get(addr) is None:
            warnings.append(f"{fn.name}+{addr - fn.start:#x}: indirect jump without a "
                            f"readable table: a tail call, or code after it stays undefined")
    # An instruction may be visited more than once; report each problem once.
    return _Flow(states, exits, list(dict.fromkeys(warnings)))


def _entries(fn: _Function, flow: _Flow) -> dict[int, OrcEntry]:
    out = {}
    for insn in fn.insns:
        state = flow.states.get(insn.address)
        out[insn.address] = UNDEFINED if state is None else state.entry
    decoded_end = fn.insns[-1].address + fn.insns[-1].size if fn.insns else fn.start
    if decoded_end < fn.end:
        out[decoded_end] = UNDEFINED  # bytes capstone could not decode
    return out


def _returning(fns: list[_Function]) -> set[int]:
    """Starts of the functions that may return (a least fixpoint, as objtool's
    dead_end_function()): a function returns when a ret is reachable from its
    start, through tail calls and jumps into other functions (.cold parts),
    calling only functions already known to return. Jumps to code outside
    every function, and indirect tail calls, count as returning."""
    starts = {f.start for f in fns}
    owner = {}
    for f in fns:
        for a in f.at:
            owner.setdefault(a, f)
    returning: set[int] = set()
    changed = True
    while changed:
        changed = False
        noreturn = starts - returning
        for f in fns:
            if f.start in returning or f.start not in owner:
                continue
            seen, work = {f.start}, [f.start]
            while work and f.start not in returning:
                addr = work.pop()
                g = owner[addr]
                insn = g.at[addr]
                inside, outside, ret = _successors(g, insn, noreturn)
                unknown_exit = any(t not in owner for t in outside) or (
                    _flow_kind(insn) == "ijmp" and g.tables.get(addr) is None)
                if ret or unknown_exit:
                    returning.add(f.start)
                    changed = True
                for t in [t for t in inside + outside if t in owner]:
                    if t not in seen:
                        seen.add(t)
                        work.append(t)
    return returning


def analyze_function(code: bytes, start: int, end: int, *, name: str = "?",
                     base: int | None = None, noreturn: Iterable[int] = (),
                     data: Iterable[tuple[int, bytes]] = ()) -> dict[int, OrcEntry]:
    """The ORC entry before each instruction of the function [start, end).

    code is mapped at base (default: start). Calls to addresses in noreturn
    end a path; data holds (address, bytes) segments where jump tables may be
    read. Unreached instructions and those where paths disagree get
    TYPE_UNDEFINED entries. Raises ValueError when [start, end) is not in code.
    """
    base = start if base is None else base
    memory = _Memory([(base, code), *data])
    fn = _Function(name, start, end, _decode(code, base, start, end), memory)
    return _entries(fn, _flow(fn, {start: _ENTRY}, set(noreturn)))


def build_table(code: bytes, base: int, functions, *,
                data: Iterable[tuple[int, bytes]] = ()) -> OrcTable:
    """The ORC table of the functions (name, start, end) in code mapped at base.

    data: other mapped (address, bytes) segments, where jump tables live
    (.rodata); without them code reached only through a jump table is
    TYPE_UNDEFINED. A `.cold` part gets its entry states from the jumps of
    its parent into it, as gcc's FDE for it carries the parent's frame.
    Problems (paths that disagree, unreadable jump tables) are listed in the
    table's warnings. Raises ValueError when a function lies outside code.
    """
    memory = _Memory([(base, code), *data])
    seen, fns = set(), []
    for name, start, end in sorted(functions, key=lambda f: (f[1], f[2], f[0])):
        if end > start and (start, end) not in seen:  # skip aliases and empty symbols
            seen.add((start, end))
            fns.append(_Function(name, start, end, _decode(code, base, start, end), memory))
    noreturn = {f.start for f in fns} - _returning(fns)

    # Seeds: the entry state at a function's start, and the states that jumps
    # from other functions carry (parent into .cold part and back). A jump to
    # the start of an ordinary function is a tail call: its state is the entry
    # state already. Iterate until the seeds settle (they only lose detail).
    owner = {a: f for f in fns for a in f.at}
    base_seeds = {f: ({} if f.cold else {f.start: _ENTRY}) for f in fns}
    seeds = {f: dict(s) for f, s in base_seeds.items()}
    flows: dict = {}
    for _ in range(4 * len(fns) + 4):
        for f in fns:
            if f not in flows or flows[f][0] != seeds[f]:
                flows[f] = (dict(seeds[f]), _flow(f, seeds[f], noreturn))
        new = {f: dict(s) for f, s in base_seeds.items()}
        for f in fns:
            for target, state in flows[f][1].exits:
                g = owner.get(target)
                if g is None or state is None or (target == g.start and not g.cold):
                    continue
                old = new[g].get(target, state)
                joined = _join(old, state)
                new[g][target] = None if joined is _CONFLICT else joined
        if new == seeds:
            break
        seeds = new

    rows, warnings = {}, []
    for f in fns:
        flow = flows[f][1]
        warnings.extend(flow.warnings)
        if f.cold and not seeds[f]:
            warnings.append(f"{f.name}: no jump into this .cold part: left undefined")
        rows.update(_entries(f, flow))
    for f in fns:
        rows.setdefault(f.end, UNDEFINED)  # the gap after a function
    return OrcTable.from_dict(rows, warnings)


# ---- gcc's .eh_frame ----------------------------------------------------------

_DWARF_RSP, _DWARF_RBP = 7, 6


def _fdes(elf: bytes) -> list[tuple[int, int, list]]:
    """(start, end, decoded rows) of every FDE in the ELF's .eh_frame."""
    elffile = ELFFile(io.BytesIO(elf))
    if not elffile.has_dwarf_info():
        return []
    dwarf = elffile.get_dwarf_info()
    entries = dwarf.EH_CFI_entries() if dwarf.has_EH_CFI() else dwarf.CFI_entries() \
        if dwarf.has_CFI() else []
    out = []
    for entry in entries:
        if isinstance(entry, FDE):
            start = entry.header["initial_location"]
            out.append((start, start + entry.header["address_range"], entry.get_decoded().table))
    return out


def _row_entry(row) -> OrcEntry:
    cfa = row["cfa"]
    if cfa.expr is not None or cfa.reg not in (_DWARF_RSP, _DWARF_RBP):
        return UNDEFINED  # DRAP or an expression: ORC cannot express it
    sp_reg = REG_SP if cfa.reg == _DWARF_RSP else REG_BP
    rule = row.get(_DWARF_RBP)
    if rule is None or rule.type in (RegisterRule.SAME_VALUE, RegisterRule.UNDEFINED):
        return OrcEntry(sp_reg, cfa.offset, REG_UNDEFINED, 0)
    if rule.type == RegisterRule.OFFSET:
        return OrcEntry(sp_reg, cfa.offset, REG_BP, rule.arg)
    return UNDEFINED


def eh_frame_rows(elf: bytes) -> dict[int, OrcEntry]:
    """.eh_frame as ORC entries: address -> entry, each row holding from its
    address (the state before the instruction there) up to the next one. A
    TYPE_UNDEFINED entry closes every FDE, as OrcTable closes functions, so
    OrcTable.from_dict(eh_frame_rows(elf)) looks up like an ORC table."""
    rows: dict[int, OrcEntry] = {}
    fdes = _fdes(elf)
    for start, end, table in fdes:
        for row in table:
            if start <= row["pc"] < end:
                rows[row["pc"]] = _row_entry(row)
    starts = {start for start, _, _ in fdes}
    for _, end, _ in fdes:
        if end not in starts:
            rows[end] = UNDEFINED
    return rows


@dataclass(frozen=True)
class Disagreement:
    function: str
    address: int
    ours: OrcEntry | None
    eh_frame: OrcEntry | None
    offset: int | None = None  # address - function start, when known

    def __str__(self):
        where = self.function if self.offset is None else f"{self.function}+{self.offset:#x}"
        return (f"{where} ({self.address:#x}): ours {self.ours or 'undefined'}, "
                f".eh_frame {self.eh_frame or 'undefined'}")


class EhFrameReport(list):
    """The disagreements (a list, empty when all agree) and what was compared:
    `checked` instructions, and `padding`: unreached NOPs (alignment) that
    our table leaves undefined while .eh_frame continues the previous row."""

    def __init__(self, disagreements=(), checked=0, padding=0):
        super().__init__(disagreements)
        self.checked = checked
        self.padding = padding


def check_eh_frame(elf: bytes, table: OrcTable, functions, code: bytes, base: int) -> EhFrameReport:
    """Compare table with the ELF's .eh_frame before every instruction of the
    functions (name, start, end) that an FDE covers. Returns the list of
    Disagreement, empty when all agree (with counts; see EhFrameReport)."""
    fdes = _fdes(elf)
    theirs = OrcTable.from_dict(eh_frame_rows(elf))
    covered = sorted((start, end) for start, end, _ in fdes)
    report = EhFrameReport()
    for name, start, end in sorted(dict.fromkeys(map(tuple, functions)), key=lambda f: (f[1], f[0])):
        if end <= start:
            continue
        for insn in _decode(code, base, start, end):
            addr = insn.address
            i = bisect.bisect_right(covered, (addr, float("inf"))) - 1
            if i < 0 or not covered[i][0] <= addr < covered[i][1]:
                continue
            ours, eh = table.lookup(addr), theirs.lookup(addr)
            if ours is None and eh is not None and insn.id == X.X86_INS_NOP:
                report.padding += 1
                continue
            report.checked += 1
            if ours != eh:
                report.append(Disagreement(name, addr, ours, eh, addr - start))
    return report
