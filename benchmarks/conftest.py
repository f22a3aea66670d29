"""Benchmarks (pytest-benchmark): C fast paths and their Python twins, paired
in one group each. Run with `make bench` or
`.venv/bin/python -m pytest -q benchmarks --benchmark-only`; the normal test
run (testpaths = tests) does not collect them.

The workloads are emu/app/bench/workloads.py's: the figures `lpemu bench` prints come from the
same programs, measured as ratios in one run."""
import pytest

from emu.app import bench


@pytest.fixture(scope="session")
def workloads():
    work = bench.Workloads()
    yield work
    work.close()


@pytest.fixture(scope="session")
def ctx(workloads):
    return bench.Context(quick=False, sizes=bench.Sizes(repeats=1), work=workloads)
