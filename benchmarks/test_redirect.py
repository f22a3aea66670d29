"""A redirected call: the C fast path against the Python twin, which writes
RIP through the binding. Each round runs a fresh machine's loop of calls of
a patched function (immediate model, patch switched); the group also holds
the same loop with no patch, the baseline both are compared with, and the C
path with the per-call entry event switched off."""
import pytest

from emu.app.bench.redirect import SLEEP1, SLEEP2, calls_machine
from emu.machine.task import RunState

CALLS = {"c": 100_000, "python": 5_000}


def _rounds(benchmark, ctx, *, accel, model, trace_entries=True):
    calls = CALLS[accel]
    live = []

    def setup():
        while live:
            live.pop().engine.close()
        m, _, caller = calls_machine(ctx, accel=accel, model=model, blocker=False, calls=calls,
                                     trace_entries=trace_entries)
        m.run(until=(SLEEP1 + SLEEP2 - 20) * m.tick)
        live.append(m)
        return (m, caller, m.now), {}

    def run(m, caller, t0):
        m.run(stop_when=lambda: caller.state is RunState.EXITED)
        benchmark.extra_info.update(calls=calls, instructions=m.now - t0,
                                    instructions_per_call=round((m.now - t0) / calls, 3))

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    while live:
        live.pop().engine.close()


@pytest.mark.benchmark(group="redirect")
@pytest.mark.parametrize("accel", ["c", "python"])
def test_redirected_calls(benchmark, ctx, accel):
    _rounds(benchmark, ctx, accel=accel, model="immediate")


@pytest.mark.benchmark(group="redirect")
def test_redirected_calls_untraced_c(benchmark, ctx):
    _rounds(benchmark, ctx, accel="c", model="immediate", trace_entries=False)


@pytest.mark.benchmark(group="redirect")
@pytest.mark.parametrize("accel", ["c", "python"])
def test_unpatched_calls(benchmark, ctx, accel):
    _rounds(benchmark, ctx, accel=accel, model=None)
