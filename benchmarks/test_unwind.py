"""A reliable-stack check at depth 16 of 64 sleeping tasks, on the path the
models take (emu.models.stacks: the walk, then the checked ranges, as
livepatch's try-complete pass makes it): one emu_check_stacks call against
the Python twin (registers through the binding, the stack copied,
emu.engine.unwind.check_stack) task by task."""
import pytest

from emu.app.bench.stacks import sleepers
from emu.engine import unwind
from emu.models.stacks import StackChecks

TASKS, DEPTH = 64, 16


@pytest.fixture(scope="module")
def checks(ctx):
    m = sleepers(ctx, TASKS, DEPTH)
    checked = ((m.function("leaf").start, m.function("leaf").end),)
    yield StackChecks(m), checked
    m.engine.close()


@pytest.mark.benchmark(group="unwind depth 16")
@pytest.mark.parametrize("accel", ["c", "python"])
@pytest.mark.parametrize("kind", ["orc", "fp"])
def test_check_stacks(benchmark, checks, kind, accel):
    stacks, checked = checks

    def run():
        return stacks.check(checked, kind=kind, max_entries=99, reliable=True, accel=accel)

    res = benchmark(run) if accel == "c" else benchmark.pedantic(run, rounds=5, iterations=1)
    assert res.failed == 0
    results = [res[i] for i in range(len(res))]
    assert {r.code for r in results} == {unwind.WALK_OK}
    benchmark.extra_info.update(tasks=TASKS, depth=DEPTH, entries=sum(len(r.entries) for r in results))
