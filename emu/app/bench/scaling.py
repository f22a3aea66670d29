"""The scaling section: stop_machine's pause and the livepatch and kGraft
transition latencies, in virtual instructions, as the number of tasks and
the stack depth grow (plot.py draws them).

Workload: workloads.DEPTH_C's scale_entry.
"""
from __future__ import annotations

from emu.app.bench.measure import Context
from emu.machine.machine import Machine
from emu.machine.task import PATCHED


def scale_start(tasks: int) -> int:
    """When to enable the patch: once every task has run a kernel entry or
    so (2 CPUs, about 3000 instructions an entry), so that what the models
    meet is the steady state, not tasks that have not started yet."""
    return 20_000 + 1500 * tasks


def scale_run(ctx: Context, model: str, tasks: int, depth: int, at: int, cpus: int = 2) -> dict:
    """One transition of the leaf() patch under model, enabled at `at`, with
    `tasks` user tasks `depth` frames deep: its figures in virtual
    instructions."""
    from emu.machine.machine import EV_PATCH_STATE
    from emu.models import make_model
    from emu.kernel.patch import make_patch

    base, patch_img, funcs = ctx.work.get("depth")
    m = Machine(base, cpus=cpus, quantum=1000, tick=1000)
    try:
        for i in range(tasks):
            m.add_task(f"t{i}", "scale_entry", (depth,))
        m.load(patch_img)
        mod = make_model(model, m)
        p = mod.add(make_patch(m, "bench", patch_img, funcs))
        m.at(at, lambda: mod.enable(p))

        def done():
            return bool(mod.transitions) and mod.transitions[-1].result != "pending"

        m.run(until=at + m.seconds(40), stop_when=done)
        t = mod.transitions[-1]
        row = {"model": model, "tasks": tasks, "depth": depth, "result": t.result, "attempts": t.attempts,
               "latency": t.latency}
        if model == "stop_machine":
            pauses = [b - a for a, b in t.pauses]
            row["pause"] = pauses[-1] if pauses else None
            row["pause_total"] = sum(pauses)
            if m.last_stop_machine is not None:
                requested, stopped, _ = m.last_stop_machine
                row["stop_wait"] = stopped - requested
        else:
            switches = [e[0] for e in m.trace
                        if e[1] == EV_PATCH_STATE and e[2] >= 0 and e[3] == PATCHED and e[0] >= t.requested_at]
            row["last_switch"] = max(switches) - t.requested_at if switches else None
        return row
    finally:
        m.engine.close()


def bench_scaling(result: dict, ctx: Context) -> None:
    """stop_machine pause and livepatch/kGraft transition latency (virtual
    instructions) as the number of tasks grows (depth 8) and as the stack
    depth grows."""
    s = ctx.sizes
    by_tasks, by_depth = [], []
    for n in s.scaling_tasks:
        ctx.say(f"scaling: {n} tasks")
        by_tasks.append(scale_row(ctx, n, 8))
    for d in s.scaling_depths:
        ctx.say(f"scaling: depth {d}")
        by_depth.append(scale_row(ctx, s.scaling_depth_tasks, d))
    result["scaling"] = {
        "unit": "virtual instructions", "instructions_per_second": 100 * 1000,
        "workload": "user tasks, each kernel entry `depth` frames deep calling the patched leaf() 150 "
                    "times, then cond_resched() and a return to user; 2 CPUs, quantum 1000, voluntary "
                    "preemption; each figure the mean of runs enabling the patch at a few start times",
        "by_tasks": by_tasks, "by_depth": by_depth,
    }


def scale_row(ctx: Context, tasks: int, depth: int) -> dict:
    """The mean over the start offsets of each model's figures (None when a
    run did not complete), and each model's results."""
    row = {"tasks": tasks, "depth": depth, "starts": len(ctx.sizes.scaling_offsets)}
    fields = {"stop_machine": ("pause", "stop_wait", "latency"),
              "livepatch": ("latency", "last_switch"), "kgraft": ("latency", "last_switch")}
    names = {"stop_wait": "wait"}
    for model, keys in fields.items():
        runs = [scale_run(ctx, model, tasks, depth, scale_start(tasks) + off)
                for off in ctx.sizes.scaling_offsets]
        for key in keys:
            vals = [r.get(key) for r in runs]
            row[f"{model}_{names.get(key, key)}"] = \
                None if any(v is None for v in vals) else round(sum(vals) / len(vals))
        row[f"{model}_results"] = sorted({r["result"] for r in runs})
    return row
