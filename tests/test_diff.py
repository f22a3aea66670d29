"""emu/images/diff.py on real C pairs (tests/diff/<case>/old.c and new.c) compiled by gcc:
what a patch from old to new must carry, and which changes it must refuse."""
from pathlib import Path

import pytest

from emu.engine import core
from emu.images.diff import Diff, diff_sources, patch_plan
from emu.errors import BuildError, PatchError
from emu.images.build import build_c
from emu.machine.machine import Machine
from emu.models import make_model
from emu.kernel.patch import make_patch

CASES = Path(__file__).parent / "diff"


def pair(case: str, new: str = "new.c") -> tuple[Path, Path]:
    return CASES / case / "old.c", CASES / case / new


def diff(case: str, new: str = "new.c", **kw) -> Diff:
    return diff_sources(*pair(case, new), **kw)


# -- what changes -------------------------------------------------------------------


def test_a_one_line_fix_changes_only_its_function():
    d = diff("fix")
    assert (d.changed, d.new, d.removed) == (["get"], [], [])
    assert d.reasons == {"get": "code differs"}
    assert d.to_json() == {"changed": ["get"], "new": [], "removed": [], "reasons": {"get": "code differs"}}


def test_a_changed_return_convention_changes_producer_and_consumer_not_their_caller():
    d = diff("seed")
    assert d.changed == ["bar", "baz"]       # foo() is the same code: it is not carried
    assert d.new == [] and d.removed == []


def test_a_changed_static_helper_inlined_into_two_callers_lists_both_callers():
    d = diff("inline")
    assert d.changed == ["set_power", "set_speed"]     # idle() does not use clamp()
    for caller in d.changed:
        assert d.reasons[caller] == "inlines changed static function clamp (inlined into it)"
    assert d.new == [] and d.removed == []   # clamp() has no code of its own in either build


def test_a_new_helper_is_new_and_its_callers_say_why_they_changed():
    d = diff("helper")
    assert d.new == ["log_value"]
    assert d.changed == ["check", "process"]
    assert "calls new function log_value" in d.reasons["process"]
    # is_valid() is static and inlined: no symbol, but DWARF says where it went
    assert "inlines new static function is_valid (inlined into it)" in d.reasons["check"]
    assert "untouched" not in d.changed


def test_a_changed_string_literal_in_a_changed_function_is_accepted():
    d = diff("string")
    assert d.changed == ["warn"]
    assert d.reasons["warn"].startswith('string literal "value too big" becomes "value too large"')


def test_a_changed_literal_is_quoted_as_c_writes_it(tmp_path):
    # a format string's newline, tab, quote and backslash, and a byte that
    # is not UTF-8: escaped, so the reason stays one line
    src = '''#include "lpemu.h"
__attribute__((noinline)) long warn(long v)
{
	lpemu_observe(7, (long)"%s");
	return v;
}
'''
    old, new = tmp_path / "old.c", tmp_path / "new.c"
    old.write_text(src % r"bad \"value\"\n")
    new.write_text(src % r"bad\tvalue \\ \xff\n")
    d = diff_sources(old, new)
    assert d.changed == ["warn"]
    assert d.reasons["warn"].startswith(r'string literal "bad \"value\"\n" becomes "bad\tvalue \\ \xff\n"')
    assert "\n" not in d.reasons["warn"] and "\t" not in d.reasons["warn"]


def test_identical_sources_change_nothing():
    old, _ = pair("moved")
    d = diff_sources(old, old)
    assert d.to_json() == {"changed": [], "new": [], "removed": [], "reasons": {}}


def test_the_file_macro_of_one_file_in_two_folders_does_not_change(tmp_path):
    """old/f.c and new/f.c, as a patch author keeps the two trees: __FILE__ is
    the same file (kpatch-build builds both at one path); before, the folders
    made `where` a changed function."""
    text = 'const char *where(void) {{ return __FILE__; }}\nlong two(void) {{ return {}; }}\n'
    for folder, value in (("old", 2), ("new", 3)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "f.c").write_text(text.format(value))
    d = diff_sources(tmp_path / "old" / "f.c", tmp_path / "new" / "f.c")
    assert d.changed == ["two"] and d.new == [] and d.removed == []


def test_functions_that_only_move_do_not_change():
    # a jump table, a .cold part, strings, a static local and calls between them,
    # all at other offsets and in another section order
    d = diff("moved")
    assert (d.changed, d.new, d.removed) == ([], [], [])


def test_a_changed_switch_table_is_found_through_the_anonymous_table(tmp_path):
    old, new = pair("moved")
    changed = tmp_path / "new.c"
    changed.write_text(new.read_text().replace("return 9;", "return 8;"))
    assert diff_sources(old, changed).changed == ["classify"]


def test_renumbered_clones_are_correlated_not_changed():
    # -O3 makes one scale.constprop.N per calling context; swapping a() and b()
    # swaps the numbers, removing b() renumbers a()'s clone
    d = diff("clones", cflags=["-O3"])
    assert (d.changed, d.new, d.removed) == ([], [], [])
    assert d.renamed == {"scale.constprop.0": "scale.constprop.1", "scale.constprop.1": "scale.constprop.0"}
    d = diff("clones", "fewer.c", cflags=["-O3"])
    assert d.changed == [] and d.removed == ["b", "scale.constprop.0"]
    assert d.renamed == {"scale.constprop.0": "scale.constprop.1"}


def test_renumbered_static_locals_are_correlated_by_their_function():
    d = diff("static_local_renumber")
    assert (d.changed, d.new) == ([], ["second"])        # first() is not changed
    assert d.renamed == {"calls.1": "calls.0"}
    assert d.new_data == ["static local 'calls' in function second"]
    # second() is carried, and its new calls.0 has the old first()'s name
    assert any("binding it by name would share that one" in w for w in d.warnings)


# -- data ----------------------------------------------------------------------------

REFUSED = {
    "data_global": "new.c: global 'limit' changes its initial value (a live patch cannot change "
                   "existing data; use a shadow variable)",
    "data_static": "new.c: static 'threshold' changes its initial value",
    "data_static_local": "new.c: static local 'next' in function ticket changes its initial value",
    "data_size": "new.c: global 'history' changes its size from 32 to 64 bytes",
    "data_struct_grows": "new.c: global 'stats' changes its size from 8 to 16 bytes",
    "data_struct_layout": "new.c: global 'cfg' changes the layout of its type struct cfg",
    "data_string_pointer": "new.c: global 'greeting' changes its initial value",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_change_to_existing_data_is_refused(case):
    with pytest.raises(PatchError) as e:
        diff(case)
    assert REFUSED[case] in str(e.value)


def test_the_other_static_local_of_the_same_name_is_not_blamed():
    with pytest.raises(PatchError) as e:
        diff("data_static_local")
    assert "other" not in str(e.value)


def test_new_data_is_allowed_and_carried_by_the_patch():
    d = diff("new_data")
    assert d.changed == ["see"]
    assert d.new_data == ["global 'largest'", "static local 'calls' in function see"]
    assert "uses new data: global 'largest'" in d.reasons["see"]


# -- patches that hold only the new functions ------------------------------------------


def test_a_partial_patch_carries_what_it_changes_and_removes_nothing():
    d = patch_plan(CASES / "seed" / "old.c", CASES / "partial" / "patch.c")
    assert d.to_json() == {"changed": ["bar", "baz"], "new": [], "removed": [],
                           "reasons": {"bar": "code differs", "baz": "code differs"}}
    assert d.warnings == []


def test_a_partial_patch_may_not_redefine_existing_data_with_another_value():
    with pytest.raises(PatchError, match=r"patch_defines_total.c: global 'total' changes its initial value"):
        patch_plan(CASES / "seed" / "old.c", CASES / "partial" / "patch_defines_total.c")


def test_a_partial_patch_is_warned_about_an_inlined_change_it_does_not_carry():
    d = patch_plan(CASES / "inline" / "old.c", CASES / "partial" / "clamp.c")
    assert d.changed == ["set_speed"] and d.new == ["set_limit"] and d.removed == []
    assert d.reasons["set_speed"] == "inlines changed static function clamp (inlined into it)"
    assert d.warnings == ["old.c: clamp is inlined into set_power, which the patch does not carry: "
                          "set_power keeps the old clamp"]


def test_the_seed_partial_patch_matches_the_whole_file_diff():
    seed = Path(__file__).parent.parent / "emu" / "seed"
    assert patch_plan(seed / "base.c", seed / "patch.c").changed == diff("seed").changed


# -- bad input --------------------------------------------------------------------------


def test_a_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.c"
    with pytest.raises(BuildError, match="nope.c: no such file"):
        diff_sources(CASES / "fix" / "old.c", missing)
    with pytest.raises(BuildError, match="nope.c: no such file"):
        patch_plan([missing], CASES / "fix" / "new.c")


def test_a_compile_error_shows_gccs_message(tmp_path):
    bad = tmp_path / "bad.c"
    bad.write_text("long f(void) { return undefined_thing; }\n")
    with pytest.raises(BuildError) as e:
        diff_sources(CASES / "fix" / "old.c", bad)
    assert "compiling" in str(e.value) and "bad.c" in str(e.value)
    assert "error:" in str(e.value) and "undefined_thing" in str(e.value)


# -- end to end: the diff builds a patch that runs ------------------------------------------


def observed(m, key):
    return [e.value for e in m.trace if e.kind == core.EV_OBSERVE and e.key == key]


@pytest.mark.parametrize("model_name", ["livepatch", "immediate"])
def test_the_diff_builds_a_patch_that_switches_a_running_system(model_name):
    old, new = pair("seed")
    d = diff_sources(old, new)
    base = build_c(old, base=0x400000, name="base")
    m = Machine(base, cpus=2, quantum=500)
    m.add_task("user", "user_entry", (0,))
    m.add_task("kthread", "kthread_entry", (2,), kind="kthread")
    image = build_c(new, base=m.module_base(), name="patch", link_against=base, keep=d.carry)
    assert set(image.functions) >= {"bar", "baz"} and "foo" not in image.functions
    m.load(image)
    model = make_model(model_name, m)
    patch = model.add(make_patch(m, "p1", image, d.changed))
    m.at(20_000, lambda: model.enable(patch))
    m.run(until=m.seconds(30))
    assert model.transitions[0].result == "completed"
    assert observed(m, 1)[:1] == [5]               # the old baz() got a count before
    assert observed(m, 2) and observed(m, 2)[-1] == 5000    # the new one gets thousandths after


# -- more shapes: .cold parts, several files ---------------------------------------------------


def test_a_change_in_a_cold_part_changes_its_function():
    d = diff("cold")
    assert d.changed == ["check"]           # check.cold is part of check, never listed itself
    assert d.reasons["check"] == "its cold part check.cold differs"


TWO = CASES / "two_files"


@pytest.mark.parametrize("order", [("a.c", "b.c"), ("b.c", "a.c")])
def test_statics_of_one_name_in_several_files_are_told_apart_by_file(order):
    d = diff_sources([TWO / "old" / "a.c", TWO / "old" / "b.c"], [TWO / "new" / f for f in order])
    assert d.changed == ["helper"] and d.new == [] and d.removed == []
    assert d.reasons["helper"] == "code differs (the helper of a.c)"


def test_a_partial_patch_for_one_of_several_same_named_statics_must_name_its_file():
    d = patch_plan([TWO / "old" / "a.c", TWO / "old" / "b.c"], TWO / "new" / "a.c")
    assert d.changed == ["helper"] and d.new == []
    with pytest.raises(PatchError, match=r"helper.c: helper is ambiguous: the old sources define 2 "
                                         r"of them \(a.c, b.c\); name the patch file after"):
        patch_plan([TWO / "old" / "a.c", TWO / "old" / "b.c"], CASES / "partial" / "helper.c")


@pytest.mark.parametrize("case", ["seed", "inline", "moved", "cold"])
def test_debug_info_does_not_change_the_code_that_is_compared(case, tmp_path):
    # The comparison compiles with -g (for DWARF's inlining facts) while build_c
    # builds the patch without: the conclusions hold only if gcc's code is the same.
    from elftools.elf.elffile import ELFFile
    from emu.images.toolchain import compile_c

    def code(obj):
        with open(obj, "rb") as f:
            elf = ELFFile(f)
            return {s.name: s.data() for s in elf.iter_sections() if s["sh_flags"] & 4}   # SHF_EXECINSTR

    src = CASES / case / "new.c"
    compile_c(src, tmp_path / "plain.o", [], tmp_path)
    compile_c(src, tmp_path / "debug.o", ["-g"], tmp_path)
    assert code(tmp_path / "plain.o") == code(tmp_path / "debug.o")
