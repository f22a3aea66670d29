"""The unwind_ratio section: a reliable-stack check per task on the path
the models take (emu.models.stacks, the one home of that path), C against
the Python twin.

Workload: workloads.DEPTH_C's sleeper_entry, tasks asleep at the bottom of
`depth` frames.
"""
from __future__ import annotations

import math

from emu.app.bench.measure import Context, cpu_time, ratio, timed
from emu.machine.machine import Machine
from emu.machine.task import RunState
from emu.models.stacks import StackChecks


def sleepers(ctx: Context, n: int, depth: int) -> Machine:
    """n user tasks asleep at the bottom of `depth` frames of sink_down()."""
    base, _, _ = ctx.work.get("depth")
    m = Machine(base, cpus=2, tick=10**9)
    for i in range(n):
        m.add_task(f"t{i}", "sleeper_entry", (depth,))
    m.run(stop_when=lambda: all(t.state is RunState.SLEEPING for t in m.tasks))
    return m


def bench_unwind(result: dict, ctx: Context) -> None:
    """unwind_ratio: a reliable-stack check of a task at depth 16, per task,
    on the path the models take (emu.models.stacks, as livepatch's
    try-complete pass and stop_machine's activeness check make it: the walk,
    then the check of every entry against the patched ranges): C (every task
    in one emu_check_stacks call, registers from the saved contexts) / the
    Python twin (registers through the binding, the stack copied,
    emu.engine.unwind.check_stack per task)."""
    s = ctx.sizes
    depth = 16
    ctx.say(f"stack checks: {s.unwind_tasks} tasks at depth {depth}")
    m = sleepers(ctx, s.unwind_tasks, depth)
    try:
        checked = ((m.function("leaf").start, m.function("leaf").end),)
        checks = StackChecks(m)
        out = {"depth": depth, "tasks_per_call": len(m.tasks)}
        for kind in ("orc", "fp"):
            def check(accel, kind=kind):
                return checks.check(checked, kind=kind, max_entries=99, reliable=True, accel=accel)

            res, twin = check("c"), check("python")
            if [res[i] for i in range(len(res))] != twin.checks:
                raise RuntimeError(f"{kind}: the C stack check and its Python twin disagree")
            if res.failed or twin.failed:
                raise RuntimeError(f"{kind}: a bench stack failed its check: {twin.checks[0]}")

            def c_run(check=check):
                def go():
                    for _ in range(s.unwind_reps_c):
                        # what a model reads: how many failed (failing() only then)
                        if check("c").failed:
                            raise RuntimeError("a bench stack failed its check")
                return timed(go, cpu_time) / (s.unwind_reps_c * len(m.tasks))

            def py_run(check=check):
                def go():
                    for _ in range(s.unwind_reps_py):
                        if check("python").failed:
                            raise RuntimeError("a bench stack failed its check")
                return timed(go, cpu_time) / (s.unwind_reps_py * len(m.tasks))

            c_s = py_s = math.inf
            for _ in range(s.repeats):
                c_s = min(c_s, c_run())
                py_s = min(py_s, py_run())
            out[kind] = {"c_ns_per_stack": round(c_s * 1e9, 1), "python_ns_per_stack": round(py_s * 1e9, 1),
                         "entries_per_stack": len(twin[0].entries), "ratio": ratio(c_s, py_s)}
        out["unwinder"] = m.unwinder
        result["unwind"] = out
        result["unwind_ratio"] = out[m.unwinder]["ratio"]
    finally:
        m.engine.close()
