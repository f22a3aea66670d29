"""The scaling section: stop_machine's pause and the livepatch and kGraft
transition latencies, in virtual instructions, as the number of tasks, the
number of CPUs and the stack depth grow (plot.py draws them); and the
emulator at kernel scale: instructions per second of a machine of
thousands of tasks on dozens of CPUs against one of 8 tasks, and the
memory such a machine takes.

Workload: workloads.DEPTH_C's scale_entry.
"""
from __future__ import annotations

import math
import time

from emu.app.bench.measure import Context, cpu_time, ratio, timed
from emu.machine.machine import Machine
from emu.machine.task import PATCHED

ENTRY = 3000          # instructions of one scale_entry(8) kernel entry, about


def scale_start(tasks: int) -> int:
    """When to enable the patch: once every task has run a kernel entry or
    so (virtual time counts the instructions of every CPU), so that what
    the models meet is the steady state, not tasks that have not started
    yet."""
    return 20_000 + ENTRY // 2 * tasks


def horizon(m: Machine, tasks: int) -> int:
    """How long a transition may take before it counts as unfinished: 40 s,
    or longer when every task's next kernel exit lies further (kGraft
    migrates each task there; 4,096 tasks take some 120 s)."""
    return m.seconds(40) + 3 * ENTRY * tasks


def scale_run(ctx: Context, model: str, tasks: int, depth: int, at: int, cpus: int = 2) -> dict:
    """One transition of the leaf() patch under model, enabled at `at`, with
    `tasks` user tasks `depth` frames deep on `cpus` CPUs: its figures in
    virtual instructions."""
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

        m.run(until=at + horizon(m, tasks), stop_when=done)
        t = mod.transitions[-1]
        row = {"model": model, "tasks": tasks, "cpus": cpus, "depth": depth, "result": t.result,
               "attempts": t.attempts, "latency": t.latency}
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
    instructions) as the number of tasks grows (depth 8, scaling_cpus
    CPUs), as the number of CPUs grows, and as the stack depth grows; then
    scale_throughput_ratio and the memory of the largest machine."""
    s = ctx.sizes
    by_tasks, by_cpus, by_depth = [], [], []
    for n in s.scaling_tasks:
        ctx.say(f"scaling: {n} tasks on {s.scaling_cpus} CPUs")
        by_tasks.append(scale_row(ctx, n, 8, s.scaling_cpus))
    for c in s.scaling_cpu_counts:
        ctx.say(f"scaling: {s.scaling_cpus_tasks} tasks on {c} CPUs")
        by_cpus.append(scale_row(ctx, s.scaling_cpus_tasks, 8, c))
    for d in s.scaling_depths:
        ctx.say(f"scaling: depth {d}")
        by_depth.append(scale_row(ctx, s.scaling_depth_tasks, d, 2))
    result["scaling"] = {
        "unit": "virtual instructions", "instructions_per_second": 100 * 1000,
        "workload": "user tasks, each kernel entry `depth` frames deep calling the patched leaf() 150 "
                    "times, then cond_resched() and a return to user; quantum 1000, voluntary preemption; "
                    "virtual time counts the instructions of every CPU; each figure the mean of runs "
                    "enabling the patch at a few start times (one start time from "
                    f"{s.scaling_one_start:,} tasks on)",
        "cpus": s.scaling_cpus, "by_tasks": by_tasks,
        "cpus_tasks": s.scaling_cpus_tasks, "by_cpus": by_cpus,
        "depth_tasks": s.scaling_depth_tasks, "depth_cpus": 2, "by_depth": by_depth,
    }
    bench_scale_throughput(result, ctx)


def scale_row(ctx: Context, tasks: int, depth: int, cpus: int) -> dict:
    """The mean over the start offsets of each model's figures (None when a
    run did not complete), and each model's results."""
    offsets = ctx.sizes.scaling_offsets
    if tasks >= ctx.sizes.scaling_one_start:
        offsets = offsets[:1]        # a machine this size takes seconds to start
    row = {"tasks": tasks, "cpus": cpus, "depth": depth, "starts": len(offsets)}
    fields = {"stop_machine": ("pause", "stop_wait", "latency"),
              "livepatch": ("latency", "last_switch"), "kgraft": ("latency", "last_switch")}
    names = {"stop_wait": "wait"}
    for model, keys in fields.items():
        runs = [scale_run(ctx, model, tasks, depth, scale_start(tasks) + off, cpus) for off in offsets]
        for key in keys:
            vals = [r.get(key) for r in runs]
            row[f"{model}_{names.get(key, key)}"] = \
                None if any(v is None for v in vals) else round(sum(vals) / len(vals))
        row[f"{model}_results"] = sorted({r["result"] for r in runs})
    return row


def rss_kib() -> int | None:
    """The process's resident set now (KiB), None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def scale_machine(ctx: Context, tasks: int, cpus: int) -> Machine:
    """A started machine of `tasks` user tasks running scale_entry(8) on
    `cpus` CPUs, no patch."""
    base, _, _ = ctx.work.get("depth")
    m = Machine(base, cpus=cpus, quantum=1000, tick=1000)
    for i in range(tasks):
        m.add_task(f"t{i}", "scale_entry", (8,))
    m.start()
    return m


def bench_scale_throughput(result: dict, ctx: Context) -> None:
    """scale_throughput_ratio: instructions per second of the machine of
    scale_tasks tasks on scaling_cpus CPUs over one of 8 tasks on as many
    CPUs, each task running scale_per_task instructions per measure (both
    machines warmed up first, then measured in turn, the best of a few
    rounds, in CPU time: the small machine's runs are short, the large one's
    long); with the large machine's start time and the process's resident
    memory while it lives (scale_rss_mib)."""
    s = ctx.sizes
    ctx.say(f"scaling: throughput of 8 and {s.scale_tasks} tasks on {s.scaling_cpus} CPUs")
    before = rss_kib()
    small = scale_machine(ctx, 8, s.scaling_cpus)
    t = time.perf_counter()
    large = scale_machine(ctx, s.scale_tasks, s.scaling_cpus)
    start_s = time.perf_counter() - t
    try:
        machines = ((small, 8), (large, s.scale_tasks))
        for m, n in machines:          # every task has run once: code translated, memory touched
            m.run(until=m.now + n * s.scale_per_task // 5)
        best = [math.inf, math.inf]
        for _ in range(s.scale_rounds):
            for k, (m, n) in enumerate(machines):
                t0 = m.now
                host = timed(lambda: m.run(until=t0 + n * s.scale_per_task), cpu_time)
                best[k] = min(best[k], host / (m.now - t0))
        after = rss_kib()
        rows = [{"tasks": n, "cpus": s.scaling_cpus, "instructions": n * s.scale_per_task,
                 "instructions_per_s": round(1 / b)} for (_, n), b in zip(machines, best)]
        rows[1].update(start_s=round(start_s, 3), rss_kib=after,
                       rss_added_kib=after - before if after and before else None)
    finally:
        small.engine.close()
        large.engine.close()
    result["scale"] = {"small": rows[0], "large": rows[1], "instructions_per_task": s.scale_per_task,
                       "rounds": s.scale_rounds, "rss_limit_kib": 2 << 20}
    result["scale_throughput_ratio"] = ratio(rows[1]["instructions_per_s"], rows[0]["instructions_per_s"])
    result["scale_rss_mib"] = round(after / 1024, 1) if after else None
