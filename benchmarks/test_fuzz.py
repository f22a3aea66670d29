"""Fuzzing runs of the seed scenario: the scheduler loop in C against its
Python twin (one group), and runs restored from a snapshot against runs on a
fresh machine (another). extra_info holds the runs and the virtual
instructions they covered."""
import pytest

from emu.app import demo
from emu.runs import scenario
from emu.runs.fuzz import Runner


@pytest.fixture(scope="module")
def program():
    return scenario.build(scenario.load(demo.VARIANTS["bar+baz"]))


def _runs(benchmark, runner, n, *, fresh=False):
    specs = [runner.plan(model, seed) for seed in range(n) for model in demo.DEMO_MODELS]

    def run():
        virtual = 0
        for spec in specs:
            if fresh:
                res, m, _ = runner.execute(spec, keep=True)
                m.engine.close()
            else:
                res = runner.execute(spec)
            virtual += res.end - spec.start
        benchmark.extra_info.update(runs=len(specs), virtual_instructions_after_start=virtual)

    runner.cycle()
    benchmark.pedantic(run, rounds=3, iterations=1)
    runner.close()


@pytest.mark.benchmark(group="scheduler")
@pytest.mark.parametrize("sched", ["c", "python"])
def test_seed_runs_by_scheduler(benchmark, program, sched):
    _runs(benchmark, Runner(program, sched=sched), 4)


@pytest.mark.benchmark(group="snapshot")
@pytest.mark.parametrize("how", ["restored", "fresh"])
def test_seed_runs_restored_or_fresh(benchmark, program, how):
    _runs(benchmark, Runner(program), 10, fresh=how == "fresh")
