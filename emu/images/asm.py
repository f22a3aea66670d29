"""Images from Intel-syntax assembly text, assembled by keystone and checked by capstone.

keystone 0.9.2 sometimes encodes an instruction as a different one without an
error (`nop dword ptr [rax+rax*1+0]` comes out as `0f 18 24 00`, not the fentry
NOP `0f 1f 44 00 00`), so every instruction is decoded again with capstone and
matched one to one with the source line it came from, immediates included.

keystone 0.9.2 also leaves its lexer's default radix uninitialised
(MCAsmInfo::Radix is set only by ks_option, and then to 16): an engine made
over heap memory that last held a 16 reads every decimal number as
hexadecimal, `mov eax, 12` as `mov eax, 0x12` and `.skip 4064` as 0x4064
bytes, in instructions and directives alike. Each engine is therefore tried
on a decimal number before it is used (`_engine`).

The text, line by line:
- `name:` at the start of a line begins a function unless name starts with `.`
  (`.L...` labels are local); a function extends to the next such label.
- `fentry` alone stands for the 5-byte fentry NOP.
- `#`, `;` and `//` start comments (keystone would read `;` as a statement
  separator, which would break the one-line-one-instruction mapping).
- Directives (`.byte`, `.quad`, `.p2align`, ...) are passed to keystone; `.globl`,
  `.type`, `.size`, `.text` and `.intel_syntax` are accepted and ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from keystone import KS_ARCH_X86, KS_MODE_64, Ks, KsError

from emu.errors import BuildError
from emu.images.image import FENTRY_NOP, PAGE, fentry_site, PROT_R, PROT_X, Function, Image, Segment

__all__ = ["assemble"]

_FENTRY_TEXT = ".byte " + ",".join(f"{b:#04x}" for b in FENTRY_NOP)
_LABEL = re.compile(r"\s*([A-Za-z_.$][\w.$]*)\s*:(?!:)")
_IGNORED_DIRECTIVES = {".globl", ".global", ".type", ".size", ".text", ".intel_syntax", ".file"}
_UNSUPPORTED_DIRECTIVES = {".section", ".data", ".bss", ".rodata", ".att_syntax", ".code32", ".code16"}
_PREFIXES = {"lock", "rep", "repe", "repz", "repne", "repnz", "notrack", "bnd", "data16", "addr32"}
_PREFIX_ALIASES = {"repz": "repe", "repnz": "repne"}
# Condition-code spellings that name the same encoding; capstone prints the first.
_CC_ALIASES = {"z": "e", "nz": "ne", "c": "b", "nae": "b", "nc": "ae", "nb": "ae", "na": "be",
               "nbe": "a", "nge": "l", "nl": "ge", "ng": "le", "nle": "g", "pe": "p", "po": "np"}
_MNEMONIC_ALIASES = {"sal": "shl", "movabs": "mov", "movsxd": "movsx", "retq": "ret", "xlat": "xlatb"}
_STRING_OPS = re.compile(r"(movs|stos|lods|scas|cmps|ins|outs)[bwdq]$")
_SHIFTS = {"shl", "shr", "sar", "rol", "ror", "rcl", "rcr"}
# Legacy prefixes and REX bytes in front of an opcode.
_PREFIX_BYTES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3, *range(0x40, 0x50)}


@dataclass
class _Stmt:
    line: int
    source: str  # the line as written (without comment)
    text: str  # what keystone assembles
    kind: str  # "insn", "data" or "fentry"


@dataclass
class _Label:
    line: int
    name: str


def _strip_comment(line: str) -> str:
    """line without its comment; comment characters inside double quotes are text."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and (ch in "#;" or line.startswith("//", i)):
            return line[:i]
    return line


def _parse(text: str, source: str) -> list[_Stmt | _Label]:
    items: list[_Stmt | _Label] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        rest = _strip_comment(raw)
        while (m := _LABEL.match(rest)) is not None:
            name = m.group(1)
            if name in seen:
                raise BuildError(f"{source}: line {n}: label {name!r} already defined on line {seen[name]}")
            seen[name] = n
            items.append(_Label(n, name))
            rest = rest[m.end():]
        rest = rest.strip()
        if not rest:
            continue
        if rest == "fentry":
            items.append(_Stmt(n, rest, _FENTRY_TEXT, "fentry"))
        elif rest.startswith("."):
            directive = rest.split(None, 1)[0].lower()
            if directive in _UNSUPPORTED_DIRECTIVES:
                raise BuildError(f"{source}: line {n}: {rest!r}: an assembly image has one text "
                                 "section; put data in C or after the code")
            if directive not in _IGNORED_DIRECTIVES:
                items.append(_Stmt(n, rest, rest, "data"))
        else:
            items.append(_Stmt(n, rest, rest, "insn"))
    return items


def _mnemonic_and_operands(text: str) -> tuple[str, list[str]]:
    """Normalised mnemonic (prefixes included) and operand list of an instruction."""
    words = text.strip().lower().split(None, 1)
    prefixes = []
    while len(words) == 2 and words[0] in _PREFIXES:
        prefixes.append(_PREFIX_ALIASES.get(words[0], words[0]))
        words = words[1].split(None, 1)
    mnem = words[0] if words else ""
    mnem = _MNEMONIC_ALIASES.get(mnem, mnem)
    for stem in ("j", "set", "cmov"):
        if mnem.startswith(stem) and mnem[len(stem):] in _CC_ALIASES:
            mnem = stem + _CC_ALIASES[mnem[len(stem):]]
            break
    ops = [o.strip() for o in words[1].split(",")] if len(words) == 2 and words[1].strip() else []
    return " ".join([*prefixes, mnem]), ops


def _operands_agree(mnem: str, ours: list[str], theirs: list[str]) -> bool:
    """Same operand count, allowing the operands capstone shows but Intel syntax may omit."""
    if len(ours) == len(theirs):
        return True
    base = mnem.split()[-1]
    if not ours and _STRING_OPS.match(base):
        return True  # `rep stosq` is shown as `rep stosq qword ptr [rdi], rax`
    if base in _SHIFTS and len(ours) == 1 and theirs[-1:] == ["1"]:
        return True  # `shl rax` is `shl rax, 1`
    if base == "imul" and len(ours) == 2 and len(theirs) == 3:
        return True  # `imul rax, 5` is `imul rax, rax, 5`
    return False


_NUMBER = re.compile(r"\b(0x[0-9a-f]+|\d+)\b")
_SCALE = re.compile(r"\*\s*\d+")
_IDENT = re.compile(r"[a-z_.$][a-z0-9_.$]*")
_REGISTER = re.compile(r"^([re]?[a-d]x|[re]?[sd]il?|[re]?[sb]pl?|[a-d][lh]|r\d+[dwb]?|[re]?ip)$")


def _displacements_agree(ours: list[str], theirs: list[str]) -> bool:
    """The numbers inside [...] of each memory operand are the ones the source
    wrote (when it wrote only registers and numbers there)."""
    for a, b in zip(ours, theirs):
        if "[" not in a or "[" not in b:
            continue
        inner_a, inner_b = a[a.index("["):], b[b.index("["):]
        if any(not _REGISTER.match(w) and w not in ("ptr",) for w in _IDENT.findall(inner_a)):
            continue        # a label or symbol: its value is the linker's business
        nums_a = sorted(n for n in (int(x, 0) for x in _NUMBER.findall(_SCALE.sub("", inner_a))) if n)
        nums_b = sorted(n for n in (int(x, 0) for x in _NUMBER.findall(_SCALE.sub("", inner_b))) if n)
        if nums_a != nums_b:
            return False
    return True


_LITERAL = re.compile(r"^[+-]?(0x[0-9a-f]+|\d+)$")


def _immediates_agree(ours: list[str], theirs: list[str]) -> bool:
    """Each operand the source wrote as a plain number (an immediate, or a
    jump's absolute target) is the number capstone decoded: capstone shows
    an immediate at its operand's width (`-1` in a 32-bit operation is
    0xffffffff), so the source's value is compared at that width. Operands
    capstone adds (`imul rax, 5` is `imul rax, rax, 5`) are in front."""
    if len(ours) != len(theirs):
        ours, theirs = ours[::-1], theirs[::-1]
    for a, b in zip(ours, theirs):
        if not _LITERAL.match(a):
            continue
        if not _LITERAL.match(b):
            return False
        v, w = int(a, 0), int(b, 0)
        if w < 0:
            if (v - w) % 2**64:
                return False
            continue
        width = next(k for k in (8, 16, 32, 64, w.bit_length()) if w < 2**k)
        if v % 2**width != w:
            return False
    return True


#: Data directives of literal numbers, and each number's width in bytes.
_DATA_WIDTHS = {".byte": 1, ".word": 2, ".short": 2, ".value": 2, ".long": 4, ".int": 4, ".quad": 8}
_SPACE = {".skip", ".space", ".zero"}


def _expected_data(text: str) -> bytes | None:
    """The bytes a data directive written with literal numbers only must
    give (`.quad 1, -2`, `.skip 20, 0x90`), or None for any other form
    (labels, expressions, strings, alignment: keystone's alone)."""
    words = text.split(None, 1)
    name, args = words[0].lower(), (words[1] if len(words) == 2 else "")
    ops = [a.strip().lower() for a in args.split(",")] if args.strip() else []
    if not ops or not all(_LITERAL.match(o) for o in ops):
        return None
    values = [int(o, 0) for o in ops]
    if name in _DATA_WIDTHS:
        width = _DATA_WIDTHS[name]
        if any(not -2 ** (8 * width - 1) <= v < 2 ** (8 * width) for v in values):
            return None                 # keystone's to refuse or truncate
        return b"".join((v % 2 ** (8 * width)).to_bytes(width, "little") for v in values)
    if name in _SPACE and len(values) <= 2 and 0 <= values[0] <= 1 << 24:
        fill = values[1] if len(values) == 2 else 0
        return bytes([fill % 256]) * values[0] if -128 <= fill < 256 else None
    return None


def _opcode(code: bytes) -> bytes:
    i = 0
    while i < len(code) and code[i] in _PREFIX_BYTES:
        i += 1
    return code[i:i + 2]


def _check(stmt: _Stmt, insn, source: str) -> None:
    """BuildError unless capstone's decoding of keystone's bytes is the source instruction."""
    ours, our_ops = _mnemonic_and_operands(stmt.source)
    theirs, their_ops = _mnemonic_and_operands(f"{insn.mnemonic} {insn.op_str}")
    problem = None
    if ours != theirs:
        problem = "a different instruction"
    elif not _operands_agree(ours, our_ops, their_ops):
        problem = f"{len(their_ops)} operands instead of {len(our_ops)}"
    elif ours == "nop" and our_ops and _opcode(bytes(insn.bytes)) != b"\x0f\x1f":
        # capstone prints the 0f 18..0f 1e hint space (prefetch on some CPUs) as
        # `nop` too; only 0f 1f is the multi-byte NOP the source asked for.
        problem = f"opcode {_opcode(bytes(insn.bytes)).hex(' ')} (prefetch/hint space), not the 0f 1f NOP"
    elif ours in ("pushf", "popf") and bytes(insn.bytes)[:1] == b"\x66":
        # keystone makes `pushf` the 16-bit form; in 64-bit code it means pushfq.
        problem = "the 16-bit form; write pushfq/popfq"
    elif not _displacements_agree(our_ops, their_ops):
        problem = "another displacement"
    elif not _immediates_agree(our_ops, their_ops):
        problem = "another immediate"
    if problem:
        raise BuildError(f"{source}: line {stmt.line}: {stmt.source!r} was encoded as "
                         f"{bytes(insn.bytes).hex(' ')} ({insn.mnemonic} {insn.op_str}".rstrip()
                         + f"): {problem}")


def _asm_one(ks, stmt: _Stmt, addr: int, labels: list[str]) -> bytes:
    """stmt alone at addr; every label is defined (after it) so references assemble."""
    enc, _ = ks.asm("\n".join([stmt.text, *(f"{name}:" for name in labels)]), addr)
    return bytes(enc or b"")


#: A decimal number and what it must assemble to: the test of an engine's radix.
_RADIX_PROBE = ("mov eax, 10", bytes.fromhex("b8 0a 00 00 00"))
#: Engines made before an assembly gives up on keystone's radix.
ENGINE_TRIES = 64


def _engine(source: str) -> Ks:
    """A keystone engine that reads decimal numbers as decimal. One that
    reads them as hexadecimal (its radix is heap garbage) is kept until an
    engine that does not is found, so that the next one is made elsewhere."""
    text, want = _RADIX_PROBE
    held = []
    for _ in range(ENGINE_TRIES):
        ks = Ks(KS_ARCH_X86, KS_MODE_64)
        enc, _ = ks.asm(text, 0)
        if bytes(enc or b"") == want:
            return ks
        held.append(ks)
    raise BuildError(f"{source}: keystone read the decimal number in {text!r} as hexadecimal in each of "
                     f"{ENGINE_TRIES} engines (keystone 0.9.2 leaves its radix uninitialised): not assembled")


def assemble(text: str, *, base: int, name: str = "asm", source: str = "<asm>") -> Image:
    """An image of the assembly text at base: one RX segment, labels as symbols,
    top-level labels as functions, a site where a function starts with the fentry NOP.

    Raises BuildError naming source and line for text keystone rejects or encodes
    as something else than what the line says."""
    if base < 0 or base % PAGE:
        raise BuildError(f"{source}: image base {base:#x} is not page aligned ({PAGE:#x})")
    items = _parse(text, source)
    labels = [i.name for i in items if isinstance(i, _Label)]
    if not any(isinstance(i, _Stmt) for i in items):
        raise BuildError(f"{source}: no instructions")

    # Assemble the whole text at once so that keystone lays out labels and picks
    # short or near jumps itself.
    ks = _engine(source)
    program = "\n".join(f"{i.name}:" if isinstance(i, _Label) else i.text for i in items)
    try:
        enc, _ = ks.asm(program, base)
    except KsError as whole:
        # keystone does not say which line failed: try them one by one.
        for stmt in (i for i in items if isinstance(i, _Stmt)):
            try:
                _asm_one(ks, stmt, base, labels)
            except KsError as e:
                raise BuildError(f"{source}: line {stmt.line}: {stmt.source!r}: keystone: {e}") from None
        raise BuildError(f"{source}: keystone: {whole}") from None
    code = bytes(enc or b"")

    # Walk the source over the bytes: one capstone instruction per source
    # instruction, a directive's own size for a directive.
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    addr = base
    where: dict[str, int] = {}
    has_code: set[int] = set()  # addresses of the statements that are instructions
    for item in items:
        if isinstance(item, _Label):
            where[item.name] = addr
            continue
        off = addr - base
        if item.kind == "insn":
            insn = next(md.disasm(code[off:off + 15], addr, 1), None)
            if insn is None:
                raise BuildError(f"{source}: line {item.line}: {item.source!r} was encoded as "
                                 f"{code[off:off + 8].hex(' ')}, which capstone cannot decode")
            _check(item, insn, source)
            has_code.add(addr)
            addr += insn.size
        else:
            size = len(_asm_one(ks, item, addr, labels))
            want = _expected_data(item.text) if item.kind == "data" else None
            if want is not None and code[off:off + size] != want:
                got = code[off:off + min(size, 16)].hex(" ") + (" ..." if size > 16 else "")
                raise BuildError(f"{source}: line {item.line}: {item.source!r} was assembled as {size} bytes "
                                 f"({got}), not the {len(want)} it writes")
            if item.kind == "fentry":
                if code[off:off + size] != FENTRY_NOP:
                    raise BuildError(f"{source}: line {item.line}: fentry was encoded as "
                                     f"{code[off:off + size].hex(' ')}")
                has_code.add(addr)
            addr += size
    if addr - base != len(code):
        raise BuildError(f"{source}: the source accounts for {addr - base} bytes but keystone "
                         f"produced {len(code)}")

    # Functions: each top-level label up to the next one; a label over data only
    # (or over nothing) is a symbol, not a function.
    tops = [lab.name for lab in items if isinstance(lab, _Label) and not lab.name.startswith(".")]
    bounds = [where[t] for t in tops] + [base + len(code)]
    functions: dict[str, Function] = {}
    for (fname, start), end in zip(zip(tops, bounds), bounds[1:]):
        if end > start and any(start <= a < end for a in has_code):
            site = fentry_site(start, code[start - base:min(end, start + 9) - base])
            functions[fname] = Function(fname, start, end, site, name)

    symbols = {n: a for n, a in where.items() if not n.startswith(".L")}
    size = max(PAGE, (len(code) + PAGE - 1) // PAGE * PAGE)
    segment = Segment(base, code.ljust(size, b"\0"), PROT_R | PROT_X, ".text")
    sources = () if source.startswith("<") else (Path(source),)
    return Image(name, "asm", [segment], symbols, functions, elf=None, sources=sources,
                 global_symbols=dict(symbols))
