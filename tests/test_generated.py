"""Generated scenarios (emu/runs/generate.py) under every model: each run
ends by its scenario's rules, repeats and the scheduler's Python twin give
the same trace, and every model keeps its promise (emu/runs/soak.py). A
bounded number here; `make soak` runs thousands."""
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.engine import unwind
from emu.machine.machine import Machine
from emu.machine.task import RunState
from emu.runs import campaign, scenario
from emu.runs.fuzz import Runner
from emu.runs.generate import generate
from emu.errors import EventBound
from emu.runs.soak import BOUNDED, check_scenario

ROOT = Path(__file__).resolve().parent.parent


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_generated_scenarios_keep_every_promise(seed):
    result = check_scenario(seed)
    assert result["runs"] > 0
    assert result["breaches"] == []


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from(["directed", "random", "pct", "exhaustive"]))
def test_a_generated_run_is_the_same_run_wherever_it_runs(seed, strategy):
    """The same (scenario, model, seed) is the same run, event for event,
    however it is run: on a fresh machine (what `lpemu replay` runs), on a
    pooled machine restored from a snapshot after other runs of the same
    runner (in any order), in a campaign of one worker or of two (forked
    workers that keep their runner across batches), and in another process
    with another hash seed (`lpemu replay --json`)."""
    runs = [(model, s) for model in scenario.MODELS for s in (0, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = generate(seed, Path(tmp))
        prog = scenario.build(scenario.load(path))
        fresh = {}
        with Runner(prog) as runner:
            for model, s in runs:
                res, m, _ = runner.execute(runner.plan(model, s, strategy=strategy), keep=True)
                m.engine.close()
                fresh[model, s] = res.trace_hash
        with Runner(prog) as pooled:
            order = runs * 2
            random.Random(seed).shuffle(order)
            for model, s in order:
                assert pooled.execute(pooled.plan(model, s, strategy=strategy)).trace_hash == fresh[model, s], \
                    (model, s, "pooled")
        for jobs in (1, 2):
            plan = campaign.Plan(str(path), list(scenario.MODELS), [0, 1], strategy)
            c = campaign.Campaign(prog, plan, jobs=jobs, batch=3)
            c.run()
            assert {k: r.get("trace_hash", r.get("error")) for k, r in c.records.items()} == fresh, f"--jobs {jobs}"
        model, s = runs[seed % len(runs)]
        env = dict(os.environ, PYTHONHASHSEED=str(seed % 1000 + 1))
        out = subprocess.run([sys.executable, "-m", "emu", "replay", str(path), "--model", model, "--seed", str(s),
                              "--strategy", strategy, "--json"], capture_output=True, text=True, env=env, cwd=ROOT)
        assert out.returncode in (0, 1), out.stderr
        assert json.loads(out.stdout)["trace_hash"] == fresh[model, s], (model, s, "lpemu replay")


def test_make_explore_draws_new_examples_for_every_generated_test():
    """The profiles (tests/conftest.py) decide whether a test's examples are
    fixed (make test) or new (make explore): a test whose own @settings
    fix derandomize is never explored (the two tests above were, until
    they left it to the profile)."""
    fixed = [f"{p.name}:{i}" for p in sorted((ROOT / "tests").glob("test_*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"derandomize\s*=", line)]
    assert fixed == []


def test_the_generator_is_deterministic(tmp_path):
    a, shape_a = generate(7, tmp_path / "a")
    b, shape_b = generate(7, tmp_path / "b")
    assert shape_a == shape_b
    assert [p.read_text() for p in sorted(a.parent.iterdir())] == [p.read_text() for p in sorted(b.parent.iterdir())]


def test_the_generator_varies_what_it_promises():
    shapes = []
    with tempfile.TemporaryDirectory() as d:
        for seed in range(60):
            shapes.append(generate(seed, Path(d) / str(seed))[1])
    for knob, values in {"opt": {"-O0", "-O2"}, "preempt": {"none", "voluntary", "full"},
                         "unwinder": {"orc", "fp"}, "cpus": {1, 2, 3, 4, 5, 6, 7, 8}, "patches": {1, 2},
                         "recursion": {True, False}, "tail_calls": {True, False}}.items():
        assert {getattr(s, knob) for s in shapes} == values, knob
    assert {a for s in shapes for a in s.actions} == {"enable", "disable", "force", "load", "unload"}
    assert any(s.kthreads for s in shapes) and any(s.users >= 16 for s in shapes)
    # the second generator's knobs: each at its default and not
    assert {s.module for s in shapes} == {None, "hooked", "unloaded"}
    assert {s.unit for s in shapes} == {"syscall", "f0"} and {s.shadow for s in shapes} == {True, False}
    assert None in {s.kernel for s in shapes} and len({s.kernel for s in shapes}) > 5
    assert None in {s.tick for s in shapes} and len({s.tick for s in shapes}) > 2
    assert max(s.cpus for s in shapes) > 4
    # the third one's
    for knob in ("exits", "pinned", "states"):
        assert {getattr(s, knob) for s in shapes} == {True, False}, knob
    # the fourth one's
    assert {s.rare for s in shapes} == {None, "counter", "rdrand"}


def test_a_classic_scenario_has_none_of_the_second_generators_knobs(tmp_path):
    """generate(extended=False) writes a seed's scenario as it was before
    the second generator came (the regression tests below name those)."""
    for seed in range(40):
        _, shape = generate(seed, tmp_path / str(seed), extended=False)
        assert (shape.kernel, shape.tick, shape.unit, shape.shadow, shape.module, shape.exits, shape.pinned,
                shape.states, shape.rare) == (None, None, "syscall", False, None, False, False, False, None)
        assert shape.cpus <= 4
        text = (tmp_path / str(seed) / "scenario.toml").read_text()
        assert not any(key in text for key in ("kernel", "[[module]]", "tick", "states", "cpu ="))


# ---- what generated scenarios found, kept as plain regression tests ---------------------------

def test_a_stop_machine_run_left_pending_does_not_break_the_next_run():
    """Generated seed 1080: stop_machine keeps failing -EBUSY (a kthread is
    always in a patched function) and the run ends with the transition
    pending; the pooled machine must not poison the next run of the
    same spec (it raised 'images were loaded since the snapshot')."""
    result = check_scenario(1080, twins=False, extended=False)
    assert result["outcomes"]["stop_machine"] == "failed"
    assert result["breaches"] == []


def test_a_forced_kgraft_transition_is_not_held_to_one_universe_per_unit():
    """Generated seed 1167: a forced unmark switches tasks mid-syscall, so
    their units mix universes by the user's choice, not the model's fault."""
    result = check_scenario(1167, twins=False, extended=False)
    assert "force" in result["shape"]["actions"]
    assert result["breaches"] == []


def test_immediate_changes_a_patchs_sites_in_one_batch():
    """Generated seed 2: the immediate model wrote each function's site in
    its own text_poke_bp batch, so a task ran f2 v0 after another function
    of the patch had run its new version (the promise oracle's 'together')."""
    result = check_scenario(2, twins=False, extended=False)
    assert result["breaches"] == []


def test_immediate_switches_a_stacked_patchs_functions_at_one_instant():
    """Generated seeds 282 and 445: p1 patches f0 (a NOP site) and f1 (live
    since p0 patched it). f1's new version went onto its stack at the write
    to `enabled`, f0's site only when the work had a CPU, so a task ran p1's
    f1 and then the original f0 (the promise oracle's 'together')."""
    for seed in (282, 445):
        result = check_scenario(seed, twins=False, extended=False)
        assert result["breaches"] == [], seed


def test_a_task_preempted_at_the_trampoline_is_not_between_kernel_entries():
    """Generated seed 1369 (fp, full preemption): a task preempted at
    ftrace_trampoline+0, called from f3's fentry inside f0, passed the
    batched stack check as a task between kernel entries (the whole runtime
    page was taken for the task loops), so livepatch switched it with f0 on
    its stack. kpatch's frame-pointer check misses the same two frames in
    the kernel: the promise oracle holds stop_machine to what it can see."""
    result = check_scenario(1369, twins=False, extended=False)
    assert result["breaches"] == []


NAP = """
long (*volatile hook)(long x);

__attribute__((noinline, noclone)) long nap(long x)
{
	lpemu_sleep(1000);
	long (*h)(long) = hook;
	if (h)
		x = h(x);
	return x + 1;
}

__attribute__((noinline, noclone)) long outer(long x)
{
	x = nap(x);
	return x * 3;
}

long entry(long i)
{
	return outer(i);
}
"""


@pytest.mark.parametrize("unwinder", ["fp", "orc"])
def test_a_task_asleep_where_its_function_has_no_frame_yet_keeps_its_caller(compile_c, unwinder):
    """Generated seed 577000 (fp): nap() calls only on one path, so gcc set
    up its frame on that path alone (shrink-wrapping) and the sleep
    hypercall ran before it; the frame-pointer walk of a task asleep there
    skipped outer(), and livepatch switched a task with a patched function
    on its stack. A hypercall is a call into the kernel, and the frame is
    set up before any call (lpemu.h: the kernel's ASM_CALL_CONSTRAINT):
    both walks see nap() and outer()."""
    base = compile_c(NAP)
    m = Machine(base, cpus=1, unwinder=unwinder)
    m.add_task("sleeper", "entry", (0,))
    m.start()
    m.run(until=m.seconds(1))
    task = m.tasks[0]
    assert task.state is RunState.SLEEPING
    code, entries = m.stack(task)
    names = [base.function_at(a).name if base.function_at(a) else None for a in entries]
    assert code == unwind.WALK_OK and names[:2] == ["nap", "outer"], names


def test_generated_seed_577000_keeps_every_promise():
    """The scenario the test above was reduced from: livepatch and
    stop_machine switched tasks with f0 on their stacks (fp unwinder)."""
    result = check_scenario(577000, twins=False)
    assert result["shape"]["unwinder"] == "fp"
    assert result["breaches"] == []


def test_a_module_that_goes_during_kpatchs_retries_leaves_nothing_to_release():
    """Generated seed 909056: p0 carries m0:mod_fn; m0 is loaded and then
    unloaded while stop_machine retries p0's enable (-EBUSY); when the
    retries gave up, releasing the ftrace ops of p0's functions read the
    unbound m0 function (its going notifier had released its ops already)
    and raised AttributeError."""
    result = check_scenario(909056, twins=False)
    assert result["breaches"] == []
    assert result["outcomes"]["stop_machine"] in ("failed", "completed", "stalled")


def test_a_run_refused_at_the_event_bound_is_no_breach():
    """Generated seed 909207 (livepatch, the newest kernel): every user task
    has exited and the kthread, always inside f0 and on its CPU, holds the
    transition for the whole 20 s horizon (tick 3000), well past the events
    a run may keep. The runner refuses that input (EventBound, exit 2 in
    lpemu); the soak counted the refusal as a breach of the emulator. It is
    counted as the run's outcome instead, and must be the same refusal in
    the repeat and in the scheduler's Python twin."""
    result = check_scenario(909207)
    assert result["outcomes"]["livepatch"] == BOUNDED
    assert result["breaches"] == []


def test_a_refusal_at_the_event_bound_that_a_repeat_does_not_give_is_a_breach(monkeypatch):
    """Accepting the refusal must not hide a run that is not repeatable:
    a repeat that stays within the bound is still a breach."""
    refusals = []
    real = Runner.execute

    def first_refused(self, spec, **kw):
        if spec.model == "livepatch" and not refusals:
            refusals.append(spec)
            raise EventBound("the run reached 1_000_000 events by t=1")
        return real(self, spec, **kw)

    monkeypatch.setattr(Runner, "execute", first_refused)
    result = check_scenario(2, twins=False, extended=False)
    assert [(b["model"], b["what"]) for b in result["breaches"]] == [("livepatch", "repeat")]


def test_a_module_going_during_a_stop_machine_attempt_waits_for_it():
    """Generated seed 130201 (ksplice, 8 CPUs): p0 carries m0:mod_fn; m0's
    rmmod finished while an attempt of p0's enable held the core's mutex
    (waiting for every CPU to stop), its going notifier unbound mod_fn from
    under the attempt, and the activeness check read the unbound function
    (AttributeError). The going notifier waits for the attempt, as the
    coming one does."""
    result = check_scenario(130201, twins=False)
    assert result["shape"]["module"] == "unloaded"
    assert result["breaches"] == []
    assert result["outcomes"]["ksplice"] in ("failed", "completed", "stalled")
