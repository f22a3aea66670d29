"""A reliable-stack check at depth 16 (walk, then the checked ranges, as the
livepatch model does it) of 64 sleeping tasks: one emu_check_stacks call
against the Python twin (registers through the binding, the stack copied,
emu.engine.unwind.check_stack) task by task."""
import pytest

from emu.app import bench
from emu.engine import core
from emu.engine import unwind

TASKS, DEPTH = 64, 16


@pytest.fixture(scope="module")
def sleepers(ctx):
    m = bench._sleepers(ctx, TASKS, DEPTH)
    checked = core.Ranges([(m.function("leaf").start, m.function("leaf").end)])
    empty = (m.runtime.base, m.runtime.base + m.runtime.size)
    yield m, checked, empty
    m.engine.close()


@pytest.mark.benchmark(group="unwind depth 16")
@pytest.mark.parametrize("kind", ["orc", "fp"])
def test_check_stacks_c(benchmark, sleepers, kind):
    m, checked, empty = sleepers
    tasks = core.StackTasks([(t.tid, t.preempted, t.stack_lo, t.stack_hi, t.end_ret, t.end_slot)
                             for t in m.tasks])
    checker = m.engine.stack_checker(kind, m.text_ranges, orc=m.orc_arrays, empty=empty, max_entries=99)

    def run():
        return checker.check(tasks, checked).failed

    assert benchmark(run) == 0
    res = checker.check(tasks, checked)
    assert set(res.codes) == {unwind.WALK_OK}
    benchmark.extra_info.update(tasks=TASKS, depth=DEPTH, entries=sum(len(r.entries) for r in res))


@pytest.mark.benchmark(group="unwind depth 16")
@pytest.mark.parametrize("kind", ["orc", "fp"])
def test_check_stacks_python(benchmark, sleepers, kind):
    m, checked, empty = sleepers

    def run():
        return [bench._py_check(m, t, kind, checked, empty) for t in m.tasks]

    res = benchmark.pedantic(run, rounds=5, iterations=1)
    assert {r.code for r in res} == {unwind.WALK_OK} and all(r.hit < 0 for r in res)
    benchmark.extra_info.update(tasks=TASKS, depth=DEPTH, entries=sum(len(r.entries) for r in res))
