"""Generated scenarios (emu/runs/generate.py) under every model: each run
ends by its scenario's rules, repeats and the scheduler's Python twin give
the same trace, and every model keeps its promise (emu/runs/soak.py). A
bounded number here; `make soak` runs thousands."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.runs.generate import generate
from emu.runs.soak import check_scenario


#: breaches of the promise oracle (emu/runs/promise.py) the emulator is known
#: to commit: "running" is #14 item 1 (kernel work occupies no CPU, so
#: livepatch's stack check switches a task a CPU is running); "together" is
#: the immediate model changing a patch's sites one function at a time (each
#: function's ftrace ops its own text_poke_bp batch), not in one sync.
KNOWN = {"running": "#14 item 1", "together": "immediate: one text batch per function"}


@pytest.mark.xfail(reason="#14 item 1 (kernel work does not occupy a CPU: the promise oracle's 'running' "
                          "breach) and immediate's per-function text batches ('together'); "
                          "test_no_generated_scenario_breaks_an_unknown_promise holds every other rule",
                   strict=False)
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_generated_scenarios_keep_every_promise(seed):
    result = check_scenario(seed)
    assert result["runs"] > 0
    assert result["breaches"] == []


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_no_generated_scenario_breaks_an_unknown_promise(seed):
    result = check_scenario(seed)
    assert result["runs"] > 0
    unknown = [b for b in result["breaches"] if b["what"] != "promise" or not set(b["rules"]) <= set(KNOWN)]
    assert unknown == []


def test_the_generator_is_deterministic(tmp_path):
    a, shape_a = generate(7, tmp_path / "a")
    b, shape_b = generate(7, tmp_path / "b")
    assert shape_a == shape_b
    assert [p.read_text() for p in sorted(a.parent.iterdir())] == [p.read_text() for p in sorted(b.parent.iterdir())]


def test_the_generator_varies_what_it_promises():
    shapes = []
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        for seed in range(60):
            shapes.append(generate(seed, Path(d) / str(seed))[1])
    for knob, values in {"opt": {"-O0", "-O2"}, "preempt": {"none", "voluntary", "full"},
                         "unwinder": {"orc", "fp"}, "cpus": {1, 2, 3, 4}, "patches": {1, 2},
                         "recursion": {True, False}, "tail_calls": {True, False}}.items():
        assert {getattr(s, knob) for s in shapes} == values, knob
    assert {a for s in shapes for a in s.actions} == {"enable", "disable", "force"}
    assert any(s.kthreads for s in shapes) and any(s.users >= 16 for s in shapes)


# ---- what generated scenarios found, kept as plain regression tests ---------------------------

def test_a_stop_machine_run_left_pending_does_not_break_the_next_run():
    """Generated seed 1080: stop_machine keeps failing -EBUSY (a kthread is
    always in a patched function) and the run ends with the transition
    pending; the pooled machine must not poison the next run of the
    same spec (it raised 'images were loaded since the snapshot')."""
    result = check_scenario(1080, twins=False)
    assert result["outcomes"]["stop_machine"] == "failed"
    # with kernel work on a CPU the scenario's immediate run shows the known
    # 'together' breach of the promise oracle (KNOWN above), nothing else
    assert all(b["model"] == "immediate" and b["what"] == "promise" and set(b["rules"]) <= {"together"}
               for b in result["breaches"])


def test_a_forced_kgraft_transition_is_not_held_to_one_universe_per_unit():
    """Generated seed 1167: a forced unmark switches tasks mid-syscall, so
    their units mix universes by the user's choice, not the model's fault."""
    result = check_scenario(1167, twins=False)
    assert "force" in result["shape"]["actions"]
    assert [b for b in result["breaches"] if b["model"] == "kgraft"] == []
    # the scenario's immediate run shows the known 'together' breach (KNOWN above), nothing else
    assert all(b["what"] == "promise" and set(b["rules"]) <= set(KNOWN) for b in result["breaches"])
