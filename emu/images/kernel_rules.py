"""The rules the kernel's patch builders apply when they compare two objects.

kpatch-build's create-diff-object and klp-build's `objtool klp diff` compare an
original and a patched object compiled with -ffunction-sections
-fdata-sections. Real kernel objects carry things that change with every
edit of the file without changing what any function does; these rules say
which, so that emu/images/diff.py compares what matters:

- Special static locals (`is_special_static` in create-diff-object,
  `is_uncorrelated_static_local` in klp-diff): lockdep keys, WARN flags,
  `__func__`, ratelimit states, printk-index entries, dynamic-debug
  descriptors, everything in `.data..once` and `__dyndbg`. Their names carry
  gcc's counters and their contents carry line numbers; a reference to one is
  equal to a reference to another of the same kind, and they are never
  refused as changed data nor counted as new data.
- Special sections: tables that describe code (bug table, exception table,
  jump labels, static calls, alternatives, printk index, mcount and patchable
  entry records, return/call sites, ORC, .discard.*). The kernel tools rebuild
  them from the functions they carry; their contents are never compared and
  their objects are never data a patch changes. References into
  `.altinstr_aux` compare equal whatever their offset (create-diff-object's
  rela_equal).
- A function whose only difference is the immediate loaded into %esi or %edx
  (the `__LINE__` argument) before a call to a WARN or might_sleep helper did
  not change (create-diff-object's kpatch_line_macro_change_only).
- Both fentry forms: `call __fentry__` (with its relocation) as gcc emits it
  with -mrecord-mcount and without -mnop-mcount, and the 5-byte NOP the
  kernel turns it into at boot.
- gcc's switch tables (`CSWTCH.N`) are special statics too: a reference to
  one equals a reference to another whatever the tables hold
  (create-diff-object's is_special_static and rela_equal, klp-diff's
  is_uncorrelated_static_local). A function whose only change is the
  contents of its table is not changed to the kernel tools.
- Changed data: create-diff-object refuses a changed data object unless a
  changed function includes it and its section is not `.data*`/`.bss*`
  (kpatch_verify_patchability): changed read-only data travels with the
  changed function that uses it, as the patch's own copy.
- A new data object in a section it shares with the original's data
  (`__read_mostly`, per-CPU, ...) changes that section: refused unless a
  changed function includes it and it is not `.data*`/`.bss*`.
- The export tables (`__ksymtab_strings`, `.export_symbol` since 6.5) are
  compared: an export added or removed while the file keeps others changes
  them, and no function carries them ("changed section ... not selected for
  inclusion").
- Static locals are correlated by the functions that refer to them
  (kpatch_correlate_static_local_variables): a reference the original has
  and the patched object lost is refused.
- Init code (`.init.text`, `__init`) has run and been freed: a change to it
  cannot be patched. Functions named by KPATCH_IGNORE_FUNCTION and sections
  named by KPATCH_IGNORE_SECTION are not compared.
"""

from __future__ import annotations

import re

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

__all__ = ["FENTRY_CALL_TARGETS", "WARN_FUNCTIONS", "special_static_kind", "special_section_kind",
           "is_init_section", "is_ignored_section", "subsection", "line_macro_change_only",
           "decode", "is_prefix_function", "own_section", "is_switch_table", "carries_changed_data",
           "own_data_section",
           "IGNORE_FUNCTIONS_SECTION", "IGNORE_SECTIONS_SECTION", "ALTINSTR_AUX", "EXPORT_TABLES"]

FENTRY_CALL_TARGETS = frozenset({"__fentry__", "mcount", "__mcount"})

# Helpers whose arguments include __LINE__ (create-diff-object's list, with
# the names newer kernels use: _printk since 5.15, __might_resched since 5.16;
# kpatch added _printk and btrfs's three in its PR #1254).
WARN_FUNCTIONS = frozenset({"__warn_printk", "__might_sleep", "___might_sleep", "__might_resched",
                            "__might_fault", "printk", "_printk", "lockdep_rcu_suspicious",
                            "__btrfs_abort_transaction", "__btrfs_handle_fs_error", "__btrfs_panic"})
_WARN_PREFIX = "warn_slowpath_"

# Static locals that are never correlated: name (gcc: "name.N", clang:
# "function.name") -> what they are.
_SPECIAL_STATICS = ("__key", "__warned", "__already_done", "__func__", "__FUNCTION__", "_rs",
                    "_entry", "_entry_ptr", "descriptor")
_UNIQUE_DDEBUG = re.compile(r"^__UNIQUE_ID_ddebug\d+(\.\d+)?$")

# Sections whose objects are special whatever their names.
_SPECIAL_DATA_SECTIONS = {"__dyndbg": "dynamic-debug descriptor", "__verbose": "dynamic-debug descriptor",
                          ".data..once": "once flag", ".data.once": "once flag",
                          ".data.unlikely": "once flag"}
_UBSAN = re.compile(r"^\.data\.\.L(ubsan|__unnamed)")

# Tables that describe code: rebuilt by the kernel tools, never compared.
_SPECIAL_SECTIONS = frozenset({
    "__bug_table", "__ex_table", "__jump_table", ".static_call_sites", ".static_call_tramp_key",
    ".altinstructions", ".altinstr_replacement", ".altinstr_aux", ".smp_locks", ".parainstructions",
    ".printk_index", "__mcount_loc", "__patchable_function_entries", ".return_sites", ".call_sites",
    ".retpoline_sites", ".ibt_endbr_seal", ".orc_unwind", ".orc_unwind_ip", "__tracepoints_ptrs",
    "__tracepoints_strings", ".fixup", ".kcfi_traps", ".cfi_sites", ".modinfo", "__versions",
    ".gnu.linkonce.this_module", "__ksymtab_strings", ".export_symbol", "__param", "__modver",
    ".note.gnu.property", ".note.GNU-stack", ".comment", ".eh_frame", ".llvm_addrsig",
    "_ftrace_events", "_ftrace_eval_map", "__bpf_raw_tp_map", "__kcrctab", "__kcrctab_gpl",
    ".static_call.text", "__ex_table", "__dbe_table", ".kunit_test_suites",
})
_SPECIAL_PREFIXES = (".discard", ".kpatch", "__ksymtab", "___ksymtab", ".initcall", "__setup",
                     ".con_initcall", ".debug_", ".rela", ".note", ".BTF", "__ex_table",
                     ".klp.", "__klp")
ALTINSTR_AUX = ".altinstr_aux"
# EXPORT_SYMBOL's tables: create-diff-object never includes them for a function
EXPORT_TABLES = ("__ksymtab_strings", ".export_symbol")
IGNORE_FUNCTIONS_SECTION = ".kpatch.ignore.functions"
IGNORE_SECTIONS_SECTION = ".kpatch.ignore.sections"

# Padding and CFI prefixes in front of functions (CONFIG_CALL_PADDING,
# CONFIG_CFI_CLANG): not functions of their own (klp-diff's is_prefix_func).
_PREFIX_FUNCTIONS = ("__pfx_", "__cfi_")

_INIT_SECTIONS = re.compile(r"^\.(init|exit)\.(text|data|rodata|setup)|^\.(init|exit)\.|^\.meminit\.|^\.head\.text")

# x86 mov imm32 into %edx / %esi (opcode byte after any REX prefix)
_MOV_IMM_LINE = (0xBA, 0xBE)


def special_static_kind(name: str, section: str) -> str | None:
    """What a special static local is ("__already_done", "dynamic-debug
    descriptor", ...), or None for an ordinary symbol."""
    kind = _SPECIAL_DATA_SECTIONS.get(section)
    if kind is not None:
        return kind
    if _UBSAN.match(section):
        return "UBSAN data"
    if _UNIQUE_DDEBUG.match(name):
        return "dynamic-debug descriptor"
    head, dot, tail = name.partition(".")
    if dot:
        if head in _SPECIAL_STATICS and (not tail or tail.isdigit()):
            return head
        last = name.rsplit(".", 1)[-1]
        if last in _SPECIAL_STATICS:           # clang: function.__key
            return last
    return None


_SWITCH_TABLE = re.compile(r"^CSWTCH\.\d+$")


def is_switch_table(name: str) -> bool:
    """True for a table gcc made for a switch (CSWTCH.N): the kernel tools
    compare references to it by name, never by what it holds."""
    return bool(_SWITCH_TABLE.match(name))


def own_data_section(name: str, section: str) -> bool:
    """True when a data object has a section of its own (what -fdata-sections
    gives: .data.NAME, .bss.NAME, .rodata.NAME, .data.rel[.ro].NAME;
    create-diff-object's is_bundleable). Objects in a section they share
    (.data..read_mostly, .data..percpu, ...) change that section when one is
    added."""
    return section in {f"{p}.{name}" for p in (".data", ".bss", ".rodata", ".data.rel", ".data.rel.ro")}


def carries_changed_data(section: str) -> bool:
    """True when create-diff-object lets a changed object of this section
    travel with a changed function that uses it: anything but .data* and
    .bss* (kpatch_verify_patchability; .data.once and .data.unlikely hold
    only WARN flags)."""
    if section in (".data.once", ".data.unlikely"):
        return True
    return not section.startswith((".data", ".bss"))


def special_section_kind(section: str) -> str | None:
    """The section's name when it is one of the tables the kernel tools
    rebuild rather than compare (or data that is not a patch's concern), else None."""
    if section in _SPECIAL_SECTIONS or section.startswith(_SPECIAL_PREFIXES):
        return section
    if _UBSAN.match(section):
        return "UBSAN data"
    return None


def is_init_section(section: str) -> bool:
    """True for code and data that the kernel frees after boot (or never keeps)."""
    return bool(_INIT_SECTIONS.match(section))


def is_ignored_section(section: str, ignored: frozenset) -> bool:
    """True when the section is .discard.* or named by KPATCH_IGNORE_SECTION."""
    return section.startswith(".discard") or section in ignored


def is_prefix_function(name: str) -> bool:
    """True for __pfx_foo and __cfi_foo, the padding in front of foo."""
    return name.startswith(_PREFIX_FUNCTIONS)


def own_section(name: str, section: str) -> bool:
    """True when a function has a section of its own (.text.NAME, or its
    .text.unlikely./.text.hot. variant; a .cold child may sit in its parent's
    .text.unlikely.PARENT): what -ffunction-sections gives. A function in a
    shared section (.sched.text, .noinstr.text, .text) cannot be carried alone:
    create-diff-object refuses its change ("changed section ... not selected
    for inclusion")."""
    for prefix in (".text.", ".text.unlikely.", ".text.hot."):
        if section.startswith(prefix):
            rest = section[len(prefix):]
            if rest == name or (".cold" in name and name.startswith(rest)):
                return True
    return False


def subsection(section: str) -> str:
    """"unlikely", "hot" or "normal": moving between them is a change to kpatch."""
    if section.startswith(".text.unlikely.") or section == ".text.unlikely":
        return "unlikely"
    if section.startswith(".text.hot.") or section == ".text.hot":
        return "hot"
    return "normal"


def decode(code: bytes) -> list[tuple[int, int]]:
    """[(start, end)] of each instruction; bytes capstone cannot decode are
    stepped over one at a time (data in text, a torn table) so that the
    instructions after them are still found."""
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < len(code):
        end = pos
        for addr, size, _, _ in md.disasm_lite(code[pos:], pos):
            out.append((addr, addr + size))
            end = addr + size
        pos = end + 1 if end < len(code) else end
    return out


def _is_warn_call(target: tuple) -> bool:
    if target[0] != "sym":
        return False
    name = target[1]
    return name in WARN_FUNCTIONS or name.startswith(_WARN_PREFIX)


def _skippable(target: tuple) -> bool:
    """A string or a WARN flag may sit between the line number and the call."""
    if target[0] in ("str", "content"):
        return True
    return target[0] == "special" and target[1] in ("__warned", "__already_done", "once flag")


def line_macro_change_only(old_body: bytes, new_body: bytes, relocs: list[tuple[int, tuple]]) -> bool:
    """True when old_body and new_body differ only in `mov $imm, %esi/%edx`
    instructions each followed (after strings and WARN flags) by a relocation
    to a WARN or might_sleep helper: a __LINE__ that moved.

    relocs: [(offset, target)] of the function, identical on both sides (the
    caller checked), targets as diff.py normalizes them ("sym" targets by name)."""
    if len(old_body) != len(new_body) or old_body == new_body:
        return False
    old_insns, new_insns = decode(old_body), decode(new_body)
    if old_insns != new_insns:
        return False
    changed = False
    for start, end in new_insns:
        if old_body[start:end] == new_body[start:end]:
            continue
        op = start + 1 if 0x40 <= new_body[start] <= 0x4F else start
        if op >= end or new_body[op] not in _MOV_IMM_LINE or old_body[op] != new_body[op]:
            return False
        found = False
        for off, target in relocs:
            if off < end:
                continue
            if _is_warn_call(target):
                found = True
                break
            if not _skippable(target):
                return False
        if not found:
            return False
        changed = True
    return changed
