"""Runs, replay, shrinking and campaigns on the seed scenario."""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from emu.engine import core
from emu.runs import campaign
from emu.app import cli
from emu.runs import scenario
from emu.runs.fuzz import RunSpec, Runner
from emu.runs.shrink import shrink

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed" / "scenario.toml"


@pytest.fixture(scope="module")
def runner():
    return Runner(scenario.build(scenario.load(SEED)))


def test_the_same_spec_gives_the_same_run_event_for_event(runner):
    for strategy in ("exhaustive", "random", "pct"):
        spec = runner.plan("livepatch", 7, strategy=strategy)
        a, b = runner.execute(spec), runner.execute(spec)
        assert a.trace_hash == b.trace_hash and a.events == b.events and a.to_json() == b.to_json()
    assert RunSpec.from_json(spec.to_json()) == spec


def test_strategies_spread_start_points_over_one_cycle(runner):
    w, at = runner.window(), runner.first_at
    n = runner.exhaustive_runs()
    assert w <= n < 2 * w
    starts = [runner.plan("kgraft", s, strategy="exhaustive").start for s in range(n)]
    assert set(starts) == set(range(at, at + w))              # every instruction
    # the first 2^k seeds spread evenly over the window, whatever the campaign's size
    first = sorted(starts[:8])
    assert first[0] == at and all(abs((b - a) - w / 8) <= 1 for a, b in zip(first, first[1:]))
    rnd = {runner.plan("kgraft", s, strategy="random").start for s in range(50)}
    assert len(rnd) > 40 and all(at <= x < at + w for x in rnd)
    pct = runner.plan("kgraft", 3, strategy="pct")
    assert pct.schedule == "pct" and pct.depth == 3


def test_replay_reproduces_the_failing_seed_and_shrink_makes_it_smaller(runner):
    spec = next(s for s in (runner.plan("stop_machine", i, strategy="random") for i in range(40))
                if runner.execute(s).inconsistent)
    first = runner.execute(spec)
    again = runner.execute(spec)
    assert again.inconsistencies == first.inconsistencies and again.trace_hash == first.trace_hash
    said = []                  # progress: one call per run, saying whether it failed
    small, res, tried = shrink(runner, spec, budget=80, progress=said.append)
    assert res.inconsistent and tried <= 80
    assert len(said) == tried and said[0] is True         # the run it starts from fails
    assert True in said[1:] and False in said[1:]         # variants that still fail, and ones that pass
    assert small.start >= spec.start
    ntasks = lambda s: len(s.tasks) if s.tasks is not None else 3      # noqa: E731
    assert (ntasks(small), small.schedule == "rr", -small.start) < (ntasks(spec), spec.schedule == "rr", -spec.start)
    # the shrunk start is the latest: one instruction later the run is consistent
    assert not runner.execute(replace(small, start=small.start + 1)).failing
    assert runner.execute(small).trace_hash == res.trace_hash


def test_shrinking_a_passing_run_is_an_error(runner):
    spec = runner.plan("kgraft", 0)
    with pytest.raises(Exception, match="does not fail"):
        shrink(runner, spec)


def test_campaign_summary_does_not_depend_on_workers_or_interruptions(tmp_path):
    prog = scenario.build(scenario.load(SEED))
    plan = campaign.Plan(str(SEED), ["stop_machine", "kgraft"], list(range(12)), "random")
    one = campaign.Campaign(prog, plan, jobs=1)
    one.run()
    two = campaign.Campaign(prog, plan, jobs=2, out=tmp_path / "c", batch=3)
    two.run()
    two.close()
    assert two.summary() == one.summary()
    lines = (tmp_path / "c" / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 24 and all(json.loads(x)["outcome"] for x in lines)
    # an interrupted campaign: keep half the lines (and a torn one), then resume
    part = tmp_path / "p"
    part.mkdir()
    (part / "runs.jsonl").write_text("\n".join(lines[:10]) + "\n" + lines[10][:20])
    (part / "campaign.json").write_text((tmp_path / "c" / "campaign.json").read_text())   # with its fingerprint
    with pytest.raises(Exception, match="--resume"):
        campaign.Campaign(prog, plan, out=part)
    res = campaign.Campaign(prog, plan, jobs=2, out=part, resume=True)
    assert len(res.todo()) == 14
    res.run()
    res.close()
    assert res.summary() == one.summary()
    summary = one.summary()
    sm = next(m for m in summary["models"] if m["model"] == "stop_machine")
    kg = next(m for m in summary["models"] if m["model"] == "kgraft")
    assert sm["inconsistent"] > 0 and sm["first_failing_seed"] is not None and sm["pause_max"] > 0
    assert kg["inconsistent"] == 0 and kg["latency_median"] > 0


def test_cli_run_replay_fuzz_json(tmp_path, capsys):
    assert cli.main(["run", str(SEED), "--model", "livepatch", "--at", "20633", "--json"]) == 1     # a finding
    run = json.loads(capsys.readouterr().out)
    assert run["inconsistent"] and run["outcome"] == "completed"
    assert any("patching complete" in text for _, text in run["log"])
    assert cli.main(["replay", str(SEED), "--model", "livepatch", "--seed", "4", "--strategy", "exhaustive",
                     "--shrink", "--budget", "40", "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["inconsistent"] and rep["shrunk_from"]["seed"] == 4 and rep["command"].startswith("lpemu run")
    out = tmp_path / "camp"
    assert cli.main(["fuzz", str(SEED), "--model", "kgraft", "--runs", "4", "--jobs", "1",
                     "--out", str(out), "--json"]) == 0
    summ = json.loads(capsys.readouterr().out)
    assert summ["models"][0]["runs"] == 4 and (out / "summary.json").exists()
    assert cli.main(["fuzz", str(SEED), "--runs", "4", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_cli_bad_scenario_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[program]\nsources = ['x.c']\n")
    assert cli.main(["run", str(bad), "--model", "kgraft"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.toml:2: program.sources: no such file: x.c" in err


@pytest.mark.parametrize("example", ["stacked", "replace", "modules", "kthread-stall", "seed"])
def test_a_runners_kept_judging_tables_judge_as_fresh_ones(example):
    """The tables a Runner keeps for the judges of its runs (Runner._judging,
    keyed by what they read) give every run the judgement the judges give
    it from scratch: runs of every model, pooled and fresh machines, the
    tables made by earlier runs of other models and seeds."""
    from emu.runs import oracle
    from emu.runs.verdicts import verdicts
    path = SEED.parent.parent / example / "scenario.toml"
    with Runner(scenario.build(scenario.load(path))) as r:
        for seed in range(3):
            for model in scenario.MODELS:
                r.execute(r.plan(model, seed + 10))                 # pooled: tables made and kept
                res, m, mdl = r.execute(r.plan(model, seed), keep=True)
                patches = list(mdl.patches)
                stats: dict = {}
                bad = oracle.check(m, patches, mdl.transitions, unit=r.scn.unit, stats=stats)
                fresh = verdicts(m, patches, spec_model=model)
                m.engine.close()
                assert (res.inconsistent_units, res.inconsistencies, res.units) == \
                    (len(bad), [b.to_json() for b in bad[:20]], stats["units"]), (model, seed)
                assert (res.promise_breaches, res.promise, res.handover_count, res.handovers) == \
                    (fresh.breaches, fresh.promise, fresh.handover_count, fresh.handovers), (model, seed)


def test_a_runspec_naming_a_task_the_scenario_lacks_is_refused_by_name():
    from emu.errors import UserError
    with Runner(scenario.build(scenario.load(SEED))) as runner:
        spec = replace(runner.plan("livepatch", 0), tasks=("user0", "nope"))
        with pytest.raises(UserError, match=r"RunSpec.tasks: no task 'nope' in the scenario \(tasks: .*user0"):
            runner.execute(spec)


def test_tasks_asleep_with_no_timeout_wait_for_the_first_action(tmp_path):
    """Every task sleeps with no timeout before the first action: the run
    shared up to that action is not a hang (the action is coming, and
    livepatch's fake signal wakes a kthread asleep in the patched
    function), as an idle kernel waits for its next event. The run reaches
    the transition and the wake-ups; only when nothing can happen any more
    is every task asleep forever (a guest fault, docs/bad-input.md)."""
    (tmp_path / "base.c").write_text(
        '#include "lpemu.h"\n'
        "__attribute__((noinline)) long poll_loop(void) {\n"
        "    for (;;) { lpemu_sleep(-1); lpemu_observe(2, 0); }\n"
        "    return 0;\n"
        "}\n"
        "long kthread_entry(void) { return poll_loop(); }\n")
    (tmp_path / "patch.c").write_text(
        '#include "lpemu.h"\n'
        "long poll_loop(void) { for (;;) { lpemu_sleep(-1); lpemu_observe(2, 1); } return 0; }\n")
    (tmp_path / "scenario.toml").write_text(
        '[program]\nsources = ["base.c"]\n'
        '[machine]\ncpus = 2\nkernel = "6.8"\n'
        '[[task]]\nname = "poller"\nentry = "kthread_entry"\nkind = "kthread"\n'
        '[[patch]]\nname = "fix"\nsources = ["patch.c"]\nfunctions = ["poll_loop"]\n'
        '[[action]]\nat = 20000\ndo = "enable"\npatch = "fix"\n'
        '[fuzz]\nhorizon = 20.0\n')
    scn = scenario.load(tmp_path / "scenario.toml")
    with Runner(scenario.build(scn)) as r:
        res, m, _ = r.execute(r.plan("livepatch", 0), keep=True)
    try:
        assert res.transitions and res.transitions[0]["requested_at"] == 20000
        # klp_send_signals at the 16th attempt (about 15 s on) woke it in the old poll_loop
        assert any("signaling remaining tasks" in text for _, text in m.log)
        assert [(e.key, e.value) for e in m.trace if e.kind == core.EV_OBSERVE][:1] == [(2, 0)]
        assert res.fault is None or "asleep" in res.fault and res.end > 15 * 100_000
    finally:
        m.engine.close()
