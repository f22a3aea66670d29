"""The campaign section: what a fuzzing run costs, on the seed scenario
(emu/seed/scenario.toml, the bar+baz variant), its four models in turn.

- fuzz_runs_per_s: runs per second of the runner a campaign worker uses
  (emu.runs.fuzz.Runner: a pooled machine restored from its snapshot,
  the model set up, the run, every check of the finished run, the
  Result), one process, one core; `many` runs (100 000; quick: 500).
- rss_growth: that process's resident memory after `many` runs over after
  `few` (1 000; quick: 100).
- fuzz_floor_ratio: host time per run (the same runs) over the time raw
  Unicorn takes to execute as many guest instructions as a run really
  executed. A run's instructions are Result.executed: what its emu_run
  calls retired (Engine.retired), so neither the virtual time jumped while
  every CPU idled nor the shared prefix its machine was restored to (the
  snapshot's state at the first action) count. The floor is the binding's
  Uc, no hook, no patch, executing workloads.LOOP_C's bench_entry from a
  driver loop (throughput.raw_loop), sized to the instructions of 1 000
  runs, best of `repeats`, in this process. The loop is compiled C as the
  seed's functions are; it runs from translated blocks that stay hot, in
  Unicorn as it comes (its CPU TLB, so every store takes Unicorn's slow
  path). Unicorn's virtual TLB, the Machine's mode, runs such code several
  times faster (throughput.raw_virtual_tlb).
- campaign_scaling: runs per second of a real campaign
  (emu.runs.campaign.Campaign, no output directory), in a process of its own
  (scaling_main) as a campaign is, with two local worker processes over one: the same plan (the four models, 2,000 seeds
  each or more, quick: 25; the scenario's strategy), the runner's cycle and
  probe computed once beforehand and given to both. The plan is long enough
  (at least 8,000 runs, and as many as one worker runs in SCALING_SECONDS at
  the fuzz_runs_per_s just measured) that what each worker pays once when it
  starts (about 0.1 s: its process, its runner's machines built and run to
  the first action) does not decide the figure, as it does not in a
  campaign of thousands of runs. One worker is what `lpemu
  fuzz --jobs 1` does: the runs in the campaign's own process. Two
  workers is the process pool of `--jobs 2`, batches of at most 64 runs,
  each worker with one runner for all its batches (made when the worker
  starts: its machines are built and run to the first action once per
  worker). The figure needs two idle cores: `campaign.workers.cores` says
  how many this process could use, `campaign.workers.load` the load
  average when it started, `campaign.workers.cpu_s` the CPU seconds (the
  process and its workers) behind each rate.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

from emu.app.bench.measure import Context, ratio, timed


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def seed_program():
    """The seed scenario (bar+baz), built."""
    from emu.app import demo
    from emu.runs import scenario
    return scenario.build(scenario.load(demo.VARIANTS["bar+baz"]))


def seed_runner():
    """The Runner of the seed scenario (bar+baz), its cycle known."""
    from emu.runs.fuzz import Runner
    runner = Runner(seed_program())
    runner.cycle()
    return runner


def floor_seconds(ctx: Context, instructions: int) -> tuple[float, dict]:
    """Host seconds raw Unicorn takes for `instructions` guest instructions
    (best of the repeats), and the figures behind it."""
    from emu.app.bench.throughput import ITERS, raw_loop
    _, one = raw_loop(ctx, 1, count=True)
    _, two = raw_loop(ctx, 2, count=True)
    per_outer = two - one                     # the driver's own few instructions cancel
    outer = max(1, round(instructions / per_outer))
    best = best_v = None
    for _ in range(ctx.sizes.repeats):
        host, _ = raw_loop(ctx, outer)
        best = host if best is None else min(best, host)
        host, _ = raw_loop(ctx, outer, virtual_tlb=True)
        best_v = host if best_v is None else min(best_v, host)
    rate, rate_v = outer * per_outer / best, outer * per_outer / best_v
    # In the Machine's memory mode (the virtual TLB) raw Unicorn is faster:
    # not the floor (that is Unicorn with no hook), said beside it.
    return instructions / rate, {"instructions_per_s": round(rate), "loop_iterations": outer * ITERS,
                                 "instructions": outer * per_outer, "host_s": round(best, 6),
                                 "virtual_tlb_instructions_per_s": round(rate_v)}


def bench_campaign(result: dict, ctx: Context) -> None:
    """fuzz_runs_per_s, rss_growth, fuzz_floor_ratio, campaign_scaling (the
    module docstring says what each measures)."""
    from emu.app import demo
    runner = seed_runner()
    few, many = (100, 500) if ctx.quick else (1_000, 100_000)
    models = demo.DEMO_MODELS
    rss_few = None
    executed = 0
    ctx.say(f"campaign: {many} runs")
    t0 = time.perf_counter()
    t_few = 0.0
    try:
        for i in range(many):
            executed += runner.execute(runner.plan(models[i % len(models)], i)).executed
            if i + 1 == few:
                rss_few, t_few = rss_kib(), time.perf_counter() - t0
        elapsed = time.perf_counter() - t0
        rss_many = rss_kib()
        known = runner.known()
    finally:
        runner.close()
    per_run = elapsed / many
    per_run_insns = executed / many
    ctx.say("campaign: raw Unicorn, the floor")
    floor, raw = floor_seconds(ctx, round(per_run_insns * min(many, 1_000)))
    floor_per_run = floor / min(many, 1_000)
    result["fuzz_runs_per_s"] = round(many / elapsed, 1)
    result["rss_growth"] = round(rss_many / rss_few, 3)
    result["fuzz_floor_ratio"] = ratio(per_run, floor_per_run)
    result["campaign"] = {"scenario": "emu/seed/scenario.toml", "models": list(models),
                          "runs": many, "seconds": round(elapsed, 2),
                          "runs_per_s_first": round(few / t_few, 1) if t_few else None,
                          "rss_kib_after": {str(few): rss_few, str(many): rss_many},
                          "us_per_run": round(per_run * 1e6, 1),
                          "instructions_per_run": round(per_run_insns, 1),
                          "floor_us_per_run": round(floor_per_run * 1e6, 3),
                          "raw_unicorn": raw}
    bench_scaling_of_workers(result, ctx, known)


def campaign_rate(program, known: dict, plan, jobs: int) -> tuple[float, float]:
    """(runs per second, host CPU seconds of the campaign's process and its
    workers) of a Campaign of plan with jobs local workers."""
    from emu.runs.campaign import Campaign
    camp = Campaign(program, plan, jobs=jobs)
    camp.known = known
    before = os.times()
    try:
        host = timed(camp.run)
    finally:
        camp.close()
    after = os.times()
    cpu = sum(getattr(after, k) - getattr(before, k) for k in ("user", "system", "children_user", "children_system"))
    if len(camp.records) != len(plan.runs()):
        raise RuntimeError(f"the campaign of {jobs} workers recorded {len(camp.records)} of "
                           f"{len(plan.runs())} runs")
    return len(camp.records) / host, cpu


#: Seconds one worker should take on the campaign_scaling plan (at the rate
#: fuzz_runs_per_s measured): long enough that what a worker pays once when
#: it starts does not decide the figure, however fast the runs are.
SCALING_SECONDS = 8.0


def scaling_seeds(quick: bool, runs_per_s: float | None, models: int) -> int:
    """Seeds per model of the campaign_scaling plan: 2,000 at least, more when
    runs are fast enough that 2,000 would take less than SCALING_SECONDS."""
    if quick:
        return 25
    if not runs_per_s:
        return 2_000
    return max(2_000, -(-round(runs_per_s * SCALING_SECONDS) // models))


def bench_scaling_of_workers(result: dict, ctx: Context, known: dict) -> None:
    """campaign_scaling, measured in a process of its own (scaling_main), as
    a campaign runs: forked from this one, the workers would share the
    memory the bench's other sections left behind, which is no campaign's."""
    from emu.app import demo
    seeds = scaling_seeds(ctx.quick, result.get("fuzz_runs_per_s"), len(demo.DEMO_MODELS))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ctx.say(f"campaign: {seeds * len(demo.DEMO_MODELS)} runs on 1 worker, then on 2, in a process of their own")
    root = str(Path(__file__).resolve().parents[3])      # the directory that holds the emu package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", "from emu.app.bench.campaign import scaling_main; scaling_main()"],
                          input=pickle.dumps({"seeds": seeds, "known": known, "repeats": 1 if ctx.quick else 3}),
                          capture_output=True, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(f"the campaign_scaling process failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    out = json.loads(proc.stdout)
    rates = {int(k): v for k, v in out["rates"].items()}
    cpus = {int(k): v for k, v in out["cpu_s"].items()}
    result["campaign_scaling"] = ratio(rates[2], rates[1])
    result["campaign"]["workers"] = {
        "runs": out["runs"], "strategy": out["strategy"],
        "runs_per_s": {str(k): round(v, 1) for k, v in rates.items()},
        # CPU seconds (the process and its workers) of the runs behind each
        # rate: when the two workers get less than two cores, the rates say
        # so and these do not
        "cpu_s": {str(k): round(v, 2) for k, v in cpus.items()},
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load": round(load, 2) if load is not None else None}


def scaling_main() -> None:
    """campaign_scaling's measure, in a process of its own: reads the seeds a
    model, what the runner learned (Runner.known) and the repeats (pickled,
    on stdin); writes the best rate of 1 and of 2 workers over the repeats,
    alternated, with the CPU seconds behind each (JSON, on stdout)."""
    from emu.app import demo
    from emu.runs.campaign import Plan
    args = pickle.load(sys.stdin.buffer)
    program = seed_program()
    plan = Plan("emu/seed/scenario.toml", list(demo.DEMO_MODELS), range(args["seeds"]),
                program.scenario.fuzz.strategy)
    rates: dict = {}
    cpus: dict = {}
    for _ in range(args["repeats"]):
        for jobs in (1, 2):
            r, cpu = campaign_rate(program, args["known"], plan, jobs)
            if jobs not in rates or r > rates[jobs]:
                rates[jobs], cpus[jobs] = r, cpu
    json.dump({"runs": len(plan.runs()), "strategy": plan.strategy, "rates": rates, "cpu_s": cpus}, sys.stdout)
