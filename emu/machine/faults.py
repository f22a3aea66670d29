"""Fault reports: what a task did wrong (a guest fault, a soft lockup, a
hypercall nobody handles), where (RIP, the instruction, the backtrace), as
one GuestFault (report()); the task is marked exited, the host never dies of
it. What a guest fault was is said exactly (describe()):

Unicorn gives a faulting data address cut to 52 bits (0xffffffff81000000
arrives as 0xfffff81000000) and does not check that an address is
canonical. The report recomputes the address the instruction used from its
operands and registers (capstone), so it is the full 64-bit one, and a
non-canonical address is what the hardware makes of it: a general
protection fault (#GP), not a page fault.
"""
from __future__ import annotations

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone.x86 import X86_OP_MEM, X86_REG_RIP
from unicorn import x86_const

from emu.engine import core
from emu.errors import GuestFault
from emu.machine import stacks
from emu.machine.layout import in_guard
from emu.machine.task import Cpu, RunState, Task

__all__ = ["exact_address", "canonical", "describe", "disassemble", "report"]

_M64 = (1 << 64) - 1
_M52 = (1 << 52) - 1         # what Unicorn keeps of a virtual address
_PUSHES = frozenset({"push", "call", "pushfq", "enter"})
_POPS = frozenset({"pop", "ret", "popfq", "leave", "iretq"})
_STRINGS = ("movs", "stos", "lods", "cmps", "scas", "ins", "outs")


def canonical(addr: int) -> bool:
    """Bits 63..47 all equal (48-bit virtual addresses)."""
    top = (addr & _M64) >> 47
    return top in (0, (1 << 17) - 1)


def _reg(uc, md_insn, reg: int) -> int:
    name = md_insn.reg_name(reg).upper()
    if name in ("RIZ", "EIZ"):
        return 0        # capstone's name for a SIB byte with no index: no register
    return uc.reg_read(getattr(x86_const, f"UC_X86_REG_{name}"))


def _candidates(uc, insn) -> list[tuple[int, int]]:
    """Addresses the instruction may access, each with how (1 read, 2 write,
    3 both): its memory operands, then the implicit ones (the stack, the
    string registers)."""
    out = []
    for op in insn.operands:
        if op.type != X86_OP_MEM:
            continue
        mem = op.mem
        ea = mem.disp
        if mem.base == X86_REG_RIP:
            ea += insn.address + insn.size
        elif mem.base:
            ea += _reg(uc, insn, mem.base)
        if mem.index:
            ea += _reg(uc, insn, mem.index) * mem.scale
        out.append((ea & _M64, op.access or 3))
    rsp = uc.reg_read(x86_const.UC_X86_REG_RSP)
    mnemonic = insn.mnemonic.split()[-1]
    if mnemonic in _PUSHES:
        out.append(((rsp - 8) & _M64, 2))
    if mnemonic in _POPS:
        out.append((rsp, 1))
    if mnemonic.startswith(_STRINGS):
        rdi = 2 if mnemonic.startswith(("movs", "stos", "ins")) else 1
        out += [(uc.reg_read(x86_const.UC_X86_REG_RDI), rdi), (uc.reg_read(x86_const.UC_X86_REG_RSI), 1)]
    return out


def exact_address(uc, code: bytes, rip: int, reported: int, *, write: bool | None = None,
                  page: bool = False) -> int:
    """The full address behind a fault Unicorn reported as `reported`, by
    the instruction at rip (its bytes in code); `reported` when no operand
    of the instruction explains it. write: whether the faulting access was
    a write (None: unknown); operands that make such an access are tried
    first. page: `reported` is only the page (the fast-memory TLB fill sees
    no more), so an operand in that page explains it too."""
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    for insn in md.disasm(code, rip, count=1):
        cands = _candidates(uc, insn)
        if write is not None:
            want = 2 if write else 1
            cands = [c for c in cands if c[1] & want] + [c for c in cands if not c[1] & want]
        for ea, _ in cands:
            if page and not reported & 0xFFF and not (ea - reported) & _M52 & ~0xFFF:
                return ea
            off = (reported - ea) & _M52
            if off < 64:        # the access may cross into the faulting page
                return (ea + off) & _M64
    return reported


def _code_at(engine, rip: int) -> bytes:
    """Up to 16 bytes of code at rip: as many as its region holds."""
    for n in range(16, 0, -1):
        try:
            return bytes(engine.view(rip, n))
        except Exception:  # noqa: BLE001 - past the region's end, or the code itself is gone
            continue
    return b""


def describe(m, task, stop) -> tuple[str, str, int]:
    """(what happened, kind, rip to report) of a fault stop of task."""
    kind = "fault"
    rip = stop.rip
    fk = stop.fault_kind
    what = core.FAULT_NAMES.get(fk, "fault")
    if fk == core.FAULT_INTERRUPT:
        what += f" {stop.intno} ({_VECTORS.get(stop.intno, 'vector')})"
    elif fk == core.FAULT_PRIVILEGED:
        what = (f"privileged instruction '{disassemble(m.engine, rip)}' "
                f"(#GP: the emulated kernel lets no guest code change the machine's state)")
        kind = "privileged"
    elif fk == core.FAULT_INVALID_INSN:
        what += f" '{disassemble(m.engine, rip)}' (#UD)"
    elif fk == core.FAULT_STACK_OVERFLOW:
        what = (f"stack overflow: rsp {stop.addr:#x} left the task's stack "
                f"{task.stack_lo:#x}-{task.stack_hi:#x} after this instruction")
        kind = "stack-overflow"
    elif fk == core.FAULT_NULL_CALL:
        what = "call to address 0 (a NULL function pointer)"
        caller = _caller(m, task)
        if caller is not None:
            what += f", called from {caller:#x} <{m.symbolize(caller)}>"
        kind = "null-call"
    elif fk in core.DATA_FAULTS:
        addr = stop.addr
        # A fetch fault at the instruction's start is at rip: reported as
        # such, or as rip's page (the fast-memory TLB fill sees pages).
        if fk in core.FETCH_FAULTS and ((rip & _M52) == (addr & _M52) or
                                        (not addr & 0xFFF and not (rip - addr) & _M52 & ~0xFFF)):
            addr = rip
        else:
            code = _code_at(m.engine, rip)
            m.engine.switch(task.tid)
            addr = exact_address(m.engine.uc, code, rip, addr, write=fk in core.WRITE_FAULTS,
                                 page=m.engine.fast_memory)
        if not canonical(addr):
            what = f"general protection fault (#GP): non-canonical address {addr:#018x}"
            kind = "gp"
        else:
            what += f" at {addr:#x}"
            if in_guard(addr, task.stack_lo):
                what += " (stack overflow into the guard page)"
                kind = "stack-overflow"
    return what, kind, rip


def _caller(m, task) -> int | None:
    """The call instruction that sent task to address 0, from the return
    address it pushed (None for a jump)."""
    m.engine.switch(task.tid)
    rsp = m.engine.uc.reg_read(x86_const.UC_X86_REG_RSP)
    try:
        ret = int.from_bytes(bytes(m.engine.view(rsp, 8)), "little")
    except Exception:  # noqa: BLE001 - rsp may point anywhere
        return None
    if m.function_at(ret) is None:
        return None
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    for back in range(2, 16):
        try:
            code = bytes(m.engine.view(ret - back, back))
        except Exception:  # noqa: BLE001
            continue
        insns = list(md.disasm(code, ret - back))
        if len(insns) == 1 and insns[0].mnemonic == "call" and insns[0].address + insns[0].size == ret:
            target = insns[0].op_str
            # a direct call to anywhere but 0 did not come here: a jump did
            if not target.startswith("0x") or int(target, 16) == 0:
                return ret - back
    return None


_VECTORS = {0: "#DE divide error", 1: "#DB", 3: "#BP int3", 4: "#OF", 5: "#BR", 6: "#UD invalid opcode",
            8: "#DF", 13: "#GP general protection", 14: "#PF page fault", 17: "#AC", 18: "#MC"}


def disassemble(engine: core.Engine, addr: int) -> str:
    try:
        data = bytes(engine.view(addr, 16))
    except Exception:
        return "(no code mapped there)"
    for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(data, addr, count=1):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return "(undecodable: " + data[:8].hex(" ") + ")"


def report(m, cpu: Cpu, task: Task, stop: core.Stop | None, *, message: str | None = None,
           soft_lockup: bool = False) -> GuestFault:
    """The GuestFault for task on cpu (stop: how the core stopped, None for
    a soft lockup); the task is marked exited and the trace drained first."""
    m.drain()
    task.state = RunState.EXITED
    rip = stacks.regs(m, task)[0] if stop is None else stop.rip
    if soft_lockup:
        what = (f"soft lockup: {task.since_schedule} instructions without a scheduling point "
                f"(limit {m.lockup})")
        kind = "lockup"
    elif message is not None:
        what, kind = message, "hypercall"
    else:
        what, kind, rip = describe(m, task, stop)
    try:
        bt = stacks.fault_backtrace(m, task, rip)
    except Exception:  # the stack may be what broke
        bt = []
    lines = [f"guest fault in task '{task.name}' (tid {task.tid}) on CPU {cpu.index}: {what}",
             f"  RIP {rip:#x} <{m.symbolize(rip)}>: {disassemble(m.engine, rip)}", "  backtrace:"]
    lines += [f"    {line}" for line in bt] or ["    (none)"]
    return GuestFault("\n".join(lines), task=task.name, cpu=cpu.index, rip=rip, kind=kind, backtrace=bt)
