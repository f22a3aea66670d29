"""Patches from source: the functions a patch must carry, found the way
kpatch-build's create-diff-object finds them.

Both sides are compiled (never linked) with build_c's flags, one section per
function and per data object (-ffunction-sections -fdata-sections), and read
back with pyelftools. Each function is compared by its code bytes and by its
relocations, each relocation taken as (offset, type, what it denotes):

- a named symbol and the offset into it: "bar+0", whichever way gcc's
  assembler spelled it ("bar - 4" or ".text.bar - 4": a PC-relative addend is
  corrected by the distance from the relocated field to the end of its
  instruction, as kpatch does, so a section symbol resolves to the symbol it
  holds at that offset);
- the contents of a string literal (.rodata.str*: no symbol, so its contents
  are its identity), or of an anonymous or compiler-made table (a switch's
  jump table or CSWTCH array, __func__), recursively with its own relocations.

So neither addresses, section order nor gcc's numbering of labels make a
function differ. Names gcc makes up are correlated, not compared: clones
(foo.constprop.0, foo.isra.1, foo.part.0) by their name without the numbers,
then by identical contents; static locals (count.3) by their name and the
function that declares them; a foo.cold part belongs to foo (a change in it
changes foo, which jumps into it; .cold parts are never listed themselves).

Inlining is found, not guessed: the compile for the comparison has -g, and
DW_TAG_inlined_subroutine says which functions gcc inlined where (-g does not
change gcc's code); a second compile with -fno-inline says whether a function's
own code changed. A caller whose code differs only with inlining, and which
inlines a function whose code differs without it, is listed with the reason
"inlines changed static function helper (inlined into it)".

Data is the running system's state, which a patch cannot change: an object
defined on both sides (a global, a file-scope static or a static local; in
.data, .bss or .rodata) whose initial value, size, type layout, or
read-only-ness changes is refused with PatchError naming the file and the
object. New data objects are allowed, as kpatch allows them: they have no old
state, the patch module carries them and they start at their initial value
when it loads (Diff.new_data). Data only the old side has is left alone.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from emu.errors import BuildError, PatchError, check_items, check_type
from emu.images import kernel_rules
from emu.images.elf import ET_REL, PARSE_ERRORS, check_x86_64_elf, is_elf_file, read_input, symbol_table
from emu.images.image import ENDBR64, fentry_site
from emu.images.toolchain import FLAGS, compile_c, require_tools, safe_stem, work_dir

__all__ = ["Diff", "diff_sources", "diff_objects", "diff_files", "patch_plan"]

# Flags added to build_c's for the comparison compile (DWARF says what was
# inlined where) and for the compile that shows each function's own code.
_COMPARE_FLAGS = ("-g",)
_NO_INLINE_FLAGS = ("-fno-inline",)

# x86-64 relocation types whose value is relative to the relocated field (R_X86_64_PC32,
# PLT32, GOTPCREL, PC16, PC8, PC64, GOTPCRELX, REX_GOTPCRELX).
_PC_RELATIVE = frozenset({2, 4, 9, 13, 15, 24, 41, 42})
# Objects gcc makes, not the program: their contents belong to the code using them.
_GENERATED = re.compile(r"^(CSWTCH|__func__|__FUNCTION__|__PRETTY_FUNCTION__)\.\d+$")
_STATIC_LOCAL = re.compile(r"^(?P<base>[A-Za-z_]\w*)\.\d+$")
# Parts gcc splits off a function: foo.cold (unlikely paths), foo.part.0 (a
# partial inline); both go with their parent (create-diff-object's children).
_COLD = re.compile(r"^(?P<parent>.+?)(\.cold(\.\d+)?|\.part\.\d+)$")
_NUMBERS = re.compile(r"\.\d+")
_DW_OP_ADDR = 0x03
_MEMBER_PLACE = ("DW_AT_data_member_location", "DW_AT_data_bit_offset", "DW_AT_bit_size")
_CALL_OR_JMP = (0xE8, 0xE9)

_NO_DATA_CHANGE = "a live patch cannot change existing data; use a shadow variable"
_NO_LAYOUT_CHANGE = ("a live patch cannot change the layout of existing data; "
                     "keep new fields in a shadow variable")


@dataclass
class Diff:
    """What a patch must carry.

    changed: functions of both sides whose code or relocations differ (new-side
    names); new: functions only the new side defines; removed: functions only
    the old side defines (always empty for patch_plan); reasons: for each
    changed function, why. new_data: data objects only the new side defines
    (the module carries them). renamed: new-side name -> old-side name of
    functions and data gcc numbered differently (foo.constprop.1 was
    foo.constprop.0); build_c and make_patch bind by exact name, so a changed
    or carried one of these needs care. warnings: what the lists cannot say
    (a changed function that has no fentry site, an inlined change the partial
    patch does not carry, a renamed static local). carried_data: existing
    read-only data whose initial value changes and that the patch carries as
    its own copy, with the changed function that uses it (kernel objects, as
    create-diff-object carries it)."""

    changed: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    new_data: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    carried_data: list[str] = field(default_factory=list)

    @property
    def carry(self) -> set[str]:
        """What the patch module carries, build_c's keep: the changed and new
        functions, and carried_data."""
        return set(self.changed) | set(self.new) | set(self.carried_data)

    def to_json(self) -> dict:
        """{"changed": [...], "new": [...], "removed": [...], "reasons": {...}}"""
        return {"changed": list(self.changed), "new": list(self.new),
                "removed": list(self.removed), "reasons": dict(self.reasons)}


def diff_sources(old, new, *, cflags=()) -> Diff:
    """Compare two versions of a whole program: what a patch from old to new carries.

    old, new: a C source path or a list of them (lpemu.h on the include path);
    cflags as for build_c. changed: functions defined on both sides whose code
    or relocations differ, and callers of changed inlined functions; new: only
    in new; removed: only in old.

    Raises BuildError (a missing file, a compile error with gcc's output),
    ToolMissing (no gcc), PatchError (a change to existing data, naming the
    file and the object)."""
    return _diff(old, new, cflags, partial=False)


def patch_plan(base_sources, patch_sources, *, cflags=()) -> Diff:
    """What a patch written as new versions of some functions carries.

    The patch sources may hold only the functions the author changed (plus
    extern declarations of what they use). The rule: changed = functions the
    patch sources define whose code or relocations differ from the base's
    function of the same name (correlated as in diff_sources); new = functions
    only the patch sources define; functions only the base defines are not
    carried and are never listed (removed is empty). Data objects defined by
    both whose initial value, size, layout or read-only-ness differs are refused
    (PatchError); data the patch only declares extern is the base's and fine;
    data only the patch defines is new. A changed function that the base inlines
    into a function the patch does not define is named in warnings: that caller
    keeps the old code.

    Raises BuildError, ToolMissing, PatchError as diff_sources does."""
    return _diff(base_sources, patch_sources, cflags, partial=True)


def diff_files(old, new, *, cflags=()) -> Diff:
    """diff_objects when old and new are ELF objects, diff_sources when they are
    C sources (what `lpemu diff` runs). Raises BuildError for a mix of the two
    or for cflags given with objects (they are already compiled)."""
    cflags = _cflags(cflags)
    kinds = {_is_elf(p) for p in _as_list(old, "diff: old") + _as_list(new, "diff: new")}
    if kinds == {True}:
        if cflags:
            raise BuildError("diff: --cflags applies to C sources; the objects are already compiled")
        return diff_objects(old, new)
    if kinds == {False}:
        return diff_sources(old, new, cflags=cflags)
    raise BuildError(f"diff: {old} and {new} mix C sources and object files; give two objects "
                     "(the original and the patched build) or two sources")


def _as_list(paths, what: str = "diff: a side") -> list[Path]:
    """paths (a path or a list of them) as Paths; TypeError naming what otherwise."""
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    if not isinstance(paths, (list, tuple)):
        raise TypeError(f"{what} must be a path or a list of paths, not {type(paths).__name__}")
    for i, p in enumerate(paths):
        check_type(p, (str, os.PathLike), f"{what}[{i}]")
    return [Path(p) for p in paths]


def _is_elf(path: Path) -> bool:
    if not path.is_file():
        raise BuildError(f"{path}: no such file")
    return is_elf_file(path)


def diff_objects(old, new) -> Diff:
    """Compare two x86-64 relocatable objects (or lists of them, in the same
    order) as kpatch-build's create-diff-object and klp-build compare the
    objects of the original and the patched build.

    changed: functions of both whose code, relocations or alternatives differ
    by more than the kernel_rules allow (moved __LINE__ arguments, special
    statics, switch tables, tables the kernel tools rebuild), under the
    original object's names (a renumbered clone keeps its old name); a change
    in a .cold child (no fentry call of its own) is its parent's, a changed
    .part child with its own fentry call is listed nowhere (create-diff-object
    carries it but patches no function for it: said in warnings). new:
    functions only the patched object has that the patch carries (global, or
    used by a changed or carried function). removed: functions only the
    original has. A changed switch table (CSWTCH) that the kernel tools do not
    see is said in warnings.

    Refused with PatchError (one line per problem, the kernel tools' reasons):
    changed init code; a changed function in a section shared with other code
    (.sched.text, .noinstr.text, .text); a changed function without an fentry
    call (notrace); changed existing data, except read-only data (not .data*
    or .bss*) that a changed function uses, which the patch carries as its own
    copy; a reference to a static local that the patched object lost; no
    changed function and no new global at all (only moved lines or renumbered
    ids: the patch would be empty). Functions named by KPATCH_IGNORE_FUNCTION
    and sections named by KPATCH_IGNORE_SECTION are not compared.

    Raises BuildError when a file is missing or not an x86-64 object."""
    old_side = _read_side(old, "old")
    new_side = _read_side(new, "new")
    return _report_objects(_Pair(old_side, new_side))


def _read_side(objects, side: str) -> "_Side":
    """One side's objects read; an object pyelftools cannot parse (truncated,
    corrupt) is a BuildError naming it."""
    objs = _read_objects(objects, side)
    try:
        return _Side(objs, dwarf=False, kernel=True)
    except PARSE_ERRORS as exc:
        names = ", ".join(name for name, _ in objs)
        raise BuildError(f"{names}: cannot read the {side} object: {exc}") from None


def _read_objects(objects, side: str) -> list[tuple[str, bytes]]:
    paths = _as_list(objects, f"diff: {side}")
    if not paths:
        raise BuildError(f"diff: no {side} objects")
    out = []
    for p in paths:
        if not p.is_file():
            raise BuildError(f"{p}: no such file")
        data = read_input(p)
        if check_x86_64_elf(data, p) != ET_REL:
            raise BuildError(f"{p}: not a relocatable object (.o); the diff compares the objects "
                             "of the original and the patched build")
        out.append((p.name, data))
    return out


def _report_objects(pair: "_Pair") -> Diff:
    diff = Diff()
    refusals = []
    ignored = pair.new.ignored_functions | pair.old.ignored_functions
    changed_syms = []
    split_changes = []      # changed children with their own fentry call: no function lists them
    for sym in pair.new.listed("func"):
        old = pair.counterpart(sym)
        if old is None or sym.name in ignored or old.name in ignored:
            continue
        split = [n for o, n in pair.child_pairs(old, sym) if n.fentry and pair.differs(o, n)]
        split_changes += split
        if pair.own_differs(old, sym) or any(not n.fentry and pair.differs(o, n)
                                             for o, n in pair.child_pairs(old, sym)) \
                or len(old.children) != len(sym.children):
            why = "; ".join(_code_notes(pair, old, sym))
        elif kernel_rules.subsection(old.section) != kernel_rules.subsection(sym.section):
            why = f"moves from {old.section} to {sym.section}"
        else:
            if old.tables != sym.tables:
                diff.warnings.append(f"{sym.file}: the switch table gcc made for {old.name} (CSWTCH) differs; "
                                     "create-diff-object and klp-diff compare such tables by name only, "
                                     f"so the kernel tools would not patch {old.name}")
            continue
        if kernel_rules.is_init_section(old.section) or kernel_rules.is_init_section(sym.section):
            refusals.append(f"{sym.file}: changed function {old.name} is init code ({old.section}): "
                            "it has already run and been freed; a live patch cannot change it")
        elif not all(kernel_rules.own_section(s.name, s.section) for s in (old, sym)):
            shared = sym.section if not kernel_rules.own_section(sym.name, sym.section) else old.section
            refusals.append(f"{sym.file}: changed section {shared} not selected for inclusion: "
                            f"{old.name} shares it with other code, so it cannot be carried alone "
                            "(build with -ffunction-sections; kpatch cannot patch it)")
        elif not old.fentry:
            refusals.append(f"{sym.file}: function {old.name} changed but has no fentry call "
                            "(notrace?): it cannot be patched; patch its callers")
        else:
            changed_syms.append(sym)
            diff.changed.append(old.name)
            diff.reasons[old.name] = why
    for child in split_changes:
        diff.warnings.append(f"{child.file}: {child.name} changed; it has an fentry call of its own, so "
                             f"create-diff-object carries it but lists and patches no function for it "
                             f"({child.parent.name} is unchanged): patch {child.parent.name} to reach it")
    new_funcs = {s.handle: s for s in pair.new.listed("func") if pair.counterpart(s) is None
                 and not kernel_rules.is_init_section(s.section)}
    new_globals = [s for s in pair.new.listed("data") if pair.counterpart(s) is None and not s.local]
    carried = _reached(changed_syms + [s for s in new_funcs.values() if not s.local], pair.new)
    diff.new = sorted({s.name for h, s in new_funcs.items() if h in carried})
    diff.removed = sorted(s.name for s in pair.old.listed("func") if s.ident not in pair.matched_old)
    diff.new_data = sorted(s.label for s in pair.new.listed("data") if pair.counterpart(s) is None)
    for sym in pair.new.syms.values():
        old = pair.counterpart(sym)
        if old is not None and old.name != sym.name and sym.parent is None:
            diff.renamed[sym.name] = old.name
    users = _direct_users([(s, pair.counterpart(s).name) for s in changed_syms]
                          + [(s, s.name) for h, s in new_funcs.items() if h in carried])
    refusals = _data_problems(pair, lambda old, new: users.get(new.handle)
                              if kernel_rules.carries_changed_data(new.section) else None, diff) + refusals
    refusals += _lost_static_local_references(pair, ignored)
    refusals += _mismatched_symbols(pair)
    refusals += _grown_shared_data_sections(pair, users)
    for name, table in sorted(pair.new.export_tables.items()):
        if name in pair.old.export_tables and pair.old.export_tables[name] != table:
            refusals.append(f"changed section {name} not selected for inclusion: the patch adds or removes "
                            "an export (EXPORT_SYMBOL); a live patch cannot carry exports")
    if (not refusals and not diff.changed and not split_changes and not new_globals
            and not any(not new_funcs[h].local for h in carried if h in new_funcs)):
        refusals.append("no changed functions were found: the objects differ only in moved lines, "
                        "renumbered names or metadata; there is nothing to patch"
                        + "".join(f"\nnote: {w}" for w in diff.warnings))
    if refusals:
        raise PatchError("\n".join(refusals))
    diff.changed.sort()
    return diff


def _direct_users(funcs) -> dict:
    """handle -> name of the first function of funcs ((sym, name to say), ...)
    whose code (or a child's) refers to it."""
    users = {}
    for sym, name in funcs:
        for part in [sym, *sym.children]:
            for handle in _target_handles(part.relocs, part.extras):
                users.setdefault(handle, name)
    return users


def _lost_static_local_references(pair: "_Pair", ignored) -> list[str]:
    """create-diff-object correlates a static local (count.3) by the functions
    and data that refer to it: each reference the original has must still be
    there, from the same function (or its children) or object, to the
    patched twin (kpatch_correlate_static_local_variables)."""
    twins = {ident: pair.new.by_ident[new] for new, ident in pair.match.items()}
    problems = []
    for old in list(pair.old.listed("func")) + list(pair.old.listed("data")):
        if old.name in ignored:
            continue
        used = [h for part in [old, *old.children] for h in _target_handles(part.relocs)]
        statics = [pair.old.syms[h] for h in dict.fromkeys(used)
                   if h in pair.old.syms and _is_normal_static_local(pair.old.syms[h]) and h != old.handle]
        if not statics:
            continue
        new = twins.get(old.ident)
        reached = set()
        if new is not None:
            reached = {h for part in [new, *new.children] for h in _target_handles(part.relocs)}
        for var in statics:
            twin = twins.get(var.ident)
            if new is None or twin is None or twin.handle not in reached:
                where = old.name if new is None else f"{old.name} (the patched {new.name} has none)"
                problems.append(f"{old.file}: reference to static local variable {var.name} in {where} "
                                "was removed: create-diff-object cannot correlate it; keep the reference "
                                "or move the state to a shadow variable")
    return problems


def _grown_shared_data_sections(pair: "_Pair", users: dict) -> list[str]:
    """A new data object in a section the original has and shares with other
    data (not one of its own) changes that section: create-diff-object
    refuses it unless a changed or carried function includes the section and
    it is not .data*/.bss* (kpatch_verify_patchability); .rodata itself is
    always included."""
    problems = []
    for new in pair.new.listed("data"):
        section = new.section
        if (pair.counterpart(new) is not None or section not in pair.old.section_names
                or section == ".rodata" or kernel_rules.own_data_section(new.name, section)):
            continue
        included = new.handle in users or not new.local
        if included and kernel_rules.carries_changed_data(section):
            continue
        if included:
            problems.append(f"{new.file}: data section {section} selected for inclusion: the new "
                            f"{new.label} shares it with the original's data, which a patch cannot change")
        else:
            problems.append(f"{new.file}: changed section {section} not selected for inclusion: the new "
                            f"{new.label} is added to it and nothing the patch carries uses it")
    return problems


def _mismatched_symbols(pair: "_Pair") -> list[str]:
    """Correlated functions and data whose binding differs, or that moved to
    another section (not between .text, .text.unlikely and .text.hot):
    create-diff-object's kpatch_compare_correlated_symbol stops on them."""
    problems = []
    for new in pair.new.syms.values():
        old = pair.counterpart(new)
        if old is None:
            continue
        if old.bind != new.bind:
            problems.append(f"{new.file}: symbol info mismatch: {old.name} is {old.bind} in the original, "
                            f"{new.bind} in the patched object")
            continue
        moved = _NUMBERS.sub("", old.section) != _NUMBERS.sub("", new.section)
        if not moved or (new.kind == "func" and kernel_rules.subsection(old.section)
                         != kernel_rules.subsection(new.section)):
            continue
        if new.kind == "data" and _data_change(pair, old, new):
            continue        # said already, in its own words
        problems.append(f"{new.file}: symbol changed sections: {old.name} ({old.section} in the original, "
                        f"{new.section} in the patched object)")
    return problems


def _is_normal_static_local(sym: "_Sym") -> bool:
    """A static local (name.N) that is not one of the special statics: kpatch_is_normal_static_local."""
    return sym.kind == "data" and sym.local and "." in sym.name and not sym.name.startswith(".L")


def _reached(roots, side: "_Side") -> set:
    """Handles of the functions and data of side that roots use, transitively
    (their .cold and .part children included), roots too."""
    seen = {r.handle for r in roots}
    todo = list(roots)
    while todo:
        sym = todo.pop()
        for part in [sym, *sym.children]:
            for handle in _target_handles(part.relocs, part.extras):
                target = side.syms.get(handle)
                if target is not None and handle not in seen:
                    seen.add(handle)
                    todo.append(target)
    return seen


def _target_handles(relocs, extras=()):
    for _, _, t in relocs:
        yield from _handles_of(t)
    for _, t in extras:
        yield from _handles_of(t)


def _handles_of(target: tuple):
    if target[0] == "sym":
        yield target[1]
    elif target[0] == "content":
        for _, _, t in target[3]:
            yield from _handles_of(t)


# -- driving the comparison ---------------------------------------------------------


def _cflags(cflags) -> list[str]:
    """cflags as a list of flags; TypeError for a string or a non-string flag."""
    return check_items(cflags, str, "diff: cflags", FLAGS)


def _diff(old, new, cflags, *, partial: bool) -> Diff:
    cflags = _cflags(cflags)
    old_paths, new_paths = _source_paths(old, "old"), _source_paths(new, "new")
    require_tools("gcc", "as")
    with work_dir("lpemu-diff-") as tmp:
        old_side = _Side(_compile_all(old_paths, cflags, _COMPARE_FLAGS, tmp, "old"))
        new_side = _Side(_compile_all(new_paths, cflags, _COMPARE_FLAGS, tmp, "new"))
        plain = _Pair(_Side(_compile_all(old_paths, cflags, _NO_INLINE_FLAGS, tmp, "old_ni")),
                      _Side(_compile_all(new_paths, cflags, _NO_INLINE_FLAGS, tmp, "new_ni")))
    pair = _Pair(old_side, new_side)
    _refuse_data_changes(pair)
    return _report(pair, plain, partial=partial)


def _source_paths(sources, side: str) -> list[Path]:
    paths = _as_list(sources, f"diff: {side}")
    if not paths:
        raise BuildError(f"diff: no {side} sources")
    for p in paths:
        if not p.is_file():
            raise BuildError(f"{p}: no such file")
        if is_elf_file(p):
            raise BuildError(f"{p}: an ELF file; compare objects with diff_objects (or "
                             "`lpemu diff ORIG.o PATCHED.o`), sources with diff_sources")
    return paths


def _compile_all(paths: list[Path], cflags: list[str], extra, tmp: Path, tag: str):
    """[(source basename, object bytes)], compiled as build_c compiles, plus extra."""
    objs = []
    for i, src in enumerate(paths):
        obj = tmp / f"{tag}_{i}_{safe_stem(src)}.o"
        compile_c(src.resolve(), obj, [*cflags, *extra], tmp)
        objs.append((src.name, obj.read_bytes()))
    return objs


def _report(pair: "_Pair", plain: "_Pair", *, partial: bool) -> Diff:
    diff = Diff()
    own_changes = plain.changed_bases()
    for sym in pair.new.listed("func"):
        old = pair.counterpart(sym)
        if old is None:
            diff.new.append(sym.name)
        elif pair.differs(old, sym):
            diff.changed.append(sym.name)
            where = f" (the {sym.name} of {sym.file})" if sym.shared_name else ""
            diff.reasons[sym.name] = _reason(pair, plain, own_changes, old, sym) + where
            if fentry_site(0, sym.body) is None:
                diff.warnings.append(f"{sym.file}: {sym.name} changed but has no fentry site "
                                     "(notrace?): it cannot be patched; patch its callers")
    if not partial:
        diff.removed = [s.name for s in pair.old.listed("func") if s.ident not in pair.matched_old]
    diff.new_data = [s.label for s in pair.new.listed("data") if pair.counterpart(s) is None]
    for sym in pair.new.syms.values():
        old = pair.counterpart(sym)
        if old is not None and old.name != sym.name and not _COLD.match(sym.name):
            diff.renamed[sym.name] = old.name
    diff.warnings += _binding_hazards(pair, diff)
    if partial:
        diff.warnings += _uncarried_inlines(pair, plain, diff)
    for name in ("changed", "new", "removed", "new_data"):   # statics of one name in two files
        setattr(diff, name, sorted(set(getattr(diff, name))))
    return diff


def _reason(pair: "_Pair", plain: "_Pair", own_changes: dict[str, str], old: "_Sym", new: "_Sym") -> str:
    """Why new differs from old, in words (parts joined with '; ')."""
    inlined = pair.old.inlined_into(old) | pair.new.inlined_into(new)
    inline_notes = [f"inlines {own_changes[g]} {pair.kind_of_function(g)} {g} (inlined into it)"
                    for g in sorted(inlined & own_changes.keys())]
    if plain.same_code(new.ident):
        # Identical when nothing is inlined: the difference came in with inlining.
        if inline_notes:
            return "; ".join(inline_notes)
        only_old = sorted(pair.old.inlined_into(old) - pair.new.inlined_into(new))
        only_new = sorted(pair.new.inlined_into(new) - pair.old.inlined_into(old))
        if only_old or only_new:
            parts = [f"{g} is inlined only in the old build" for g in only_old]
            parts += [f"{g} is inlined only in the new build" for g in only_new]
            return "gcc inlines differently: " + ", ".join(parts)
        return ("code differs only through interprocedural optimisation "
                "(identical when compiled with -fno-inline)")
    return "; ".join(_code_notes(pair, old, new) + inline_notes)


def _code_notes(pair: "_Pair", old: "_Sym", new: "_Sym") -> list[str]:
    """What differs in the code and relocations of one function (and its .cold part)."""
    notes = []
    for off, _, target in new.relocs:
        sym = pair.new_only(target)
        if sym is not None and sym.kind == "func":
            verb = "calls" if off and new.body[off - 1] in _CALL_OR_JMP else "refers to"
            notes.append(f"{verb} new function {sym.name}")
        elif sym is not None:
            notes.append(f"uses new data: {sym.label}")
    aligned = (old.body == new.body and len(old.relocs) == len(new.relocs)
               and all(a[:2] == b[:2] for a, b in zip(old.relocs, new.relocs)))
    if aligned:
        for a, b in zip(old.relocs, new.relocs):
            ta, tb = pair.old.norm(a[2]), pair.new_norm(b[2])
            if ta != tb:
                notes.append(_describe_retarget(ta, tb))
    else:
        notes.append("code differs")
    if pair.children_differ(old, new):
        parts = ", ".join(sorted(c.name for c in new.children)) or "its .cold part"
        notes.append(f"its cold part {parts} differs")
    return list(dict.fromkeys(n for n in notes if n)) or ["code differs"]


def _describe_retarget(old_target: tuple, new_target: tuple) -> str | None:
    if old_target[0] == new_target[0] == "str":
        return (f"string literal {_quote(old_target[1])} becomes {_quote(new_target[1])} "
                "(a new literal in the patch, not a data change)")
    if new_target[0] == "sym" and new_target[1].startswith("+"):
        return None  # a new function or object: said already
    if old_target[0] == new_target[0] == "content":
        return "a table gcc made for it (switch table, constants) differs"
    return f"refers to {_target_text(new_target)} instead of {_target_text(old_target)}"


def _target_text(target: tuple) -> str:
    if target[0] == "sym":
        return f"{target[1].lstrip('+')}+{target[2]:#x}" if target[2] else target[1].lstrip("+")
    if target[0] == "str":
        return f"string {_quote(target[1])}"
    return "a compiler-made table"


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _quote(raw: bytes) -> str:
    """A string literal's bytes as C writes the literal: escapes for quotes,
    backslashes and what is not printable (a newline in a format string
    must not break the report's line)."""
    def one(ch: str) -> str:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:            # a byte that is not UTF-8
            return f"\\x{code - 0xDC00:02x}"
        if ch in _ESCAPES:
            return _ESCAPES[ch]
        if ch.isprintable():
            return ch
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return '"' + "".join(map(one, raw.decode("utf-8", "surrogateescape"))) + '"'


def _binding_hazards(pair: "_Pair", diff: Diff) -> list[str]:
    """Data that carried functions use whose ELF name does not denote the same
    object in the old build: a module bound to the old image by name (build_c's
    link_against) would use the wrong object or a fresh copy."""
    carried = [s for s in pair.new.listed("func") if s.name in diff.carry]
    warnings = []
    for handle in sorted(_referrers(carried), key=str):
        sym = pair.new.syms.get(handle)
        if sym is None or sym.kind != "data" or not sym.local:
            continue
        old = pair.counterpart(sym)
        namesake = next((o for o in pair.old.listed("data") if o.name == sym.name), None)
        if old is not None and old.name != sym.name:
            warnings.append(f"{sym.file}: {sym.label} is {sym.name} here but {old.name} in the old "
                            "build; binding it by name would miss the running copy")
        elif old is None and namesake is not None:
            warnings.append(f"{sym.file}: the new {sym.label} is named {sym.name}, as the old "
                            f"build's {namesake.label} is; binding it by name would share that one")
    return warnings


def _uncarried_inlines(pair: "_Pair", plain: "_Pair", diff: Diff) -> list[str]:
    """Base functions the partial patch does not define that inline a function it changes."""
    changed = set(plain.changed_bases()) | {_base_name(n) for n in diff.changed}
    warnings = []
    for sym in pair.old.listed("func"):
        if sym.ident in pair.matched_old:
            continue
        for g in sorted(pair.old.inlined_into(sym) & changed):
            warnings.append(f"{sym.file}: {g} is inlined into {sym.name}, which the patch does "
                            f"not carry: {sym.name} keeps the old {g}")
    return warnings


# -- data --------------------------------------------------------------------------


def _refuse_data_changes(pair: "_Pair") -> None:
    problems = _data_problems(pair)
    if problems:
        raise PatchError("\n".join(problems))


def _data_problems(pair: "_Pair", carried=None, diff: Diff | None = None) -> list[str]:
    """One line per existing data object whose size, layout, writability or
    initial value changes. carried(old, new): True when a changed initial
    value travels with the patch as its own copy (kernel objects: read-only
    data a changed function uses); then the function's reason says so."""
    problems = []
    for new in pair.new.listed("data"):
        old = pair.counterpart(new)
        if old is None:
            continue
        why = _data_change(pair, old, new)
        if not why:
            continue
        if carried is not None and old.size == new.size and why.startswith("changes its initial value"):
            user = carried(old, new)
            if user:
                if diff is not None:
                    diff.carried_data.append(new.name)
                    if user in diff.reasons:
                        diff.reasons[user] += (f"; uses {new.label}, whose initial value changes "
                                               "(read-only: the patch carries its own copy)")
                continue
            problems.append(f"{new.file}: changed section {new.section} not selected for inclusion: "
                            f"{new.label} changes its initial value and no changed function uses it")
            continue
        problems.append(f"{new.file}: {new.label} {why}")
    return problems


def _data_change(pair: "_Pair", old: "_Sym", new: "_Sym") -> str | None:
    """How new changes existing data old, or None when it does not."""
    if old.size != new.size:
        return f"changes its size from {old.size} to {new.size} bytes ({_NO_LAYOUT_CHANGE})"
    if old.layout and new.layout and old.layout[0] != new.layout[0]:
        return f"changes the layout of its type {new.layout[1]} ({_NO_LAYOUT_CHANGE})"
    if not old.writable and new.writable:
        return f"becomes writable; the running copy is read-only ({_NO_DATA_CHANGE})"
    old_init = (old.body or bytes(old.size), [(o, t, pair.old.norm(x)) for o, t, x in old.relocs])
    new_init = (new.body or bytes(new.size), [(o, t, pair.new_norm(x)) for o, t, x in new.relocs])
    if old_init != new_init:
        return f"changes its initial value ({_NO_DATA_CHANGE})"
    return None


# -- one side: its functions and data, named for correlation -----------------------------


def _base_name(name: str) -> str:
    """The source name of a symbol gcc may have renamed: foo.constprop.0 -> foo."""
    return name.split(".", 1)[0]


@dataclass(eq=False)
class _Sym:
    """A function or data object one side defines."""

    handle: tuple            # (object index, name) for locals, (None, name) for globals
    obj: int                 # index of the object (source) that defines it
    name: str                # the ELF name
    file: str                # source basename
    local: bool
    kind: str                # "func" or "data"
    body: bytes | None       # code or initial bytes; None: zero-initialised
    size: int
    relocs: tuple            # ((offset, type, target), ...)
    writable: bool = False
    layout: tuple[str, str] | None = None   # (type signature, type name) from DWARF
    ident: str = ""          # identity for correlation
    loose: str = ""          # second-chance identity: ident without gcc's numbers
    label: str = ""          # "global 'limit'", "static local 'count' in function f"
    shared_name: bool = False  # another file of the same side has a static of this name
    children: list = field(default_factory=list)   # .cold and .part parts of a function
    parent: "_Sym | None" = None
    section: str = ""        # the ELF section that holds it
    bind: str = ""           # STB_LOCAL, STB_GLOBAL or STB_WEAK
    fentry: bool = False     # starts with the fentry NOP or `call __fentry__`
    extras: tuple = ()       # alternatives that replace its instructions: ((offset, target), ...)
    tables: tuple = ()       # kernel objects: contents of the switch tables it uses (not compared)


class _Side:
    """The functions and data objects of one side's objects, with identities."""

    def __init__(self, objects, *, dwarf: bool = True, kernel: bool = False):
        self.syms: dict[tuple, _Sym] = {}
        self.dwarf = _Dwarf()
        readers = [_ObjectReader(data, name, i, dwarf=dwarf, kernel=kernel)
                   for i, (name, data) in enumerate(objects)]
        # KPATCH_IGNORE_FUNCTION: functions that are never compared
        self.ignored_functions = frozenset().union(*(r.ignored_functions for r in readers))
        self.section_names = frozenset(sec.name for r in readers for sec in r.sections)
        # EXPORT_SYMBOL's tables, compared whole (kernel objects)
        self.export_tables = {name: b"".join(sec.data() for r in readers for sec in r.sections
                                             if sec.name == name and sec["sh_type"] != "SHT_NOBITS")
                              for name in kernel_rules.EXPORT_TABLES
                              if any(sec.name == name for r in readers for sec in r.sections)}
        for r in readers:
            for sym in r.symbols():
                self.syms[sym.handle] = sym
            self.dwarf.merge(r.dwarf)
        self._attach_cold_parts()
        self._name_static_locals(readers)
        self._assign_idents()
        self.by_ident = {s.ident: s for s in self.syms.values()}

    def listed(self, kind: str) -> list[_Sym]:
        """Functions (not .cold parts) or data objects."""
        return [s for s in self.syms.values() if s.kind == kind and s.parent is None]

    def norm(self, target: tuple) -> tuple:
        """A relocation target in terms of this side's identities."""
        return _map_target(target, self.ident_of)

    def ident_of(self, handle: tuple) -> str:
        sym = self.syms.get(handle)
        return sym.ident if sym is not None else handle[1]   # undefined: its global name

    def inlined_into(self, sym: _Sym) -> set[str]:
        return set(self.dwarf.inlines.get(_base_name(sym.name), ()))

    def _attach_cold_parts(self) -> None:
        for sym in self.syms.values():
            m = _COLD.match(sym.name)
            if sym.kind != "func" or not m:
                continue
            parent = (self.syms.get((sym.handle[0], m["parent"]))
                      or self.syms.get((None, m["parent"])))
            if parent is not None and parent.kind == "func":
                sym.parent = parent
                parent.children.append(sym)

    def _name_static_locals(self, readers) -> None:
        """Label each data object; a static local (count.3) by its declaring function."""
        referrers = _referrers(self.syms.values())
        for sym in self.syms.values():
            if sym.kind != "data":
                continue
            m = _STATIC_LOCAL.match(sym.name)
            if not (sym.local and m):
                sym.label = f"{'static' if sym.local else 'global'} '{sym.name}'"
                sym.layout = readers[sym.obj].dwarf.layouts.get((None, sym.name))
                continue
            dwarf = readers[sym.obj].dwarf
            owner = self._owner(m["base"], dwarf, referrers.get(sym.handle, set()))
            sym.label = f"static local '{m['base']}' in function {owner}"
            sym.ident = f"{m['base']}@{owner}"
            sym.layout = dwarf.layouts.get((owner, m["base"]))

    def _owner(self, var: str, dwarf: "_Dwarf", users: set[str]) -> str:
        """The function declaring static local var: DWARF's declarers, narrowed to
        the functions whose code (or inlined code) uses the object."""
        declarers = dwarf.static_locals.get(var, set())
        if len(declarers) == 1:
            return next(iter(declarers))
        reach = set(users)
        for u in users:
            reach |= dwarf.inlines.get(u, set())
        both = declarers & reach
        if len(both) == 1:
            return next(iter(both))
        return ", ".join(sorted(users)) or "?"

    def _assign_idents(self) -> None:
        for sym in self.syms.values():
            sym.ident = sym.ident or sym.name
            sym.loose = _NUMBERS.sub("", sym.ident)
        counts: dict[str, int] = {}
        for sym in self.syms.values():
            counts[sym.ident] = counts.get(sym.ident, 0) + 1
        for sym in self.syms.values():
            if counts[sym.ident] > 1:   # statics of one name in several files, or two count.N in f
                sym.ident = f"{sym.ident}@{sym.file}#{sym.obj}:{sym.name}"
                sym.shared_name = True


def _referrers(syms) -> dict[tuple, set[str]]:
    """handle -> source names of the functions whose code refers to it."""
    out: dict[tuple, set[str]] = {}

    def visit(relocs, user):
        for _, _, t in relocs:
            if t[0] == "sym":
                out.setdefault(t[1], set()).add(user)
            elif t[0] == "content":
                visit(t[3], user)

    for sym in syms:
        if sym.kind == "func":
            visit(sym.relocs, _base_name(sym.name))
    return out


def _map_target(target: tuple, ident_of) -> tuple:
    if target[0] == "sym":
        return ("sym", ident_of(target[1]), target[2])
    if target[0] == "content":
        kind, off, raw, relocs = target
        return (kind, off, raw, tuple((o, t, _map_target(x, ident_of)) for o, t, x in relocs))
    return target


# -- the two sides, correlated -----------------------------------------------------------


class _Pair:
    """An old and a new side with each new symbol matched to its old self."""

    def __init__(self, old: _Side, new: _Side):
        self.old, self.new = old, new
        self.match: dict[str, str] = {}     # new ident -> old ident
        self._correlate()
        self.matched_old = set(self.match.values())

    def counterpart(self, sym: _Sym) -> _Sym | None:
        ident = self.match.get(sym.ident)
        return self.old.by_ident[ident] if ident is not None else None

    def new_norm(self, target: tuple) -> tuple:
        """A new-side relocation target in old-side identities ('+name': new only)."""
        return _map_target(target, self._new_ident)

    def _new_ident(self, handle: tuple) -> str:
        sym = self.new.syms.get(handle)
        if sym is None:
            return handle[1]
        return self.match.get(sym.ident, "+" + sym.ident)

    def own(self, sym: _Sym, side: str) -> tuple:
        """(code, relocations, alternatives) of sym itself, targets in old-side identities."""
        norm = self.old.norm if side == "old" else self.new_norm
        return (sym.body, tuple((o, t, norm(x)) for o, t, x in sym.relocs),
                tuple((o, norm(x)) for o, x in sym.extras))

    def signature(self, sym: _Sym, side: str) -> tuple:
        children = tuple(self.signature(c, side) for c in sorted(sym.children, key=lambda c: c.loose))
        return self.own(sym, side), children

    def own_differs(self, old: _Sym, new: _Sym) -> bool:
        """True when the code of old and new differs by more than a moved __LINE__
        (kernel_rules.line_macro_change_only)."""
        a, b = self.own(old, "old"), self.own(new, "new")
        if a == b:
            return False
        if a[1:] != b[1:] or a[0] is None or b[0] is None:
            return True
        return not kernel_rules.line_macro_change_only(a[0], b[0], [(o, x) for o, _, x in b[1]])

    def differs(self, old: _Sym, new: _Sym) -> bool:
        return self.own_differs(old, new) or self.children_differ(old, new)

    def child_pairs(self, old: _Sym, new: _Sym) -> list[tuple[_Sym, _Sym]]:
        """old's and new's .cold and .part children, paired by name without numbers."""
        return list(zip(sorted(old.children, key=lambda c: c.loose),
                        sorted(new.children, key=lambda c: c.loose)))

    def children_differ(self, old: _Sym, new: _Sym) -> bool:
        olds = sorted(old.children, key=lambda c: c.loose)
        news = sorted(new.children, key=lambda c: c.loose)
        return len(olds) != len(news) or any(self.differs(o, n) for o, n in zip(olds, news))

    def same_code(self, ident: str) -> bool:
        """True when the function called ident exists on both sides and does not differ."""
        new = self.new.by_ident.get(ident)
        old = self.counterpart(new) if new is not None else None
        return old is not None and not self.differs(old, new)

    def changed_bases(self) -> dict[str, str]:
        """Source name -> "changed" or "new", for functions that differ or are new
        (a clone counts as its origin; "changed" wins)."""
        out: dict[str, str] = {}
        for sym in self.new.listed("func"):
            old = self.counterpart(sym)
            if old is None:
                out.setdefault(_base_name(sym.name), "new")
            elif self.differs(old, sym):
                out[_base_name(sym.name)] = "changed"
        return out

    def new_only(self, target: tuple) -> _Sym | None:
        """The function (a .cold part: its parent) or data object that target
        refers to when only the new side has it, else None."""
        if target[0] != "sym":
            return None
        sym = self.new.syms.get(target[1])
        if sym is None or sym.ident in self.match:
            return None
        return sym.parent or sym

    def kind_of_function(self, name: str) -> str:
        static = name in self.old.dwarf.statics or name in self.new.dwarf.statics
        return "static function" if static else "function"

    def _correlate(self) -> None:
        """Names without gcc's numbers match by name. Numbered names (clones,
        static locals that share a name and function) are paired within their
        group of the same name without numbers: a single candidate each; else the
        one with identical contents, then the same name, then the same file."""
        for ident, sym in self.new.by_ident.items():
            old = self.old.by_ident.get(ident)
            if old is not None and old.kind == sym.kind and ident == sym.loose:
                self.match[ident] = ident
        groups: dict[tuple, tuple[list, list]] = {}
        taken = set(self.match.values())
        for sym in self.old.syms.values():
            if sym.ident not in taken:
                groups.setdefault((sym.kind, sym.loose), ([], []))[0].append(sym)
        for sym in self.new.syms.values():
            if sym.ident not in self.match:
                groups.setdefault((sym.kind, sym.loose), ([], []))[1].append(sym)
        for olds, news in groups.values():
            self._pair_group(olds, news)

    def _pair_group(self, olds: list[_Sym], news: list[_Sym]) -> None:
        if len(olds) == 1 and len(news) == 1:
            self.match[news[0].ident] = olds[0].ident
            return
        for rule in (lambda o, n: self.signature(o, "old") == self.signature(n, "new"),
                     lambda o, n: o.name == n.name,
                     lambda o, n: o.file == n.file):
            for n in list(news):
                candidates = [o for o in olds if rule(o, n)]
                if len(candidates) == 1:
                    self.match[n.ident] = candidates[0].ident
                    olds.remove(candidates[0])
                    news.remove(n)
        if len(olds) == 1 and len(news) == 1:
            self.match[news[0].ident] = olds[0].ident
            return
        plain = [n for n in news if "." not in n.name]
        if plain and olds:
            files = ", ".join(sorted({o.file for o in olds}))
            raise PatchError(f"{plain[0].file}: {plain[0].name} is ambiguous: the old sources define "
                             f"{len(olds)} of them ({files}); name the patch file after the one it "
                             "changes")


# -- reading one object file -------------------------------------------------------------


class _ObjectReader:
    """The functions and data objects of one relocatable object, with resolved relocations."""

    def __init__(self, data: bytes, file: str, index: int, *, dwarf: bool = True, kernel: bool = False):
        self.file, self.index = file, index
        # kernel: compare as the kernel tools do (a switch table by its name)
        self.kernel = kernel
        self.elf = ELFFile(io.BytesIO(data))
        self.sections = list(self.elf.iter_sections())
        symtab = symbol_table(self.elf)
        if symtab is None:
            raise BuildError(f"{file}: the object has no symbol table")
        self.symtab = list(symtab.iter_symbols())
        self.relocs: dict[int, list[tuple[int, int, int, int]]] = {}
        for sec in self.sections:
            # relocations of debug info are never compared (and are most of a -g object's)
            if sec["sh_type"] == "SHT_RELA" and (
                    dwarf or self.sections[sec["sh_info"]]["sh_flags"] & SH_FLAGS.SHF_ALLOC):
                self.relocs[sec["sh_info"]] = sorted(
                    (r["r_offset"], r["r_info_type"], r["r_info_sym"], r["r_addend"])
                    for r in sec.iter_relocations())
        self.by_section: dict[int, list] = {}
        for s in self.symtab:
            named = s.name and s["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT")
            if named and isinstance(s["st_shndx"], int):
                self.by_section.setdefault(s["st_shndx"], []).append(
                    (s["st_value"], s["st_value"] + s["st_size"], s))
        self._insns: dict[int, list[tuple[int, int]]] = {}
        try:
            self.dwarf = _read_dwarf(self.elf) if dwarf else _Dwarf()
        except PARSE_ERRORS as exc:
            # without it no data layout can be compared: refused, never skipped
            raise BuildError(f"{file}: its debug information (-g) cannot be read ({exc}); a thread-local "
                             f"variable's, for one") from None
        self.ignored_sections = self._named_by(kernel_rules.IGNORE_SECTIONS_SECTION, strings=True)
        self.ignored_functions = self._named_by(kernel_rules.IGNORE_FUNCTIONS_SECTION, strings=False)
        self.alternatives = self._alternatives()

    def _named_by(self, marker: str, *, strings: bool) -> frozenset:
        """Section names (the strings) or symbol names a marker section refers to
        (KPATCH_IGNORE_SECTION, KPATCH_IGNORE_FUNCTION)."""
        names = set()
        for shndx, sec in enumerate(self.sections):
            if sec.name != marker:
                continue
            for _, _, symidx, addend in self.relocs.get(shndx, ()):
                s = self.symtab[symidx]
                target = s["st_shndx"]
                if strings and isinstance(target, int):
                    data = self.sections[target].data()
                    where = s["st_value"] + addend
                    end = data.find(b"\0", where)
                    names.add(data[where:end if end >= 0 else len(data)].decode(errors="replace"))
                elif not strings:
                    sym = self._covering(target, s["st_value"] + addend) if (
                        s["st_info"]["type"] == "STT_SECTION" and isinstance(target, int)) else s
                    if sym is not None and sym.name:
                        names.add(sym.name)
        return frozenset(names)

    def _alternatives(self) -> dict[int, list[tuple[int, int, int]]]:
        """Text section index -> [(offset of the original instruction, start and
        end of its replacement in .altinstr_replacement)], from the
        relocations of .altinstructions (each entry: instruction, then
        replacement; a replacement ends where the next one starts)."""
        alt = next((i for i, s in enumerate(self.sections) if s.name == ".altinstructions"), None)
        repl = next((i for i, s in enumerate(self.sections) if s.name == ".altinstr_replacement"), None)
        if alt is None or repl is None:
            return {}
        pairs = []
        pending = None
        for _, _, symidx, addend in self.relocs.get(alt, ()):
            s = self.symtab[symidx]
            shndx = s["st_shndx"]
            if not isinstance(shndx, int):
                pending = None
                continue
            where = s["st_value"] + addend
            if shndx == repl and pending is not None:
                pairs.append((pending[0], pending[1], where))
                pending = None
            elif shndx != repl:
                pending = (shndx, where)
        starts = sorted({r for _, _, r in pairs} | {self.sections[repl]["sh_size"]})
        out: dict[int, list[tuple[int, int, int]]] = {}
        for shndx, where, r in pairs:
            end = next(x for x in starts if x > r) if any(x > r for x in starts) else r
            out.setdefault(shndx, []).append((where, r, end))
        return out

    def symbols(self) -> list[_Sym]:
        out = []
        for s in self.symtab:
            sym = self._symbol(s)
            if sym is not None:
                out.append(sym)
        return out

    def _handle(self, s) -> tuple:
        return (self.index if s["st_info"]["bind"] == "STB_LOCAL" else None, s.name)

    def _symbol(self, s) -> _Sym | None:
        typ, shndx, size = s["st_info"]["type"], s["st_shndx"], s["st_size"]
        if not s.name or _GENERATED.match(s.name):
            return None
        section = self.sections[shndx].name if isinstance(shndx, int) else ""
        if section and (kernel_rules.is_ignored_section(section, self.ignored_sections)
                        or (typ == "STT_OBJECT" and (kernel_rules.special_section_kind(section)
                                                     or kernel_rules.special_static_kind(s.name, section)))):
            return None     # metadata, markers and special statics: never compared as data
        if typ == "STT_FUNC" and kernel_rules.is_prefix_function(s.name):
            return None     # padding in front of a function, part of no function
        local = s["st_info"]["bind"] == "STB_LOCAL"
        if shndx == "SHN_COMMON" and typ == "STT_OBJECT":
            return _Sym(self._handle(s), self.index, s.name, self.file, local, "data", None, size, (),
                        writable=True)
        if not isinstance(shndx, int):
            return None
        sec = self.sections[shndx]
        flags = sec["sh_flags"]
        code = bool(flags & SH_FLAGS.SHF_EXECINSTR)
        if typ == "STT_FUNC" and code and size:
            kind = "func"
        elif typ == "STT_OBJECT" and flags & SH_FLAGS.SHF_ALLOC and not code:
            kind = "data"
        else:
            return None
        start = s["st_value"]
        body = None if sec["sh_type"] == "SHT_NOBITS" else sec.data()[start:start + size]
        relocs = self._relocs_in(shndx, start, start + size, frozenset({shndx}))
        extras = tables = ()
        if kind == "func":
            extras = tuple(self._replacement(where - start, r, end)
                           for where, r, end in self.alternatives.get(shndx, ()) if start <= where < start + size)
            if self.kernel:
                tables = self._switch_tables(shndx, start, start + size)
        return _Sym(self._handle(s), self.index, s.name, self.file, local, kind, body, size, relocs,
                    writable=bool(flags & SH_FLAGS.SHF_WRITE), section=sec.name,
                    fentry=kind == "func" and self._has_fentry(body or b"", relocs), extras=extras,
                    tables=tables, bind=s["st_info"]["bind"])

    def _switch_tables(self, shndx: int, start: int, end: int) -> tuple:
        """The contents of the switch tables (CSWTCH.N) the code in [start, end)
        refers to, in order: what the kernel tools leave uncompared."""
        out = []
        for off, typ, symidx, addend in self.relocs.get(shndx, ()):
            if not start <= off < end:
                continue
            s = self.symtab[symidx]
            target = s["st_shndx"]
            if not isinstance(target, int):
                continue
            if s["st_info"]["type"] == "STT_SECTION":
                s = self._covering(target, addend + self._pc_correction(shndx, off, typ))
            if s is not None and kernel_rules.is_switch_table(s.name):
                data = self.sections[target]
                lo = s["st_value"]
                raw = b"" if data["sh_type"] == "SHT_NOBITS" else data.data()[lo:lo + s["st_size"]]
                out.append(raw)
        return tuple(out)

    def _replacement(self, offset: int, lo: int, hi: int) -> tuple:
        """An alternative of the instruction at offset: its replacement's code and relocations."""
        repl = next(i for i, s in enumerate(self.sections) if s.name == ".altinstr_replacement")
        return (offset, self._content(repl, lo, hi, lo, frozenset()))

    @staticmethod
    def _has_fentry(body: bytes, relocs: tuple) -> bool:
        """The fentry NOP, or `call __fentry__`, first (after an endbr64)."""
        if fentry_site(0, body) is not None:
            return True
        at = 4 if body[:4] == ENDBR64 else 0
        return body[at:at + 1] == b"\xe8" and any(
            off == at + 1 and t[0] == "sym" and t[1][1] in kernel_rules.FENTRY_CALL_TARGETS for off, _, t in relocs)

    def _relocs_in(self, shndx: int, start: int, end: int, seen: frozenset) -> tuple:
        """((offset from start, type, target), ...) for the relocations in [start, end)."""
        out = []
        for off, typ, symidx, addend in self.relocs.get(shndx, ()):
            if start <= off < end:
                where = addend + self._pc_correction(shndx, off, typ)
                out.append((off - start, typ, self._target(symidx, where, seen)))
        return tuple(out)

    def _pc_correction(self, shndx: int, off: int, typ: int) -> int:
        """For a PC-relative field in code, the distance to the end of its instruction
        (what the CPU adds): addend + this is the offset into the target."""
        if typ not in _PC_RELATIVE or not self.sections[shndx]["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
            return 0
        insns = self._insns.get(shndx)
        if insns is None:
            insns = kernel_rules.decode(self.sections[shndx].data())
            self._insns[shndx] = insns
        for a, b in insns:
            if a <= off < b:
                return b - off
        raise BuildError(f"{self.file}: cannot decode the instruction holding the relocation at "
                         f"{self.sections[shndx].name}+{off:#x}")

    def _special(self, name: str, shndx) -> tuple | None:
        """("special", kind) for a special static or a table the kernel tools
        rebuild: equal to any other of its kind, whatever its number or contents."""
        if not isinstance(shndx, int):
            return None
        section = self.sections[shndx].name
        if section == kernel_rules.ALTINSTR_AUX:
            return ("special", section)
        if self.kernel and kernel_rules.is_switch_table(name):
            return ("special", "CSWTCH")
        kind = kernel_rules.special_static_kind(name, section)
        if kind is None and not self.sections[shndx]["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
            kind = kernel_rules.special_section_kind(section)
        return ("special", kind) if kind else None

    def _target(self, symidx: int, where: int, seen: frozenset) -> tuple:
        s = self.symtab[symidx]
        shndx = s["st_shndx"]
        special = self._special("" if s["st_info"]["type"] == "STT_SECTION" else s.name, shndx)
        if special is not None:
            return special
        if s["st_info"]["type"] == "STT_SECTION":
            if not isinstance(shndx, int) or not 0 < shndx < len(self.sections):
                # a section symbol of no section (SHN_UNDEF, SHN_ABS, an index
                # past the table): pyelftools names the special ones with strings
                raise BuildError(f"{self.file}: a relocation refers to section symbol {symidx}, which names no "
                                 f"section (st_shndx {shndx})")
            return self._section_target(shndx, where, seen)
        if not isinstance(shndx, int) or not _GENERATED.match(s.name):
            return ("sym", self._handle(s), where)
        return self._content(shndx, s["st_value"], s["st_value"] + s["st_size"], where, seen)

    def _section_target(self, shndx: int, where: int, seen: frozenset) -> tuple:
        """What section + where denotes: a symbol there, a string, or anonymous contents."""
        sec = self.sections[shndx]
        sym = self._covering(shndx, where)
        special = self._special(sym.name, shndx) if sym is not None else None
        if special is not None:
            return special
        if sym is not None:
            if _GENERATED.match(sym.name):
                lo = sym["st_value"]
                return self._content(shndx, lo, lo + sym["st_size"], where, seen)
            return ("sym", self._handle(sym), where - sym["st_value"])
        data = b"" if sec["sh_type"] == "SHT_NOBITS" else sec.data()
        if sec["sh_flags"] & SH_FLAGS.SHF_STRINGS:
            end = data.find(b"\0", where)
            return ("str", data[where:end if end >= 0 else len(data)])
        entsize = sec["sh_entsize"]
        if sec["sh_flags"] & SH_FLAGS.SHF_MERGE and entsize:
            lo = where - where % entsize
            return self._content(shndx, lo, lo + entsize, where, seen)
        return self._content(shndx, 0, sec["sh_size"], where, seen)

    def _covering(self, shndx: int, where: int):
        """The symbol of the section that holds offset where (or ends there)."""
        syms = self.by_section.get(shndx, [])
        inside = [s for lo, hi, s in syms if lo <= where < max(hi, lo + 1)]
        inside = inside or [s for _, hi, s in syms if hi == where]
        inside.sort(key=lambda s: (bool(_GENERATED.match(s.name)), s["st_info"]["bind"] == "STB_LOCAL",
                                   "." in s.name, s.name))
        return inside[0] if inside else None

    def _content(self, shndx: int, lo: int, hi: int, where: int, seen: frozenset) -> tuple:
        """("content", offset into it, bytes, relocations): a table known by what it holds."""
        if shndx in seen:
            return ("content", where - lo, b"<cycle>", ())
        sec = self.sections[shndx]
        raw = bytes(hi - lo) if sec["sh_type"] == "SHT_NOBITS" else sec.data()[lo:hi]
        return ("content", where - lo, raw, self._relocs_in(shndx, lo, hi, seen | {shndx}))


# -- DWARF: inlining, static locals, data layout ---------------------------------------------


@dataclass
class _Dwarf:
    """What -g says about one side."""

    inlines: dict[str, set[str]] = field(default_factory=dict)  # function -> functions inlined into it
    statics: set[str] = field(default_factory=set)              # functions with internal linkage
    static_locals: dict[str, set[str]] = field(default_factory=dict)  # variable -> declaring functions
    # (declaring function or None, variable) -> (type signature, type name)
    layouts: dict[tuple, tuple[str, str]] = field(default_factory=dict)

    def merge(self, other: "_Dwarf") -> None:
        for name, names in other.inlines.items():
            self.inlines.setdefault(name, set()).update(names)
        self.statics |= other.statics
        for name, funcs in other.static_locals.items():
            self.static_locals.setdefault(name, set()).update(funcs)
        self.layouts.update(other.layouts)


def _read_dwarf(elf: ELFFile) -> _Dwarf:
    facts = _Dwarf()
    if elf.get_section_by_name(".debug_info") is None:   # the -fno-inline compile has none
        return facts
    for cu in elf.get_dwarf_info().iter_CUs():
        for die in cu.get_top_DIE().iter_children():
            if die.tag == "DW_TAG_subprogram":
                _read_subprogram(die, facts)
            elif die.tag == "DW_TAG_variable" and _is_static_storage(die):
                name = _die_name(die)
                if name:
                    facts.layouts[(None, name)] = _layout(die)
    return facts


def _read_subprogram(die, facts: _Dwarf) -> None:
    name = _die_name(die)
    if not name:
        return
    if _attr(die, "DW_AT_external") is None:
        facts.statics.add(name)
    concrete = "DW_AT_low_pc" in die.attributes or "DW_AT_ranges" in die.attributes
    for child in _descendants(die):
        if child.tag == "DW_TAG_inlined_subroutine" and concrete:
            inlined = _die_name(child)
            if inlined:
                facts.inlines.setdefault(name, set()).add(inlined)
        elif child.tag == "DW_TAG_variable" and _is_static_storage(child):
            var = _die_name(child)
            if var:
                facts.static_locals.setdefault(var, set()).add(name)
                facts.layouts[(name, var)] = _layout(child)


def _descendants(die):
    for child in die.iter_children():
        yield child
        yield from _descendants(child)


def _is_static_storage(die) -> bool:
    """A variable with a fixed address: DW_AT_location is DW_OP_addr."""
    loc = die.attributes.get("DW_AT_location")
    value = loc.value if loc is not None else None
    return isinstance(value, list) and bool(value) and value[0] == _DW_OP_ADDR


def _attr(die, name: str, depth: int = 0):
    """An attribute of die, or of the DIE it is a concrete instance or definition of."""
    if name in die.attributes:
        return die.attributes[name].value
    for link in ("DW_AT_abstract_origin", "DW_AT_specification"):
        if link in die.attributes and depth < 8:
            return _attr(die.get_DIE_from_attribute(link), name, depth + 1)
    return None


def _die_name(die) -> str | None:
    raw = _attr(die, "DW_AT_name")
    return raw.decode() if isinstance(raw, bytes) else raw


def _type_of(die, depth: int = 0):
    """The DIE of die's type (through its abstract origin or specification), or None."""
    if "DW_AT_type" in die.attributes:
        return die.get_DIE_from_attribute("DW_AT_type")
    for link in ("DW_AT_abstract_origin", "DW_AT_specification"):
        if link in die.attributes and depth < 8:
            return _type_of(die.get_DIE_from_attribute(link), depth + 1)
    return None


def _layout(var_die) -> tuple[str, str]:
    t = _type_of(var_die)
    return _type_signature(t), _type_name(t)


def _type_name(die) -> str:
    if die is None:
        return "void"
    prefix = {"DW_TAG_structure_type": "struct ", "DW_TAG_union_type": "union ",
              "DW_TAG_enumeration_type": "enum "}.get(die.tag, "")
    name = _die_name(die)
    if name:
        return prefix + name
    if die.tag == "DW_TAG_array_type":
        return _type_name(_type_of(die)) + "[]"
    if die.tag in ("DW_TAG_const_type", "DW_TAG_volatile_type"):
        return _type_name(_type_of(die))
    return prefix.strip() or die.tag.removeprefix("DW_TAG_")


def _type_signature(die, depth: int = 0) -> str:
    """The memory layout a type describes: sizes, offsets and scalar kinds, not names
    (renaming a member does not move data); pointers are not followed (the pointee
    is another object)."""
    if die is None:
        return "void"
    if depth > 32:
        return "..."
    tag = die.tag.removeprefix("DW_TAG_")
    inner = lambda d: _type_signature(_type_of(d), depth + 1)   # noqa: E731
    size = die.attributes["DW_AT_byte_size"].value if "DW_AT_byte_size" in die.attributes else "?"
    if tag == "typedef":
        return inner(die)
    if tag in ("const_type", "volatile_type", "restrict_type", "atomic_type"):
        return f"{tag[:-5]} {inner(die)}"
    if tag == "pointer_type":
        return f"ptr/{size}"
    if tag == "base_type":
        return f"{_die_name(die)}/{size}"
    if tag == "enumeration_type":
        return f"enum/{size}"
    if tag in ("structure_type", "union_type"):
        members = []
        for m in die.iter_children():
            if m.tag == "DW_TAG_member":
                where = {k.removeprefix("DW_AT_"): m.attributes[k].value for k in _MEMBER_PLACE
                         if k in m.attributes}
                members.append(f"{where}:{inner(m)}")
        return f"{tag[:-5]}/{size}{{{','.join(members)}}}"
    if tag == "array_type":
        dims = []
        for sub in die.iter_children():
            if sub.tag == "DW_TAG_subrange_type":
                a = sub.attributes
                dims.append(a["DW_AT_count"].value if "DW_AT_count" in a else
                            a["DW_AT_upper_bound"].value + 1 if "DW_AT_upper_bound" in a else "")
        return f"{inner(die)}{''.join(f'[{d}]' for d in dims)}"
    return tag
