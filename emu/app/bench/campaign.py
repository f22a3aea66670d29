"""The campaign section: fuzz_runs_per_s and rss_growth, the figures of the
campaign runner (emu.runs.fuzz.Runner as a campaign worker uses it) on the
seed scenario."""
from __future__ import annotations

import os
import time

from emu.app.bench.measure import Context


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def bench_campaign(result: dict, ctx: Context) -> None:
    """fuzz_runs_per_s: runs per second on one core of the seed scenario
    (its four models in turn, the runner a campaign worker uses, one
    process); rss_growth: resident memory after `many` runs in that process
    over after `few` (100 000 over 1 000; quick: 500 over 100)."""
    from emu.app import demo
    from emu.runs import scenario
    from emu.runs.fuzz import Runner
    runner = Runner(scenario.build(scenario.load(demo.VARIANTS["bar+baz"])))
    runner.cycle()
    few, many = (100, 500) if ctx.quick else (1_000, 100_000)
    models = demo.DEMO_MODELS
    rss_few = None
    t0 = time.perf_counter()
    t_few = 0.0
    for i in range(many):
        runner.execute(runner.plan(models[i % len(models)], i))
        if i + 1 == few:
            rss_few, t_few = rss_kib(), time.perf_counter() - t0
    elapsed = time.perf_counter() - t0
    rss_many = rss_kib()
    runner.close()
    result["fuzz_runs_per_s"] = round(many / elapsed, 1)
    result["rss_growth"] = round(rss_many / rss_few, 3)
    result["campaign"] = {"scenario": "examples/seed/scenario.toml", "models": list(models),
                          "runs": many, "seconds": round(elapsed, 2),
                          "runs_per_s_first": round(few / t_few, 1) if t_few else None,
                          "rss_kib_after": {str(few): rss_few, str(many): rss_many}}
