"""The probe a campaign runs first (emu/runs/probe.py): one unpatched run
that observes the tasks between slices and hears every cond_resched() they
pass, on the seed and on the example where a CPU-bound kthread passes one
every few hundred instructions (its worst case). extra_info holds the
virtual instructions probed and the states seen."""
from pathlib import Path

import pytest

from emu.runs import scenario
from emu.runs.fuzz import Runner

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"seed": ROOT / "emu" / "seed" / "scenario.toml",
             "kernel-versions": ROOT / "examples" / "kernel-versions" / "scenario.toml"}


@pytest.mark.benchmark(group="probe")
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_probe(benchmark, name):
    program = scenario.build(scenario.load(SCENARIOS[name]))
    cycle = Runner(program).cycle()

    def probe():
        with Runner(program, cycle=cycle) as r:
            return r.probe()
    pr = benchmark.pedantic(probe, rounds=5, iterations=1)
    benchmark.extra_info.update(virtual_instructions=pr.end - pr.first_at, states=pr.total)
