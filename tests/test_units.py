"""[check] unit = "f": f is traced whatever the patches carry, and a run or
campaign that saw no unit says so."""
import json
import shutil
from pathlib import Path

import pytest

from emu.app import cli
from emu.runs import campaign, scenario
from emu.runs.fuzz import Runner

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed"


def seed_scenario(tmp_path, unit):
    for name in ("base.c", "patch.c"):
        shutil.copy(SEED / name, tmp_path / name)
    text = (SEED / "scenario.toml").read_text().replace('unit = "syscall"', f'unit = "{unit}"')
    (tmp_path / "s.toml").write_text(text)
    return tmp_path / "s.toml"


BASE = """
#include "lpemu.h"
volatile long zero;
__attribute__((noinline)) long bar(void) { return 5 + zero; }
__attribute__((noinline)) void something_else(void) { lpemu_sleep(2); }
__attribute__((noinline)) long baz(long f) { lpemu_observe(1, f); return f; }
__attribute__((noinline)) long unit(void) { long f = bar(); something_else(); long r = baz(f); lpemu_observe(2, r); return r; }
long user_entry(long i) { long r = unit(); lpemu_observe(4, r); return 0; }
"""
PATCH = """
#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long bar(void) { return 5000 + zero; }
__attribute__((noinline)) long baz(long f) { lpemu_observe(1, f / 1000); return f / 1000; }
"""
SCENARIO = """
[program]
sources = ["base.c"]
[machine]
cpus = 2
quantum = 300
[[task]]
name = "user"
entry = "user_entry"
count = 3
[[patch]]
name = "p"
sources = ["patch.c"]
functions = ["bar", "baz"]
[[action]]
at = 3000
do = "enable"
patch = "p"
[check]
unit = "UNIT"
[fuzz]
horizon = 3.0
"""


def unit_scenario(tmp_path, unit):
    (tmp_path / "base.c").write_text(BASE)
    (tmp_path / "patch.c").write_text(PATCH)
    (tmp_path / "s.toml").write_text(SCENARIO.replace("UNIT", unit))
    return tmp_path / "s.toml"


def test_a_unit_function_no_patch_carries_is_still_checked(tmp_path):
    # unit() is not in the patch (bar and baz are): a unit() that gets the old
    # bar() and the new baz() is the seed's bug, and livepatch allows it
    runner = Runner(scenario.build(scenario.load(unit_scenario(tmp_path, "unit"))))
    results = [runner.execute(runner.plan("livepatch", seed, strategy="exhaustive")) for seed in range(16)]
    assert all(r.units > 0 and not r.warnings for r in results)
    bad = [r for r in results if r.inconsistent]
    assert bad, "no run found the unit() that mixes the old bar() and the new baz()"
    assert all(b["unit"].startswith("unit #") for r in bad for b in r.inconsistencies)
    # kGraft runs a whole system call, so a whole unit(), in one universe
    kg = [runner.execute(runner.plan("kgraft", seed, strategy="exhaustive")) for seed in range(8)]
    assert all(r.units > 0 and not r.inconsistent for r in kg)


def test_a_unit_that_never_runs_is_a_warning_in_results_and_summary(tmp_path, capsys):
    path = seed_scenario(tmp_path, "think")
    text = path.read_text()
    # think() exists but no task calls it any more
    (tmp_path / "base.c").write_text((tmp_path / "base.c").read_text().replace("\tthink();", "\t/* no think */"))
    path.write_text(text)
    prog = scenario.build(scenario.load(path))
    runner = Runner(prog)
    res = runner.execute(runner.plan("livepatch", 0, strategy="exhaustive"))
    assert res.units == 0 and not res.inconsistent
    assert any("think" in w and "checked nothing" in w for w in res.warnings)
    assert res.to_json()["warnings"] == res.warnings
    rc = cli.main(["fuzz", str(path), "--model", "livepatch", "--runs", "2", "--jobs", "1", "--json",
                   "--fail-on", "none"])
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert rc == 0
    assert summary["warnings"] and "checked nothing" in summary["warnings"][0]
    assert summary["models"][0]["units"] == 0


def test_syscall_units_are_counted(tmp_path):
    runner = Runner(scenario.build(scenario.load(seed_scenario(tmp_path, "syscall"))))
    res = runner.execute(runner.plan("kgraft", 0, strategy="exhaustive"))
    assert res.units > 0 and not res.warnings


def test_plan_summary_keeps_its_shape_without_warnings():
    plan = campaign.Plan("s.toml", ["kgraft"], [0], "exhaustive")
    rec = {"model": "kgraft", "seed": 0, "outcome": "completed", "units": 3, "warnings": []}
    summary = campaign.summarize(plan, {("kgraft", 0): rec})
    assert summary["warnings"] == [] and summary["models"][0]["units"] == 3


@pytest.mark.parametrize("unit", ["foo", "think"])
def test_unit_tracing_does_not_change_when_patches_carry_the_unit(tmp_path, unit):
    # the same run whether or not the watch came from a patch: tracing observes only
    path = seed_scenario(tmp_path, unit)
    runner = Runner(scenario.build(scenario.load(path)))
    a = runner.execute(runner.plan("stop_machine", 3, strategy="random"))
    b = runner.execute(runner.plan("stop_machine", 3, strategy="random"))
    assert a.trace_hash == b.trace_hash and a.units == b.units


def test_a_unit_function_that_cannot_be_traced_is_refused(tmp_path, capsys):
    path = unit_scenario(tmp_path, "unit")
    (tmp_path / "base.c").write_text(BASE.replace("__attribute__((noinline)) long unit(void)",
                                                  "__attribute__((noinline, no_instrument_function)) long unit(void)"))
    assert cli.main(["run", str(path), "--model", "livepatch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "check.unit: 'unit' has no fentry site" in err


def test_syscall_unit_checks_c_and_python_twins_agree(tmp_path):
    """csrc/units.c and oracle.scan_syscall_units give the same units on real
    traces of every model and on generated ones: entries of checked and other
    functions, unit ends of every kind, idle tasks (negative ids, whose units
    never end), damaged fields (any task id, any kind), units left open,
    configurations that explain some units and not others."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from emu.engine import core
    from emu.runs import oracle

    with Runner(scenario.build(scenario.load(seed_scenario(tmp_path, "syscall")))) as r:
        for i, model in enumerate(scenario.MODELS):
            res, m, mod = r.execute(r.plan(model, i), keep=True)
            try:
                patches = list(mod.patches)
                fast_stats, slow_stats = {}, {}
                fast = oracle.check(m, patches, mod.transitions, stats=fast_stats)
                slow = oracle.check(m, patches, mod.transitions, stats=slow_stats, fast=False)
                assert fast == slow and fast_stats == slow_stats
                assert (len(fast), fast_stats["units"]) == (res.inconsistent_units, res.units)
            finally:
                m.engine.close()

    kinds = [core.EV_ENTRY] * 4 + [core.EV_KERNEL_EXIT, core.EV_SAFE_POINT, core.EV_EXIT, core.EV_RETURN,
                                   core.EV_OBSERVE, 99, -7]
    fid = st.integers(-1, 3)
    word = st.one_of(st.integers(0, 2), st.integers(-2**63, 2**63 - 1))
    task = st.one_of(st.integers(-2, 3), st.integers(-2**31, 2**31 - 1))
    event = st.tuples(st.integers(0, 2**64 - 1), st.sampled_from(kinds), task, st.one_of(fid, fid, word),
                      st.one_of(st.integers(0, 2), word), st.integers(0, 2**64 - 1))
    conf = st.dictionaries(fid, st.integers(0, 2), max_size=5)

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(event, max_size=80), st.sets(fid, max_size=5), st.lists(conf, max_size=4))
    def check(trace, functions, confs):
        log = core.EventLog(trace)
        assert core.units_check(log, functions, confs) == oracle.scan_syscall_units(log.records(), functions, confs)
    check()
