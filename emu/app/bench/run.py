"""The whole `lpemu bench` run: the targets, the sections in order, and
run_bench, which measures everything in one process and returns one
JSON-able dict. README.md's performance section quotes its figures."""
from __future__ import annotations

import platform
import time

from emu import __version__
from emu.app.bench.campaign import bench_campaign
from emu.app.bench.measure import Context, Sizes
from emu.app.bench.models import bench_models
from emu.app.bench.redirect import bench_redirect
from emu.app.bench.scaling import bench_scaling
from emu.app.bench.stacks import bench_unwind
from emu.app.bench.throughput import bench_throughput
from emu.app.bench.workloads import Workloads

#: name -> (comparison, bound): what `lpemu bench` checks.
TARGETS = {
    "redirect_ratio": ("<=", 0.05),
    "unwind_ratio": ("<=", 0.005),
    "throughput_ratio": (">=", 0.5),
    "fuzz_runs_per_s": (">=", 5000.0),
    "fuzz_floor_ratio": ("<=", 3.0),
    "rss_growth": ("<=", 1.10),
    "campaign_scaling": (">=", 1.8),
    "redirect_floor_ratio": ("<=", 3.0),
    "scale_throughput_ratio": (">=", 0.5),
    "scale_rss_mib": ("<=", 2048.0),
}


#: The sections run_bench runs, in order: name -> fn(result, ctx).
SECTIONS = {
    "redirect": bench_redirect,
    "unwind": bench_unwind,
    "throughput": bench_throughput,
    "models": bench_models,
    "scaling": bench_scaling,
    "campaign": bench_campaign,
}


def meets(name: str, value) -> bool | None:
    if value is None:
        return None
    op, bound = TARGETS[name]
    return value <= bound if op == "<=" else value >= bound


def run_bench(*, quick: bool = False, sections=None, progress=None) -> dict:
    """Measure everything in one run; return one JSON-able dict.

    Keys: each ratio of TARGETS (None when not measured), `meets` (ratio ->
    True/False/None), the raw figures behind each ratio under `redirect`,
    `unwind`, `throughput`, the per-model redirect costs under `models`, the
    scaling tables under `scaling`, and `host`/`seconds`. quick=True does
    little work (a smoke run: the figures are not worth quoting). sections:
    names from SECTIONS to run (default all). progress: fn(text) called as
    each measurement starts. Raises BuildError when gcc is missing."""
    names = list(SECTIONS) if sections is None else list(sections)
    for name in names:
        if name not in SECTIONS:
            raise ValueError(f"unknown bench section {name!r} (one of {', '.join(SECTIONS)})")
    ctx = Context(quick, Sizes.quick() if quick else Sizes(), Workloads(), progress)
    result = {
        "version": __version__,
        "quick": quick,
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "processor": platform.processor() or None},
        "targets": {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()},
        "redirect_ratio": None,
        "unwind_ratio": None,
        "throughput_ratio": None,
        # Filled by the campaign runner's section (campaign.py).
        "fuzz_runs_per_s": None,
        "fuzz_floor_ratio": None,
        "rss_growth": None,
        "campaign_scaling": None,
        # Filled by the redirect and scaling sections.
        "redirect_floor_ratio": None,
        "scale_throughput_ratio": None,
        "scale_rss_mib": None,
    }
    t = time.perf_counter()
    try:
        for name in names:
            SECTIONS[name](result, ctx)
    finally:
        ctx.work.close()
    result["meets"] = {k: meets(k, result.get(k)) for k in TARGETS}
    result["seconds"] = round(time.perf_counter() - t, 1)
    return result
