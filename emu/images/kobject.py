"""Kernel objects made runnable: what the kernel does to an object at boot or
module load, done before linking it into an image.

- `call __fentry__` (gcc -pg -mfentry -mrecord-mcount without -mnop-mcount)
  becomes the 5-byte NOP, as ftrace_init does at boot; its relocation is
  dropped (R_X86_64_NONE).
- Undefined kernel symbols are bound to stubs generated here: a function
  stub returns 0; a symbol that is only read or addressed (never called)
  gets 64 zeroed bytes. The user's own C (`[program] stubs`) is linked first
  and wins. Retpoline thunks (`__x86_indirect_thunk_<reg>`) are the plain
  `jmp *%reg`, the return thunk is `ret`, and a static-call trampoline
  `__SCT__<name>` jumps to the function <name> when the image has it (the
  static call bound to its target) and returns 0 otherwise.
- Alternatives are applied for a configured CPU feature set, as
  apply_alternatives does at boot (the replacement copied over the original,
  NOP-padded, its rel32 calls and jumps re-aimed), or left original; the
  choice is recorded on the image. Jump labels keep the compiler's default
  (the key's initial branch); the tables that describe code (bug table, jump
  table, ...) are placed as data by the linker script, never as code.
- %gs reads the per-CPU area of emu/images/percpu.py: the stack protector's
  canary (%gs:0x28, __stack_chk_guard) and pcpu_hot/current_task (current,
  preempt_count, cpu_number), bound to their absolute offsets. Code that uses
  any other per-CPU variable is refused with an error naming the function
  and the variable: the emulator does not provide it.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone.x86 import X86_OP_MEM, X86_REG_GS
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from emu.errors import BuildError
from emu.images import percpu
from emu.images.elf import symbol_table
from emu.images.image import FENTRY_NOP, Segment
from emu.images.kernel_rules import FENTRY_CALL_TARGETS, decode
from emu.images.toolchain import run_tool

__all__ = ["KernelObject", "prepare", "write_stubs", "apply_alternatives", "ALT_ENTRY_SIZE"]

# struct alt_instr (Linux 6.3+): s32 instr_offset, s32 repl_offset, u32 ft_flags
# (feature in the low 16 bits, ALT_FLAG_NOT in bit 16), u8 instrlen, u8 replacementlen
ALT_ENTRY_SIZE = 14
_ALT_FLAG_NOT = 1 << 16
_NOPS = {1: b"\x90", 2: b"\x66\x90", 3: b"\x0f\x1f\x00", 4: b"\x0f\x1f\x40\x00",
         5: b"\x0f\x1f\x44\x00\x00"}

_R_X86_64_NONE = 0
_CALL_OR_JMP = (0xE8, 0xE9)
_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
_GS = 0x65
_THUNK = "__x86_indirect_thunk_"
_REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12",
              "r13", "r14", "r15")
_STATIC_CALL = "__SCT__"
_DATA_STUB_SIZE = 64


@dataclass
class KernelObject:
    """What prepare found in one object: fentry calls turned into NOPs, the
    symbols it defines and the undefined ones it calls or only reads."""

    path: Path
    fentry_calls: int = 0
    defined: set[str] = field(default_factory=set)
    called: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    percpu: set[str] = field(default_factory=set)    # per-CPU symbols it reads through %gs


def prepare(path: Path, label: str) -> KernelObject:
    """Rewrite the object at path in place: every `call __fentry__` becomes the
    fentry NOP. Returns what it found. Raises BuildError naming label and the
    function when code reads %gs."""
    data = bytearray(path.read_bytes())
    elf = ELFFile(io.BytesIO(bytes(data)))
    sections = list(elf.iter_sections())
    symtab = symbol_table(elf)
    if symtab is None:
        raise BuildError(f"{label}: the object has no symbol table")
    syms = list(symtab.iter_symbols())
    found = KernelObject(path)
    for s in syms:
        if s.name and isinstance(s["st_shndx"], int) and s["st_info"]["type"] != "STT_SECTION":
            if s["st_info"]["bind"] != "STB_LOCAL":
                found.defined.add(s.name)
    relocs_of = {}
    for rel in sections:
        if rel["sh_type"] == "SHT_RELA":
            relocs_of[rel["sh_info"]] = [(r["r_offset"], syms[r["r_info_sym"]].name)
                                         for r in rel.iter_relocations()]
    for index, sec in enumerate(sections):
        if sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and sec["sh_type"] == "SHT_PROGBITS":
            found.percpu |= _check_gs(sec, index, syms, relocs_of.get(index, []), label)
    for rel in sections:
        if rel["sh_type"] != "SHT_RELA":
            continue
        target = sections[rel["sh_info"]]
        code = bool(target["sh_flags"] & SH_FLAGS.SHF_EXECINSTR)
        base = target["sh_offset"]
        for n, r in enumerate(rel.iter_relocations()):
            s = syms[r["r_info_sym"]]
            if s["st_shndx"] != "SHN_UNDEF" or not s.name:
                continue
            at = r["r_offset"]
            is_call = code and at >= 1 and data[base + at - 1] in _CALL_OR_JMP
            if s.name in FENTRY_CALL_TARGETS and is_call and data[base + at - 1] == 0xE8:
                data[base + at - 1: base + at + 4] = FENTRY_NOP
                off = rel["sh_offset"] + n * rel["sh_entsize"] + 8      # Elf64_Rela.r_info
                data[off: off + 8] = struct.pack("<Q", _R_X86_64_NONE)   # no symbol, no effect
                found.fentry_calls += 1
            elif is_call:
                found.called.add(s.name)
            else:
                found.read.add(s.name)
    path.write_bytes(bytes(data))
    return found


def _check_gs(sec, index: int, syms, relocs: list[tuple[int, str]], label: str) -> set[str]:
    """The per-CPU symbols the section's %gs accesses use; BuildError for an
    access to anything percpu.py does not provide."""
    code = sec.data()
    used = set()
    md = None
    for start, end in decode(code):
        i = start
        while i < end and code[i] in _PREFIXES and code[i] != _GS:
            i += 1
        if i >= end or code[i] != _GS:
            continue
        names = [name for off, name in relocs if start <= off < end]
        if names:
            unknown = [n for n in names if n not in percpu.SYMBOLS]
            if unknown:
                raise BuildError(f"{label}: {_where(sec, index, syms, start)} uses the per-CPU variable "
                                 f"{unknown[0]}, which the emulator does not provide (it has "
                                 f"{', '.join(sorted(percpu.SYMBOLS))})")
            used |= set(names)
            continue
        if md is None:
            md = Cs(CS_ARCH_X86, CS_MODE_64)
            md.detail = True
        insn = next(md.disasm(code[start:end], start), None)
        mems = [op.mem for op in (insn.operands if insn is not None else ())
                if op.type == X86_OP_MEM and op.mem.segment == X86_REG_GS]
        if len(mems) != 1 or mems[0].base or mems[0].index or mems[0].disp != percpu.CANARY:
            text = f"{insn.mnemonic} {insn.op_str}" if insn is not None else "an undecodable instruction"
            raise BuildError(f"{label}: {_where(sec, index, syms, start)} accesses per-CPU memory the "
                             f"emulator does not provide ({text}); its per-CPU area has only the "
                             f"canary ({percpu.CANARY:#x}) and {', '.join(sorted(percpu.SYMBOLS))}")
    return used


def _where(sec, index: int, syms, offset: int) -> str:
    for s in syms:
        if (s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] == index
                and s["st_value"] <= offset < s["st_value"] + max(s["st_size"], 1)):
            return f"{s.name}+{offset - s['st_value']:#x}"
    return f"{sec.name}+{offset:#x}"


def write_stubs(objects: list[KernelObject], defined_elsewhere: set[str], tmp: Path,
                name: str) -> tuple[Path | None, tuple[str, ...]]:
    """An object defining a stub for every symbol the kernel objects use that
    nothing defines (defined_elsewhere: the user's stubs, the other sources,
    the base image a module binds to). Returns (the object or None, the stub
    names, sorted)."""
    defined = set(defined_elsewhere)
    for o in objects:
        defined |= o.defined
    pcpu = set().union(*(o.percpu for o in objects)) - defined
    called = set().union(*(o.called for o in objects)) - defined - FENTRY_CALL_TARGETS - pcpu
    read = set().union(*(o.read for o in objects)) - defined - called - FENTRY_CALL_TARGETS - pcpu
    if not called and not read and not pcpu:
        return None, ()
    lines = [f".globl {sym}\n.set {sym}, {percpu.SYMBOLS[sym]:#x}" for sym in sorted(pcpu)]
    lines.append('.section .text.__lpemu_kernel_stubs,"ax",@progbits')
    for sym in sorted(called):
        lines += [f".globl {sym}", f".type {sym},@function", f"{sym}:"]
        if sym.startswith(_THUNK) and sym[len(_THUNK):] in _REGISTERS:
            lines.append(f"\tjmp *%{sym[len(_THUNK):]}")
        elif sym == "__x86_return_thunk":
            lines.append("\tret")
        elif sym.startswith(_STATIC_CALL) and sym[len(_STATIC_CALL):] in defined:
            lines.append(f"\tjmp {sym[len(_STATIC_CALL):]}")
        else:
            lines += ["\txorl %eax, %eax", "\tret"]
        lines.append(f".size {sym}, .-{sym}")
    if read:
        lines.append('.section .bss.__lpemu_kernel_stubs,"aw",@nobits')
        for sym in sorted(read):
            lines += [".balign 8", f".globl {sym}", f".type {sym},@object", f"{sym}:",
                      f"\t.zero {_DATA_STUB_SIZE}", f".size {sym}, {_DATA_STUB_SIZE}"]
    src = tmp / f"{name}_kernel_stubs.s"
    src.write_text("\n".join(lines) + "\n")
    obj = tmp / f"{name}_kernel_stubs.o"
    r = run_tool(["gcc", "-c", src.name, "-o", obj.name], tmp)
    if r.returncode != 0:
        raise BuildError(f"{name}: assembling the kernel stubs failed:\n{r.stderr.rstrip()}")
    return obj, tuple(sorted(called | read))


def apply_alternatives(image, features):
    """image with its alternatives applied for features (a set of X86_FEATURE_*
    numbers), or unchanged when features is None; image.alternatives says
    which. The table is the linked .altinstructions between the linker
    script's __alt_instructions and __alt_instructions_end."""
    lo = image.symbols.get("__alt_instructions")
    hi = image.symbols.get("__alt_instructions_end")
    entries = (hi - lo) // ALT_ENTRY_SIZE if lo is not None and hi is not None else 0
    if features is None:
        image.alternatives = f"original ({entries} alternatives not applied)"
        return image
    features = set(features)
    patches = []
    for i in range(entries):
        at = lo + i * ALT_ENTRY_SIZE
        instr_off, repl_off, flags, instrlen, repllen = struct.unpack(
            "<iiIBB", image.read(at, ALT_ENTRY_SIZE))
        instr, repl = at + instr_off, at + 4 + repl_off
        wanted = (flags & 0xFFFF) in features
        if flags & _ALT_FLAG_NOT:
            wanted = not wanted
        if not wanted:
            continue
        if repllen > instrlen:
            raise BuildError(f"{image.name}: the alternative at {instr:#x} is longer ({repllen} bytes) "
                             f"than the instructions it replaces ({instrlen})")
        what = f"{image.name}: alternative {i} of .altinstructions ({instrlen} bytes at {instr:#x}, " \
               f"replaced by {repllen} at {repl:#x})"
        try:
            image.read(instr, instrlen)
            code = bytearray(image.read(repl, repllen))
        except BuildError:
            raise BuildError(f"{what}: outside the image: the table is damaged") from None
        if not _reaim(code, repl, instr):
            raise BuildError(f"{what}: a call or jump of the replacement cannot reach its target from "
                             f"{instr:#x} (a displacement past 32 bits): the table is damaged")
        code += _nops(instrlen - repllen)
        patches.append((instr, bytes(code)))
    segments = list(image.segments)
    for addr, code in patches:
        n, seg = next((n, seg) for n, seg in enumerate(segments) if seg.addr <= addr and addr + len(code) <= seg.end)
        data = bytearray(seg.data)
        data[addr - seg.addr: addr - seg.addr + len(code)] = code
        segments[n] = Segment(seg.addr, bytes(data), seg.prot, seg.name)
    image.segments = segments
    image.alternatives = (f"applied for features {sorted(features)}: "
                          f"{len(patches)} of {entries} alternatives")
    return image


def _reaim(code: bytearray, src: int, dst: int) -> bool:
    """Re-aim the rel32 calls and jumps of code moved from src to dst at their
    targets outside it (the kernel's apply_relocation). False when one
    cannot reach its target from dst (code is then partly re-aimed)."""
    for start, end in decode(bytes(code)):
        op = code[start]
        if op in (0xE8, 0xE9) and end - start == 5:
            field = start + 1
        elif op == 0x0F and end - start == 6 and 0x80 <= code[start + 1] <= 0x8F:
            field = start + 2
        else:
            continue
        disp = struct.unpack_from("<i", code, field)[0]
        target = src + end + disp
        if src <= target < src + len(code):
            continue
        disp = target - (dst + end)
        if not -2**31 <= disp < 2**31:
            return False
        struct.pack_into("<i", code, field, disp)
    return True


def _nops(n: int) -> bytes:
    out = b""
    while n > 0:
        k = min(n, 5)
        out += _NOPS[k]
        n -= k
    return out
