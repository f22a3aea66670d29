"""Scenario files: every mistake named by file, line and key; builds check names against the code."""
import json
import re
import textwrap
from pathlib import Path

import pytest

from emu.runs import scenario
from emu.errors import ScenarioError, UserError

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed"

GOOD = """
[program]
sources = ["base.c"]

[machine]
cpus = 2
quantum = 500

[[task]]
name = "user"
entry = "user_entry"
args = [0]
count = 2

[[patch]]
name = "p"
sources = ["patch.c"]
functions = ["bar", "baz"]

[[action]]
at = 20000
do = "enable"
patch = "p"

[check]
unit = "syscall"
observe = { 2 = "value >= 1000" }

[fuzz]
runs = 5
"""


@pytest.fixture
def scn_dir(seed_copy):
    return seed_copy


def write(d: Path, text: str) -> Path:
    p = d / "s.toml"
    p.write_text(textwrap.dedent(text))
    return p


def error_of(d: Path, text: str, *, build=False) -> str:
    with pytest.raises(UserError) as info:
        scn = scenario.load(write(d, text))
        if build:
            scenario.build(scn)
    return str(info.value)


def test_a_good_scenario_loads_with_its_defaults(scn_dir):
    scn = scenario.load(write(scn_dir, GOOD))
    assert [t.instances() for t in scn.tasks] == [["user0", "user1"]]
    assert scn.machine == {"cpus": 2, "quantum": 500}
    assert scn.actions[0].at == 20000 and scn.actions[0].target == "p"
    assert scn.fuzz.runs == 5 and scn.fuzz.strategy == "directed" and scn.fuzz.horizon >= 10
    assert scn.assertions[0].key == 2 and scn.assertions[0].holds({"value": 5000})


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(textwrap.dedent(text).splitlines(), 1) if needle in line)


@pytest.mark.parametrize("old,new,words", [
    ("quantum = 500", "quantum = 500\nspeed = 3", ["machine.speed", "unknown key"]),
    ('entry = "user_entry"', 'entry = "user_entry"\nprio = 1', ["task[0].prio", "unknown key"]),
    ('entry = "user_entry"', 'entry = "user_entry"\nsched.prio = 1', ["task[0].sched", "unknown key"]),
    ("quantum = 500", 'quantum = 500\n"x.y" = 1', ["machine.x.y", "unknown key"]),
    ("cpus = 2", 'cpus = "two"', ["machine.cpus", "must be an integer", "string"]),
    ("count = 2", "count = 0", ["task[0].count", "at least 1"]),
    ('do = "enable"', 'do = "apply"', ["action[0].do", "enable, disable, force, load, unload"]),
    ('patch = "p"', 'patch = "q"', ["action[0].patch", "no patch named 'q'"]),
    ("runs = 5", 'runs = 5\nmodels = ["kpatch"]', ["fuzz.models", "unknown model 'kpatch'"]),
    ("runs = 5", 'runs = 5\nstrategy = "smart"', ["fuzz.strategy"]),
    ('observe = { 2 = "value >= 1000" }', 'observe = { 2 = "value >=" }', ["check.observe", "not an expression"]),
    ('sources = ["patch.c"]', 'sources = ["nope.c"]', ["patch[0].sources", "no such file: nope.c"]),
])
def test_mistakes_name_the_file_line_and_key(scn_dir, old, new, words):
    text = GOOD.replace(old, new, 1)
    msg = error_of(scn_dir, text)
    for w in words:
        assert w in msg, msg
    assert f"s.toml:{line_of(text, new.splitlines()[-1])}:" in msg, msg


def test_not_toml_names_the_line(scn_dir):
    text = GOOD.replace("cpus = 2", "cpus = = 2")
    msg = error_of(scn_dir, text)
    assert "not valid TOML" in msg and f"line {line_of(text, 'cpus')}" in msg


def test_missing_keys_and_tables(scn_dir):
    assert "missing table [program]" in error_of(scn_dir, GOOD.replace("[program]", "[programme]"))
    msg = error_of(scn_dir, GOOD.replace('entry = "user_entry"\n', ""))
    assert "task[0]" in msg and "missing key 'entry'" in msg
    with pytest.raises(ScenarioError, match="no such scenario file"):
        scenario.load(scn_dir / "absent.toml")


def test_two_transitions_at_once_are_refused(scn_dir):
    text = GOOD.replace('[[action]]', '[[patch]]\nname = "q"\nsources = ["patch.c"]\nfunctions = ["bar"]\n\n'
                        '[[action]]\nat = 20000\ndo = "enable"\npatch = "q"\n\n[[action]]', 1)
    assert "one transition at a time" in error_of(scn_dir, text)


def test_names_are_checked_against_the_built_program(scn_dir):
    msg = error_of(scn_dir, GOOD.replace('entry = "user_entry"', 'entry = "user_main"'), build=True)
    assert "task[user].entry" in msg and "no function 'user_main'" in msg
    msg = error_of(scn_dir, GOOD.replace('functions = ["bar", "baz"]', 'functions = ["bar", "qux"]'), build=True)
    assert "patch[p].functions" in msg and "'qux'" in msg
    msg = error_of(scn_dir, GOOD.replace('unit = "syscall"', 'unit = "fooo"'), build=True)
    assert "check.unit" in msg and "fooo" in msg


def test_a_function_without_a_fentry_site_cannot_be_patched(scn_dir):
    (scn_dir / "base.c").write_text((scn_dir / "base.c").read_text().replace(
        "__attribute__((noinline)) long bar(void)", "__attribute__((noinline, no_instrument_function)) long bar(void)"))
    msg = error_of(scn_dir, GOOD, build=True)
    assert "'bar' has no fentry site" in msg


def test_the_seed_examples_build():
    for name in ("scenario.toml", "scenario-foo.toml"):
        prog = scenario.build(scenario.load(SEED / name))
        assert set(prog.patches) and all(funcs for _, funcs in prog.patches.values())


# ---- one validated number type: every numeric key, any number ----------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

NUMERIC = {
    # key: (the line of GOOD it replaces, the line with the value, how to read it back, lowest, highest)
    "machine.cpus": ("cpus = 2", "cpus = {}", lambda s: s.machine.get("cpus"), 1, scenario.MAX_CPUS),
    "machine.quantum": ("quantum = 500", "quantum = {}", lambda s: s.machine.get("quantum"), 1, scenario.MAX_QUANTUM),
    "task.count": ("count = 2", "count = {}", lambda s: s.tasks[0].count, 1, scenario.MAX_TASKS),
    "action.at": ("at = 20000", "at = {}", lambda s: s.actions[0].at, 0, scenario.MAX_TIME - 2_000_000),
    "fuzz.runs": ("runs = 5", "runs = {}", lambda s: s.fuzz.runs, 1, scenario.MAX_RUNS // 4),
    "fuzz.depth": ("runs = 5", "runs = 5\ndepth = {}", lambda s: s.fuzz.depth, 1, 1000),
    "fuzz.window": ("runs = 5", "runs = 5\nwindow = {}", lambda s: s.fuzz.window, 1, scenario.MAX_TIME),
    "fuzz.seed": ("runs = 5", "runs = 5\nseed = {}", lambda s: s.fuzz.seed, 0, scenario.SEED_MAX - scenario.MAX_RUNS),
    "states.version": ('functions = ["bar", "baz"]', 'functions = ["bar", "baz"]\nstates = [{{ id = 1, version = {} }}]',
                       lambda s: s.patches[0].states[0][1], 0, scenario.SEED_MAX),
}

values = st.one_of(st.integers(), st.integers(-5, 70), st.sampled_from([2**31, 2**63 - 1, 2**63, -(2**63), 2**64]),
                   st.floats(allow_nan=True), st.booleans(), st.text("ab 9-", max_size=5))


def toml_number(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v > 0 else "-inf") if v in (float("inf"), float("-inf")) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(NUMERIC)), value=values)
def test_every_number_is_read_in_its_range_or_refused_by_name(scn_dir, key, value):
    old, new, read, lo, hi = NUMERIC[key]
    text = GOOD.replace(old, new.format(toml_number(value)), 1)
    try:
        got = read(scenario.load(write(scn_dir, text)))
    except ScenarioError as exc:
        assert key.split(".")[-1] in str(exc) and str(exc).startswith(str(scn_dir / "s.toml")), str(exc)
        assert "\n" not in str(exc)
        ok = type(value) is int and lo <= value <= hi
        assert not ok, f"{key} = {value!r} is in range but refused: {exc}"
        return
    assert type(value) is int and lo <= value <= hi and got == value, (key, value, got)


# ---- [expect] per kernel ---------------------------------------------------------------------------

PER_KERNEL = GOOD + """
[expect]
livepatch = ["safe", "stalls"]
kgraft = "safe"

[expect.kernel."6.8"]
livepatch = ["safe", "completes"]

[expect.kernel.'4.18']
immediate = "unsafe"
"""


def test_an_expectation_for_a_kernel_replaces_the_models_entry_there_and_nowhere_else(scn_dir):
    scn = scenario.load(write(scn_dir, PER_KERNEL))
    assert scn.expected("livepatch", "6.8") == ("safe", "completes")
    # every other kernel, the scenario's own (the newest here) included
    assert scn.expected("livepatch", "5.14") == scn.expected("livepatch") == ("safe", "stalls")
    assert scn.expected("kgraft", "6.8") == ("safe",)
    assert scn.expected("immediate", "4.18") == ("unsafe",) and scn.expected("immediate", "6.8") == ()
    assert scn.expected_models("4.18") == ["livepatch", "kgraft", "immediate"]
    assert scn.expected_models() == ["livepatch", "kgraft"]
    # [machine] kernel decides which entries a campaign without --kernel meets
    scn.machine["kernel"] = "6.8"
    assert scn.expected("livepatch") == ("safe", "completes")


def test_a_kernel_written_as_a_toml_inline_table_is_the_same(scn_dir):
    text = GOOD + '\n[expect]\nlivepatch = "safe"\nkernel = { "6.8" = { livepatch = "completes" } }\n'
    scn = scenario.load(write(scn_dir, text))
    assert scn.expected("livepatch", "6.8") == ("completes",) and scn.expected("livepatch", "6.1") == ("safe",)


@pytest.mark.parametrize("table,words,at", [
    ('[expect.kernel."7.42"]\nlivepatch = "safe"', ['expect.kernel."7.42"', "not one this emulator knows"],
     '[expect.kernel."7.42"]'),
    ('[expect.kernel."six"]\nlivepatch = "safe"', ['expect.kernel."six"', "MAJOR.MINOR"], '[expect.kernel."six"]'),
    ('[expect.kernel."6.8"]\nkpatch = "safe"', ['expect.kernel."6.8".kpatch', "unknown model"], 'kpatch = '),
    ('[expect.kernel."6.8"]\nlivepatch = "quick"', ['expect.kernel."6.8".livepatch', "unknown expectation"],
     'livepatch = "quick"'),
    ('[expect.kernel."6.8"]\nlivepatch = ["safe", "unsafe"]', ["cannot be both safe and unsafe"], 'livepatch = '),
    ('[expect.kernel."6.8"]\nlivepatch = "safe"\n[expect.kernel."6.08"]\nlivepatch = "safe"',
     ['expect.kernel."6.08"', "kernel 6.8 has expectations already"], '[expect.kernel."6.08"]'),
    ('[expect]\nkernel = "6.8"', ["expect.kernel", "must be a table", "string"], 'kernel = '),
    ('[expect]\nkernel = { "6.8" = "safe" }', ["expect.kernel", '"6.8" must be a table of models'], 'kernel = '),
])
def test_a_mistake_in_a_kernels_expectations_names_the_kernel_and_its_line(scn_dir, table, words, at):
    text = GOOD + "\n" + table + "\n"
    msg = error_of(scn_dir, text)
    for w in words:
        assert w in msg, msg
    assert f"s.toml:{line_of(text, at)}:" in msg, msg
