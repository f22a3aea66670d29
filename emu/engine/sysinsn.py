"""Instructions whose answer does not come from the guest: which they are,
and the pure-Python twin of csrc/sysinsn.c's hooks.

classify() finds them in a function's code (a capstone sweep, as
Image.insn_starts makes it): time stamps (rdtsc, rdtscp) and random numbers
(rdrand, rdseed) that the emulator answers itself, privileged instructions
that fault, and instructions that move rsp further than the guard page
below every stack, after which rsp is checked against the task's stack.
cpuid is hooked wherever it runs (Unicorn can hook it; not the others).

PySysInsn is the twin of the C hooks for machines built with
accel="python": the same answers (the virtual clock, splitmix64 from the
same seed, the same cpuid model) and the same faults. It asks the C core
only to skip the instruction it answered (emu_skip_insn: the clock's
bookkeeping of the block) and to record a fault.
"""
from __future__ import annotations

from typing import NamedTuple

from unicorn import UC_HOOK_CODE, UC_HOOK_INSN
from unicorn.x86_const import (UC_X86_INS_CPUID, UC_X86_REG_EFLAGS, UC_X86_REG_R8, UC_X86_REG_R9,
                               UC_X86_REG_R10, UC_X86_REG_R11, UC_X86_REG_R12, UC_X86_REG_R13,
                               UC_X86_REG_R14, UC_X86_REG_R15, UC_X86_REG_RAX, UC_X86_REG_RBP,
                               UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDI, UC_X86_REG_RDX,
                               UC_X86_REG_RSI, UC_X86_REG_RSP)

from emu.engine import core

__all__ = ["SysInsn", "classify", "PRIVILEGED", "cpuid", "PySysInsn"]

_M64 = (1 << 64) - 1


class SysInsn(NamedTuple):
    """An instruction the emulator answers or refuses: kind is core.SI_*,
    arg the destination of rdrand/rdseed (register | bytes << 8)."""
    addr: int
    size: int
    kind: int
    arg: int
    mnemonic: str


# Privileged or system instructions: at CPL 3 each would trap (#GP or #UD);
# the emulated machine's state is the emulator's, so guest code never runs
# them. `mov` to or from a control or debug register is found by operand.
PRIVILEGED = frozenset("""
    hlt cli sti lgdt lidt lldt ltr lmsw clts invd wbinvd wbnoinvd invlpg invlpga invpcid wrmsr rdmsr
    rdpmc in out insb insw insd outsb outsw outsd sysenter sysexit sysexitq sysret sysretq swapgs
    iret iretd iretq xsetbv monitor mwait rsm stac clac wrpkru vmcall vmlaunch vmresume vmxoff
    vmxon vmptrld vmptrst vmclear vmread vmwrite invept invvpid vmrun vmload vmsave vmmcall stgi
    clgi skinit getsec encls enclu wrfsbase wrgsbase
""".split())

_LEGACY_PREFIXES = frozenset(b"\x66\x67\xf0\xf2\xf3\x2e\x36\x3e\x26\x64\x65")
_RSP_NAMES = frozenset({"rsp", "esp", "sp", "spl"})
_SMALL_MOVES = frozenset({"push", "pop", "pushfq", "popfq", "pushf", "popf", "call", "ret", "leave"})


def random_dest(code: bytes) -> tuple[str, int] | None:
    """('rdrand' or 'rdseed', register | bytes << 8) of `0f c7 /6` or `/7`
    with a register operand, else None."""
    i, width, rex = 0, 4, 0
    while i < len(code) and code[i] in _LEGACY_PREFIXES:
        if code[i] == 0x66:
            width = 2
        elif code[i] in (0xf2, 0xf3):
            return None         # another instruction (f3 0f c7 /7 is rdpid) or #UD
        i += 1
    if i < len(code) and 0x40 <= code[i] <= 0x4f:
        rex = code[i]
        i += 1
    if code[i:i + 2] != b"\x0f\xc7" or i + 2 >= len(code):
        return None
    modrm = code[i + 2]
    op = modrm >> 3 & 7
    if modrm >> 6 != 3 or op not in (6, 7):
        return None
    if rex & 8:
        width = 8
    return ("rdrand" if op == 6 else "rdseed"), (modrm & 7 | (rex & 1) << 3) | width << 8


def _imm(text: str) -> int | None:
    try:
        v = int(text, 0)
    except ValueError:
        return None
    return v - (1 << 64) if v >= 1 << 63 else v


def moves_rsp_far(mnemonic: str, op_str: str, guard: int) -> bool:
    """Whether an instruction may move rsp by a guard page or more (so that
    a write through it could skip the guard below the stack)."""
    ops = [o.strip() for o in op_str.split(",")] if op_str else []
    if not ops:
        return False
    if mnemonic == "enter":
        imm = _imm(ops[0])
        return imm is None or imm >= guard
    if mnemonic == "pop" and ops[0] in _RSP_NAMES:
        return True             # rsp from memory: anywhere
    if mnemonic in ("xchg", "xadd", "cmpxchg"):
        if not _RSP_NAMES.intersection(ops):
            return False
    elif ops[0] not in _RSP_NAMES or mnemonic in _SMALL_MOVES or mnemonic.startswith(("cmp", "test")):
        return False
    if mnemonic in ("sub", "add") and len(ops) == 2:
        imm = _imm(ops[1])
        return imm is None or abs(imm) >= guard
    if mnemonic == "and" and len(ops) == 2:
        imm = _imm(ops[1])
        return imm is None or not -guard < imm < 0
    if mnemonic == "lea" and len(ops) == 2:
        mem = ops[1].replace(" ", "")
        for sign in "+-":
            head = f"[rsp{sign}"
            if mem.startswith(head) and mem.endswith("]"):
                imm = _imm(mem[len(head):-1])
                return imm is None or imm >= guard
        return mem != "[rsp]"
    return True


def classify(md, code: bytes, base: int, *, guard: int) -> list[SysInsn]:
    """The instructions of code (one function at base) that the emulator
    answers, refuses or checks after. md: a capstone Cs for x86-64."""
    out = []
    for addr, size, mnemonic, op_str in md.disasm_lite(code, base):
        raw = code[addr - base:addr - base + size]
        if mnemonic == "rdtsc":
            out.append(SysInsn(addr, size, core.SI_RDTSC, 0, mnemonic))
        elif mnemonic == "rdtscp":
            out.append(SysInsn(addr, size, core.SI_RDTSCP, 0, mnemonic))
        elif mnemonic in ("rdrand", "rdseed"):
            dest = random_dest(raw)
            # other forms (a memory operand, an f2/f3 prefix) are #UD on
            # hardware, and in Unicorn too: nothing to answer
            if dest is not None:
                out.append(SysInsn(addr, size, core.SI_RDRAND if dest[0] == "rdrand" else core.SI_RDSEED,
                                   dest[1], mnemonic))
        elif mnemonic in PRIVILEGED or (mnemonic == "mov" and any(
                o.strip()[:2] in ("cr", "dr") and o.strip()[2:].isdigit() for o in op_str.split(","))):
            out.append(SysInsn(addr, size, core.SI_PRIVILEGED, 0, mnemonic))
        elif moves_rsp_far(mnemonic, op_str, guard):
            out.append(SysInsn(addr, size, core.SI_STACK_CHECK, 0, mnemonic))
    return out


def cpuid(leaf: int, sub: int, cpu: int) -> tuple[int, int, int, int]:
    """(eax, ebx, ecx, edx) of the emulated CPU model: the twin of
    csrc/sysinsn.c emu_cpuid (docs/guest.md lists the model)."""
    leaf &= 0xffffffff
    if leaf == 0:
        return 7, 0x6d65706c, 0x34362d36, 0x38782d75          # "lpem" "6-64" "u-x8": "lpemu-x86-64"
    if leaf == 1:
        ecx = 1 << 0 | 1 << 13 | 1 << 30 | 1 << 31
        edx = 1 << 0 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 15 | 1 << 23 | 1 << 24 | 1 << 25 | 1 << 26
        return 0x000806f1, (cpu & 0xff) << 24 | 1 << 16 | 8 << 8, ecx, edx
    if leaf == 7:
        return (0, 1 << 18, 0, 0) if sub & 0xffffffff == 0 else (0, 0, 0, 0)
    if leaf == 0x80000000:
        return 0x80000001, 0, 0, 0
    if leaf == 0x80000001:
        return 0, 0, 1, 1 << 11 | 1 << 20 | 1 << 27 | 1 << 29
    return 0, 0, 0, 0


def splitmix64(state: int) -> tuple[int, int]:
    """(new state, output): the twin of csrc/sysinsn.c __emu_rng_next."""
    state = (state + 0x9e3779b97f4a7c15) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & _M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & _M64
    return state, z ^ (z >> 31)


_GPR = (UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RBX, UC_X86_REG_RSP, UC_X86_REG_RBP,
        UC_X86_REG_RSI, UC_X86_REG_RDI, UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R11,
        UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15)
_EFLAGS_ARITH = 0x8d5


class PySysInsn:
    """The hooks of csrc/sysinsn.c through the Unicorn binding.

    cpu_of() gives the CPU of the loaded task, stack_of(tid) its stack
    (lo, hi) or None. The random state is `rng` (Machine.seed_random sets it).
    Exceptions never leave a hook: the first is kept in sink.error (the
    redirect twin's, which the scheduler raises) and the run stopped."""

    def __init__(self, engine: core.Engine, cpu_of, stack_of, sink):
        self.engine = engine
        self.uc = engine.uc
        self.cpu_of = cpu_of
        self.stack_of = stack_of
        self.sink = sink
        self.rng = 0
        self._hooks = [self.uc.hook_add(UC_HOOK_INSN, self._cpuid, None, 1, 0, UC_X86_INS_CPUID)]

    def add(self, s: SysInsn) -> None:
        at = s.addr + s.size if s.kind == core.SI_STACK_CHECK else s.addr
        self._hooks.append(self.uc.hook_add(UC_HOOK_CODE, self._hook, s, at, at))
        self.uc.ctl_remove_cache(at, at + 1)

    def _fail(self, exc: BaseException) -> None:
        if self.sink.error is None:
            self.sink.error = exc
        self.engine.request_stop()

    def _cpuid(self, uc, _):
        try:
            leaf, sub = uc.reg_read(UC_X86_REG_RAX), uc.reg_read(UC_X86_REG_RCX)
            for reg, v in zip((UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDX),
                              cpuid(leaf, sub, self.cpu_of())):
                uc.reg_write(reg, v)
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised by the machine
            self._fail(exc)
        return 1

    def _hook(self, uc, addr, size, s: SysInsn):
        try:
            kind = s.kind
            if kind in (core.SI_RDTSC, core.SI_RDTSCP):
                if kind == core.SI_RDTSCP:
                    uc.reg_write(UC_X86_REG_RCX, self.cpu_of())
                tsc = self.engine.now(s.addr)
                uc.reg_write(UC_X86_REG_RAX, tsc & 0xffffffff)
                uc.reg_write(UC_X86_REG_RDX, tsc >> 32 & 0xffffffff)
                self.engine.skip_insn(s.addr, s.addr + s.size)
            elif kind in (core.SI_RDRAND, core.SI_RDSEED):
                reg, width = _GPR[s.arg & 15], s.arg >> 8
                self.rng, v = splitmix64(self.rng)
                if width == 2:
                    v = uc.reg_read(reg) & ~0xffff & _M64 | v & 0xffff
                elif width == 4:
                    v &= 0xffffffff
                uc.reg_write(reg, v)
                uc.reg_write(UC_X86_REG_EFLAGS, uc.reg_read(UC_X86_REG_EFLAGS) & ~_EFLAGS_ARITH | 1)
                self.engine.skip_insn(s.addr, s.addr + s.size)
            elif kind == core.SI_PRIVILEGED:
                self.engine.report_fault(core.FAULT_PRIVILEGED, s.addr, 0)
            elif kind == core.SI_STACK_CHECK:
                bounds = self.stack_of(self.engine.current)
                if bounds is not None:
                    rsp = uc.reg_read(UC_X86_REG_RSP)
                    if not bounds[0] <= rsp <= bounds[1]:
                        self.engine.report_fault(core.FAULT_STACK_OVERFLOW, s.addr, rsp)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
