"""Scenarios that say what they mean: instances of a `count = N` task
differ by an index template or by a list of argument lists, a bad template
is bad input naming file, task and key, and `[fuzz] until` says when a run
ends (the default: once every transition has ended, at the latest the
horizon after the last action)."""
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from emu.engine import core
from emu.errors import ScenarioError
from emu.runs import scenario
from emu.runs.fuzz import Runner

BASE = """
#include "lpemu.h"
long user(long id, long extra) {
    for (;;) { lpemu_observe(id, extra); lpemu_return_to_user(); lpemu_sleep(1); }
}
long counted(long n) {
    for (long k = 0; k < n; k++) { lpemu_observe(7, k); lpemu_sleep(1); }
    return 0;
}
"""


def scenario_file(tmp_path, tasks: str, fuzz: str = "", actions: str = "") -> scenario.Scenario:
    (tmp_path / "base.c").write_text(BASE)
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(f"""
        [program]
        sources = ["base.c"]
        [machine]
        cpus = 2
        quantum = 300
        """) + textwrap.dedent(tasks) + textwrap.dedent(actions) + "[fuzz]\nmodels = [\"immediate\"]\n"
        + textwrap.dedent(fuzz))
    return path


def observed(m) -> dict[str, set]:
    """task name -> the (key, value) pairs it observed."""
    out: dict = {}
    for clock, kind, task, key, value, _ in m.trace.records():
        if kind == core.EV_OBSERVE:
            out.setdefault(m.tasks[task].name, set()).add((key, value))
    return out


def run(path, model="immediate"):
    r = Runner(scenario.build(scenario.load(path)))
    res, m, _ = r.execute(r.plan(model, 0), keep=True)
    return r, res, m


@given(st.integers(1, 6), st.integers(-1000, 1000), st.integers(1, 50))
@settings(max_examples=40, deadline=None)
def test_an_index_template_gives_each_instance_its_own_arguments(count, add, mul):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        path = scenario_file(Path(d), f"""
            [[task]]
            name = "w"
            entry = "user"
            args = ["{{i}}", "({{i}} + {add}) * {mul} % 7919"]
            count = {count}
            """)
        t = scenario.load(path).tasks[0]
        assert [t.instance_args(i) for i in range(count)] == [(i, (i + add) * mul % 7919) for i in range(count)]


def test_instances_run_with_their_own_arguments(tmp_path):
    path = scenario_file(tmp_path, """
        [[task]]
        name = "w"
        entry = "user"
        args = ["{i}", "{i} * 100 + 1"]
        count = 3
        [[task]]
        name = "v"
        entry = "user"
        args = [[10, 5], [11, 6]]
        count = 2
        [[task]]
        name = "same"
        entry = "user"
        args = [20, 9]
        count = 2
        """)
    r, res, m = run(path)
    try:
        seen = observed(m)
        assert seen == {"w0": {(0, 1)}, "w1": {(1, 101)}, "w2": {(2, 201)}, "v0": {(10, 5)}, "v1": {(11, 6)},
                        "same0": {(20, 9)}, "same1": {(20, 9)}}
    finally:
        m.engine.close()
        r.close()


@pytest.mark.parametrize("args, words", [
    ('["{j}"]', r"task\[0\]\.args: task 'w': '\{j\}' is not an argument template \(unknown placeholder \{j\}"),
    ('["{i} + x"]', r"unexpected 'x'"),
    ('["12"]', r"no \{i\} in it"),
    ('["{i} // 0"]', r"division by zero for i = 0"),
    ('["{i} ** 2"]', r"only integers, \{i\}"),
    ('["({i}"]', r"not an expression"),
    ('["{i} * 9223372036854775807 * 4"]', r"does not fit in 64 bits"),
    ('[[1], [2]]', r"2 argument lists for count = 3"),
    ('[[1], 2, [3]]', r"mixes lists and single arguments"),
    ('[[1, 2, 3, 4, 5, 6, 7], [1], [2]]', r"at most 6 arguments"),
    ('[["{i}"], [1], [2]]', r"must be a list of 64-bit integers, not one holding string"),
    ('[true]', r"not one holding boolean"),
])
def test_a_bad_template_is_bad_input_naming_file_task_and_key(tmp_path, args, words):
    path = scenario_file(tmp_path, f"""
        [[task]]
        name = "w"
        entry = "user"
        args = {args}
        count = 3
        """)
    with pytest.raises(ScenarioError, match=words) as info:
        scenario.load(path)
    assert str(info.value).startswith(f"{path}:")
    assert "task 'w'" in str(info.value) and "args" in str(info.value)


def test_the_cli_exits_2_on_a_bad_template(tmp_path, capsys):
    from emu.app.cli import main
    path = scenario_file(tmp_path, """
        [[task]]
        name = "w"
        entry = "user"
        args = ["{k}"]
        count = 2
        """)
    assert main(["run", str(path), "--model", "immediate"]) == 2
    err = capsys.readouterr().err
    assert "s.toml:" in err and "task 'w'" in err and "args" in err and "Traceback" not in err


COUNTED = """
    [[task]]
    name = "c"
    entry = "counted"
    args = [30]
    kind = "kthread"
    """
LOAD_ONLY = """
    [[task]]
    name = "u"
    entry = "user"
    args = [1, 2]
    """


def test_a_run_without_a_transition_ends_two_cycles_after_its_last_action_by_default(tmp_path):
    # the default: nothing is in transition, so the run ends soon after the
    # last action (here: the start), far before the horizon
    path = scenario_file(tmp_path, LOAD_ONLY, fuzz="horizon = 2.0\n")
    r, res, m = run(path)
    try:
        assert res.outcome == "idle"
        assert res.end <= 2 * r.cycle() + 1000 < m.seconds(2)
    finally:
        m.engine.close()
        r.close()


def test_until_horizon_runs_the_whole_horizon_after_the_last_action(tmp_path):
    path = scenario_file(tmp_path, LOAD_ONLY, fuzz='horizon = 2.0\nuntil = "horizon"\n')
    r, res, m = run(path)
    try:
        assert res.end >= m.seconds(2)
        # the user task observed all along: one system call per tick or so
        assert sum(1 for e in m.trace.records() if e[1] == core.EV_OBSERVE) > 150
    finally:
        m.engine.close()
        r.close()


def test_until_exit_ends_when_every_task_has_exited(tmp_path):
    # the kthread observes 30 times, one tick apart, and returns (exits)
    path = scenario_file(tmp_path, COUNTED, fuzz='horizon = 5.0\nuntil = "exit"\n')
    r, res, m = run(path)
    try:
        assert {v for _, v in observed(m)["c"]} == set(range(30))
        assert m.seconds(0.3) <= res.end < m.seconds(1) and not res.warnings
    finally:
        m.engine.close()
        r.close()


def test_until_exit_warns_when_tasks_outlive_the_horizon(tmp_path):
    path = scenario_file(tmp_path, LOAD_ONLY, fuzz='horizon = 0.5\nuntil = "exit"\n')
    r, res, m = run(path)
    try:
        assert res.end >= m.seconds(0.5)
        assert any("still running at the horizon (u)" in w for w in res.warnings)
    finally:
        m.engine.close()
        r.close()


def test_a_bad_until_is_refused_by_name(tmp_path):
    path = scenario_file(tmp_path, LOAD_ONLY, fuzz='until = "forever"\n')
    with pytest.raises(ScenarioError, match=r"fuzz\.until: must be one of transitions, horizon, exit"):
        scenario.load(path)
