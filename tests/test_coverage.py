"""Task states, the probe, the directed strategy, coverage and shrinking
through lockstep: on the seed, on the rare-path example, and on scenarios
built here."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from emu.app import cli
from emu.runs import campaign, coverage, first_failure, scenario, states
from emu.runs.fuzz import Runner, RunSpec, trace_hash
from emu.runs.probe import Probe
from emu.runs.shrink import shrink

EX = Path(__file__).resolve().parent.parent / "examples"
SEED = EX / "seed" / "scenario.toml"
RARE = EX / "rare" / "scenario.toml"
RESCHED = Path(__file__).resolve().parent / "data" / "rare" / "resched"
LOOP = "stopped: user_entry > foo > something_else"
THINK = "stopped: user_entry > think"
BUGGY = ("immediate", "stop_machine", "ksplice", "livepatch")
FLUSH = "user_entry > handle > flush_log"


@pytest.fixture(scope="module")
def rare():
    with Runner(scenario.build(scenario.load(RARE))) as r:
        yield r


@pytest.fixture(scope="module")
def seed():
    with Runner(scenario.build(scenario.load(SEED))) as r:
        yield r


def _scenario(tmp_path, body: str, name="s.toml") -> Path:
    path = tmp_path / name
    path.write_text(body.replace("@SEED@", str(EX / "seed")))
    return path


# ---- observing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [SEED, RARE], ids=["seed", "rare"])
def test_the_observer_sees_what_a_fresh_walk_sees_and_changes_nothing(path):
    """Observer skips the walks of tasks that did not run: at every slice its
    answer must be a fresh walk's; and a run observed slice by slice is the
    same run as one left alone."""
    with Runner(scenario.build(scenario.load(path))) as r:
        spec = RunSpec("immediate", 0, "directed", r.first_at)
        plain, _ = r.prepare(spec, pooled=False)
        watched, _ = r.prepare(spec, pooled=False)
        stacks = states.UnwinderStacks()
        obs = states.Observer(watched, stacks)
        checked = []

        def look():
            got = obs.observe()
            on = states.running(watched)
            fresh = {t.name: states.state_of(watched, t, stacks) for t in watched.tasks if t.tid not in on}
            assert got == fresh
            checked.append(len(got))
            return False
        end = r.first_at + 60_000
        watched.run(until=end, stop_when=look, every_slice=True)
        plain.run(until=end)
        assert len(checked) > 50 and sum(checked) > 0
        assert trace_hash(watched) == trace_hash(plain)
        plain.engine.close()
        watched.engine.close()


def test_states_name_the_stack_and_the_patched_functions_open_there():
    s = states.key(states.STOPPED, ("user_entry", "handle", "bar"))
    assert s == "stopped: user_entry > handle > bar"
    assert states.stack_of(s) == ["user_entry", "handle", "bar"]
    assert states.open_functions(s, {"bar", "baz"}) == ["bar"]
    assert states.stack_of(states.USER) == []


# ---- the probe and the directed strategy --------------------------------------------------------
def test_the_probe_sees_the_rare_sleep_of_every_task_and_says_where_it_stopped(rare):
    pr = rare.probe()
    assert set(pr.states) == {"web", "db", "cache", "flusher"}
    for task, seen in pr.states.items():
        assert any(s.endswith("handle > flush_log") for s in seen), (task, seen)
    assert pr.saturated and pr.first_at < pr.last_new < pr.end
    # it ran at least [fuzz] quiet (64) cycles and twice the time to the last new state past it
    assert pr.end - pr.last_new >= max(64 * rare.cycle(), 2 * (pr.last_new - pr.first_at))
    # the rare sleep is rarer than one cycle: a window of one cycle cannot meet it for every task
    assert pr.last_new - pr.first_at > 4 * rare.window()


def test_directed_points_cover_every_state_then_random_and_pct(rare):
    pr, points = rare.probe(), rare.cover_points()
    met = {(task, s) for t in points for task, s in pr.met_all(t).items()}
    assert met == {(task, s) for task, seen in pr.states.items() for s in seen}
    assert len(points) <= pr.total
    for i, t in enumerate(points):
        spec = rare.plan("livepatch", i, strategy="directed")
        assert (spec.start, spec.schedule) == (t, "rr")
    later = [rare.plan("livepatch", len(points) + i, strategy="directed") for i in range(40)]
    assert {s.schedule for s in later} == {"random", "pct"}
    assert all(rare.first_at <= s.start < pr.end for s in later)
    assert max(s.start for s in later) - rare.first_at > rare.window()       # beyond one cycle
    assert later == [rare.plan("livepatch", len(points) + i, strategy="directed") for i in range(40)]


def test_a_run_records_the_states_its_transition_met(rare):
    """A run started where the probe saw db asleep in flush_log meets db there,
    and under livepatch db then gets the new baz() with the old bar()'s count."""
    pr = rare.probe()
    t = next(t for t in rare.cover_points() if pr.met("db", t) == f"stopped: {FLUSH}")
    res = rare.execute(replace(rare.plan("livepatch", 0, strategy="directed"), start=t))
    assert res.met["db"] == f"stopped: {FLUSH}"
    assert res.failing and any(v["task"] == "db" for v in res.violations)


def test_the_rare_bug_is_found_within_100_runs_without_a_window_and_never_under_kgraft(rare):
    assert rare.scn.fuzz.window is None
    for model in BUGGY:
        n = first_failure.runs_to_first_failure(rare, model, "directed", 100)
        assert n is not None and n <= 100, model
    assert first_failure.runs_to_first_failure(rare, "kgraft", "directed", 100) is None


def test_one_cycle_windows_miss_the_rare_bug_where_directed_finds_it(rare):
    """The baseline the directed strategy exists for: exhaustive and random
    start points over one cycle never meet the flush under livepatch."""
    for strategy in ("exhaustive", "random"):
        assert first_failure.runs_to_first_failure(rare, "livepatch", strategy, 60) is None
    assert first_failure.runs_to_first_failure(rare, "livepatch", "directed", 60) <= len(rare.cover_points())


# ---- coverage -----------------------------------------------------------------------------------
def test_the_seed_campaign_meets_every_state_seen_off_a_cpu_within_its_default_runs():
    """Every state the probe saw a task in off its CPU is met. The kthread's
    cond_resched() 25 instructions after it wakes is predicted too, and no
    run meets it there (no transition's work waits for its CPU then): the
    coverage is not complete, and says which state and why."""
    prog = scenario.build(scenario.load(SEED))
    fz = prog.scenario.fuzz
    plan = campaign.Plan(str(SEED), fz.models, list(range(fz.seed, fz.seed + fz.runs)), "directed")
    camp = campaign.Campaign(prog, plan, jobs=1)
    camp.run()
    assert camp.known["probe"].passing == {"kthread": ["stopped: kthread_entry"]}
    for m in camp.summary()["models"]:
        cov = m["coverage"]
        missed = [x for t in cov["tasks"] for x in t["missed"]]
        assert cov["states"] > 0 and cov["met"] == cov["states"] - len(missed), m["model"]
        assert all(x["cond_resched"] for x in missed), m["model"]
        assert cov["complete"] == (not missed)


def test_coverage_counts_met_states_and_names_the_missed_ones(rare):
    pr = rare.probe()
    recs = [rare.execute(rare.plan("kgraft", 0, strategy="directed")).to_json()]
    cov = coverage.coverage(pr, recs)
    assert cov["states"] == pr.total and 0 < cov["met"] < cov["states"] and not cov["complete"]
    missed = [m for t in cov["tasks"] for m in t["missed"]]
    assert missed and len(missed) == cov["states"] - cov["met"]
    assert all(m["state"] in pr.states[t["task"]] for t in cov["tasks"] for m in t["missed"])
    # the patched functions open there: none (flush_log is between bar and baz)
    assert all(m["open"] == [] for m in missed)
    assert coverage.line(cov).startswith(f"coverage {cov['met']}/{cov['states']} states (web ")


def test_coverage_of_a_probe_that_saw_no_state_says_so_in_words():
    """A probe that never saw a task off its CPU lists no state: the line
    says there was nothing to measure (it was 'coverage 0/0 states ()'),
    and counts what the runs met all the same."""
    probe = {"end": 20_000, "last_new": 0, "saturated": False, "fault": None, "quiet": 64}
    for tasks in ([], [{"task": "looper", "states": 0, "met": 0, "missed": [], "unforeseen": []}]):
        cov = {"states": 0, "met": 0, "complete": True, "unforeseen": 0, "tasks": tasks, "probe": probe}
        assert coverage.line(cov) == "coverage: none to measure, the probe saw no state"
    cov["unforeseen"] = 2
    assert coverage.line(cov) == "coverage: none to measure, the probe saw no state; the runs met 2 states it never saw"


def test_a_probe_stopped_by_its_bound_says_whether_a_late_state_came():
    """Stopped by its bound: a state that came late asks for a longer probe;
    nothing new for most of the bound (a task whose cycle is a second, as a
    kthread with no kernel exit or safe point has) says so instead."""
    cov = {"states": 1, "tasks": [], "probe": {"first_at": 20_000, "end": 1_020_000, "last_new": 20_154,
                                              "saturated": False, "fault": None, "quiet": 64}}
    assert coverage.probe_line(cov) == ("probe: stopped at its bound t=1020000, no new state after t=20154\n"
                                        "  (fewer than 64 cycles of the tasks; a rarer path may be unseen: "
                                        "[fuzz] probe)")
    cov["probe"]["last_new"] = 700_000
    assert coverage.probe_line(cov) == ("probe: stopped at its bound t=1020000, a new state still appeared "
                                        "at t=700000: raise [fuzz] probe")


def test_cli_until_covered_stops_when_every_state_was_met(capsys):
    path = str(RESCHED / "scenario-rare.toml")
    assert cli.main(["fuzz", path, "--model", "kgraft", "--until-covered", "--jobs", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = out["models"][0]
    assert m["coverage"]["complete"] and m["coverage"]["states"] == 2 and m["inconsistent"] == 0
    assert m["runs"] < 100               # one round was enough: the directed points come first
    assert cli.main(["fuzz", str(RARE), "--model", "kgraft", "--runs", "3", "--jobs", "1"]) == 0
    text = capsys.readouterr().out
    assert "probe: no new state after" in text and "kgraft: coverage " in text and "never met: " in text
    # the flusher's cond_resched() before its nap: seen only there
    assert "never met: flusher: stopped: kthread_entry (seen only passing cond_resched)" in text


def test_cli_first_failure_table(capsys):
    assert cli.main(["first-failure", str(RARE), "--model", "livepatch", "--model", "kgraft",
                     "--limit", "8", "--json"]) == 0
    rows = {r["model"]: r["runs"] for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["kgraft"] == {"directed": None, "exhaustive": None, "random": None}
    assert rows["livepatch"]["directed"] <= 8 and rows["livepatch"]["exhaustive"] is None
    assert cli.main(["first-failure", str(RARE), "--limit", "0"]) == 2


def test_first_failure_rows_of_scenarios_alike_in_name_say_which_is_which(tmp_path, capsys):
    """x/seed/scenario.toml and y/seed/scenario.toml: each row names its own
    file (both were 'seed/scenario.toml', which could not be told apart)."""
    paths = []
    for top in ("x", "y"):
        shutil.copytree(RARE.parent, tmp_path / top / RARE.parent.name)
        paths.append(tmp_path / top / RARE.parent.name / RARE.name)
    assert cli.main(["first-failure", *map(str, paths), "--model", "kgraft", "--strategy", "random",
                     "--limit", "1", "--json"]) == 0
    assert [r["scenario"] for r in json.loads(capsys.readouterr().out)["rows"]] == [str(p) for p in paths]


# ---- shrinking ----------------------------------------------------------------------------------
LOCKSTEP = """
[program]
sources = ["@SEED@/base.c"]
[machine]
cpus = 4
quantum = 500
[[task]]
name = "worker"
entry = "kthread_entry"
args = [0]
kind = "kthread"
count = 64
[[patch]]
name = "p"
sources = ["@SEED@/patch.c"]
functions = ["bar", "baz"]
[[action]]
at = 20000
do = "enable"
patch = "p"
[check]
observe = { 2 = "value >= 1000" }
"""


def test_64_identical_tasks_shrink_to_one_or_two(tmp_path):
    """64 kthreads in lockstep: dropping any one moves the others in time and
    the run passes at its old start point (a shrinker that keeps the start
    point stops at 11 tasks); looking for the failed state in the smaller
    variant goes on."""
    prog = scenario.build(scenario.load(_scenario(tmp_path, LOCKSTEP)))
    with Runner(prog) as r:
        spec = next(s for s in (r.plan("livepatch", i) for i in range(20)) if r.execute(s).failing)
        small, res, tried = shrink(r, spec, budget=200)
        assert res.failing and tried <= 200
        assert len(small.tasks) <= 2
        assert r.execute(small).trace_hash == res.trace_hash


FAULTY_PATCH = """
#include "lpemu.h"
extern volatile long zero;
extern long total;
__attribute__((noinline)) long bar(void) { return 5000 + zero; }
__attribute__((noinline)) long baz(long f)
{
	if (f < 1000)                     /* an old count: the new baz() trusts its input */
		*(volatile long *)(f * 8) = 1;
	total += f / 1000;
	return 0;
}
"""


def test_a_faulting_run_is_a_finding_and_shrinks(tmp_path, capsys):
    (tmp_path / "patch.c").write_text(FAULTY_PATCH)
    body = LOCKSTEP.replace("count = 64", "count = 6").replace('"@SEED@/patch.c"', '"patch.c"')
    # units of one bar() each: nothing can mix versions; the fault's cause, bar v0's count handed
    # to baz v1, is the other finding (a value handover needs no unit)
    path = _scenario(tmp_path, body.replace('observe = { 2 = "value >= 1000" }', 'unit = "bar"'))
    prog = scenario.build(scenario.load(path))
    with Runner(prog) as r:
        spec = next(s for s in (r.plan("livepatch", i) for i in range(20)) if r.execute(s).outcome == "fault")
        res = r.execute(spec)
        assert not res.inconsistencies and not res.violations
        assert res.fault_task.startswith("worker") and "guest fault" in res.fault
        assert any(h["producer"] == "bar" and h["producer_version"] == 0 and h["consumer"] == "baz"
                   and h["consumer_version"] == 1 for h in res.handovers)
        small, sres, tried = shrink(r, spec, budget=120)
        assert sres.outcome == "fault" and len(small.tasks) < 6
    plan = campaign.Plan(str(path), ["livepatch"], list(range(spec.seed + 1)), "directed")
    camp = campaign.Campaign(prog, plan, jobs=1)
    camp.run()
    m = camp.summary()["models"][0]
    assert m["first_fault_seed"] == spec.seed and "guest fault in task" in m["first_fault"]
    assert cli.main(["replay", str(path), "--model", "livepatch", "--seed", str(spec.seed),
                     "--shrink", "--budget", "60", "--json"]) == 1      # a fault is a finding
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "fault" and out["shrunk_from"]["seed"] == spec.seed and out["failing"] == ["handover", "fault"]


def test_directed_is_the_default_strategy(rare):
    assert rare.scn.fuzz.strategy == "directed"
    assert rare.plan("kgraft", 0) == rare.plan("kgraft", 0, strategy="directed")


def test_the_probe_key_is_checked(tmp_path):
    body = LOCKSTEP.replace("count = 64", "count = 1") + "[fuzz]\nprobe = -1\n"
    with pytest.raises(Exception, match="fuzz.probe"):
        scenario.load(_scenario(tmp_path, body))
    for bad in ("quiet = 0", "quiet = 2.5", 'quiet = "long"'):
        body = LOCKSTEP.replace("count = 64", "count = 1") + f"[fuzz]\n{bad}\n"
        with pytest.raises(scenario.ScenarioError, match="fuzz.quiet"):
            scenario.load(_scenario(tmp_path, body))


# ---- the cover, on generated timelines ----------------------------------------------------------
@st.composite
def probes(draw):
    """A probe's timelines: per task, runs of equal states at increasing times."""
    pr = Probe(first_at=draw(st.integers(0, 50)))
    for n in range(draw(st.integers(1, 4))):
        task = f"t{n}"
        names = [f"stopped: f{k}" for k in range(draw(st.integers(1, 4)))]
        t, prev, tl = pr.first_at, None, []
        for _ in range(draw(st.integers(1, 12))):
            t += draw(st.integers(1, 40))
            first = t
            t += draw(st.integers(0, 30))
            k = draw(st.integers(0, len(names) - 1).filter(lambda k: k != prev) if len(names) > 1
                     else st.just(0))
            if k == prev:
                continue
            tl.append((t, first, k))
            prev = k
        used = sorted({k for _, _, k in tl})
        remap = {k: i for i, k in enumerate(used)}
        pr.states[task] = [names[k] for k in used]
        pr.timeline[task] = [(a, b, remap[k]) for a, b, k in tl]
    return pr


@given(probes(), st.integers(0, 700))
@settings(max_examples=200, deadline=None)
def test_met_is_the_first_run_of_states_not_over_before_t(pr, t):
    for task, tl in pr.timeline.items():
        want = next((pr.states[task][k] for last, _, k in tl if last >= t), None)
        assert pr.met(task, t) == want


@given(probes())
@settings(max_examples=200, deadline=None)
def test_the_cover_meets_every_state_of_every_task(pr):
    points = pr.cover()
    met = {(task, s) for t in points for task, s in pr.met_all(t).items()}
    assert met == {(task, s) for task, seen in pr.states.items() for s in seen}
    assert len(points) == len(set(points)) <= pr.total
    # the greedy order: no later point meets more new pairs than an earlier one did
    seen, gains = set(), []
    for t in points:
        new = set(pr.met_all(t).items()) - seen
        assert new
        gains.append(len(new))
        seen |= new
    assert gains == sorted(gains, reverse=True)
    assert pr.cover() == points


# ---- states at a cond_resched() -----------------------------------------------------------------
@pytest.fixture(scope="module")
def resched():
    """Runners of tests/data/rare/resched/: the long path on every request
    (the first action in it, or in the nap before it) or on one in 40."""
    runners = {name: Runner(scenario.build(scenario.load(RESCHED / f"{name}.toml")))
               for name in ("scenario", "scenario-asleep", "scenario-rare")}
    yield runners
    for r in runners.values():
        r.close()


def test_a_cond_resched_passed_alone_is_predicted_where_the_old_probe_read_complete(resched):
    """The seed's bug behind 40 cond_resched() calls on one request in 40,
    the task alone on its CPU: off its CPU the probe sees it only asleep in
    think(), and a coverage of those states alone (the probe before it
    heard cond_resched) read complete after the one directed run, which met
    the task asleep and found nothing. The state in the loop is predicted
    now: that coverage is not complete, and names it."""
    r = resched["scenario-rare"]
    pr = r.probe()
    assert pr.states == {"u": [THINK, LOOP]} and pr.passing == {"u": [LOOP]}
    old = Probe(pr.first_at, end=pr.end, states={"u": [THINK]}, patched=pr.patched)
    first = r.execute(r.plan("livepatch", 0))
    assert first.met == {"u": THINK} and not first.failing
    assert coverage.coverage(old, [first.to_json()])["complete"]
    cov = coverage.coverage(pr, [first.to_json()])
    assert not cov["complete"] and (cov["met"], cov["states"]) == (1, 2)
    assert cov["tasks"][0]["missed"] == [{"state": LOOP, "open": [], "cond_resched": True}]


@pytest.mark.parametrize("name", ["scenario", "scenario-asleep", "scenario-rare"])
def test_directed_runs_meet_the_state_at_a_cond_resched_and_find_the_bug(resched, name):
    """The directed point for the loop's state starts the transition just
    after the task's previous scheduling point (its kernel exit after the
    nap; or the first action, the task in the loop then): every model's
    work waits for the one CPU, takes it at the next cond_resched(), and
    meets the task there; every model but kGraft gives it the new baz()
    with the old bar()'s count. The two directed runs cover every state."""
    r = resched[name]
    pr = r.probe()
    points = r.cover_points()
    assert len(points) == 2 and pr.passing == {"u": [LOOP]}
    at = next(t for t in points if pr.met("u", t) == LOOP)
    i = points.index(at)
    for model in r.scn.fuzz.models:
        spec = r.plan(model, r.scn.fuzz.seed + i)
        assert spec.start == at
        res = r.execute(spec)
        assert res.met == {"u": LOOP}, model
        assert res.failing == (model != "kgraft"), model
        other = r.execute(r.plan(model, r.scn.fuzz.seed + 1 - i))
        cov = coverage.coverage(pr, [res.to_json(), other.to_json()])
        assert cov["complete"] and not cov["unforeseen"], model


def test_the_probe_hears_every_cond_resched_and_changes_nothing(resched):
    """The probe's run is the run left alone (the scheduler comes back for
    every cond_resched() only to be heard), under the C scheduler and its
    Python twin: the same trace, and one pass heard per EV_YIELD."""
    from emu.machine.machine import EV_YIELD
    hashes = set()
    for sched in ("c", "python"):
        r = Runner(resched["scenario"].program, sched=sched)
        spec = RunSpec("immediate", 0, "directed", r.first_at, draws=0)
        probed, _ = r.prefix(spec)
        plain, _ = r.prefix(spec)
        passes = states.Passes(probed, states.UnwinderStacks())
        probed.listeners.append(passes)
        heard = []
        probed.drain()
        before = len(probed.trace)
        probed.run(until=r.first_at + 40_000, stop_when=lambda: heard.extend(passes.take()), every_slice=True)
        plain.run(until=r.first_at + 40_000)
        probed.drain()
        assert len(heard) == len(probed.trace.of_kind(EV_YIELD, before)) > 100
        assert {s for _, s, _ in heard} == {LOOP}
        hashes |= {trace_hash(probed), trace_hash(plain)}
        probed.engine.close()
        plain.engine.close()
    assert len(hashes) == 1


def test_the_shrinker_finds_a_state_at_a_cond_resched_in_a_variant(resched):
    """find_state hears cond_resched() too: the points it gives for the
    loop's state are points where a run meets the task there."""
    from emu.runs.probe import find_state
    r = resched["scenario-rare"]
    m, _ = r.prefix(replace(r.plan("stop_machine", 0), start=r.first_at))
    try:
        points = find_state(m, LOOP, tasks={"u"}, until=r.probe().end, count=2)
    finally:
        m.engine.close()
    assert len(points) == 2
    for t in points:
        res = r.execute(replace(r.plan("stop_machine", 0), start=t))
        assert res.met == {"u": LOOP} and res.failing


@pytest.mark.parametrize("kernel,met", [("6.8", True), ("6.16", False)])
def test_livepatch_meets_a_pending_task_at_the_cond_resched_where_it_checks_it(kernel, met):
    """A CPU-bound kthread that never leaves its CPU (a CPU to spare for the
    kworker): from 6.4 to 6.15 klp_cond_resched() checks the pending task's
    own stack at its cond_resched(), so the transition meets it there, in
    the state the probe predicts for that pass; from 6.16 a plain
    cond_resched() is no check, and nothing meets it."""
    path = Path(__file__).parent / "data/heldout/cond-resched-outside/scenario.toml"
    r = Runner(scenario.build(scenario.load(path)))
    try:
        predicted = {(t, s) for t, ss in r.probe().states.items() for s in ss}
        res = r.execute(replace(r.plan("livepatch", 0), kernel=kernel))
    finally:
        r.close()
    assert res.transitions[0]["result"] == ("completed" if met else "pending")
    if met:
        assert ("cruncher", res.met["cruncher"]) in predicted
    else:
        assert "cruncher" not in res.met


@pytest.mark.parametrize("model", ["stop_machine", "ksplice"])
@pytest.mark.parametrize("path", ["emu/seed/scenario.toml", "examples/rare/scenario.toml"])
def test_stop_machine_meets_each_task_where_its_first_stop_finds_it(monkeypatch, model, path):
    """The activeness check reads every task's stack once every CPU has
    stopped: the state a run's transition met is each task's state at its
    first stop, not where the task stood while the work registered its
    ftrace handlers before asking for the stop (the tasks run on then)."""
    from emu.models import stop_machine as sm
    seen: list[dict] = []
    for cls in (sm.StopMachine, sm.Ksplice):
        real = cls.__dict__["check_tasks"]

        def check_tasks(self, ranges, real=real):
            if not seen[-1]:
                seen[-1].update({t.name: states.state_of(self.m, t, r.stacks) for t in self.m.tasks
                                 if not t.is_idle and not (t.unborn and t.state.name == "EXITED")})
            return real(self, ranges)
        monkeypatch.setattr(cls, "check_tasks", check_tasks)
    r = Runner(scenario.build(scenario.load(Path(__file__).parent.parent / path)))
    try:
        for seed in range(24):
            seen.append({})
            res = r.execute(r.plan(model, seed, strategy="directed"))
            assert res.met == seen[-1], seed
    finally:
        r.close()


def test_a_first_transition_that_failed_before_looking_leaves_the_next_one_observed(monkeypatch):
    """Ksplice's first update fails in its pre hooks, before any stop (no
    task looked at); the second update stops every CPU and checks them: the
    run meets each task where that stop finds it. The observer waited on
    the first transition alone and met nothing."""
    from emu.models import stop_machine as sm
    real = sm.Ksplice._pre_hooks
    monkeypatch.setattr(sm.Ksplice, "_pre_hooks",
                        lambda self, t, patch, target: patch.name != "p1" and real(self, t, patch, target))
    path = Path(__file__).parent / "data/heldout/stacked-disable/scenario.toml"
    r = Runner(scenario.build(scenario.load(path)))
    try:
        res = r.execute(r.plan("ksplice", 0))
    finally:
        r.close()
    assert [t["result"] for t in res.transitions][:2] == ["failed", "completed"]
    assert set(res.met) == {"user0", "user1", "user2"}        # the scenario's three users


def test_a_stop_forced_before_its_check_looks_at_no_task(tmp_path):
    """lpemu's force of kpatch, written before the first stop, skips the
    activeness check: that transition looked at no task (checked_at stays
    unset) and the run meets no state, where the same run unforced meets
    each task at its stop. The stop counted as a look whether or not it
    checked, and the run met every task after a switch that had looked at
    none."""
    base = SEED.read_text().replace('sources = ["base.c"]', f'sources = ["{EX / "seed" / "base.c"}"]') \
        .replace('sources = ["patch.c"]', f'sources = ["{EX / "seed" / "patch.c"}"]')
    force = '\n[[action]]\nat = 20001\ndo = "force"\npatch = "seed_patch"\n'
    for forced in (False, True):
        path = _scenario(tmp_path, base.replace("[check]", force + "\n[check]") if forced else base)
        with Runner(scenario.build(scenario.load(path))) as r:
            for seed in range(2):
                res, m, model = r.execute(r.plan("stop_machine", seed), keep=True)
                m.engine.close()
                assert [(t["result"], t["attempts"]) for t in res.transitions] == [("completed", 1)]
                assert not res.errors
                assert (model.transitions[0].checked_at is None) == forced
                assert (res.met == {}) == forced, res.met
