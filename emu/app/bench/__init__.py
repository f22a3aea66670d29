"""`lpemu bench`: what a patch switch costs, and what the emulator costs.

run_bench() measures everything in one process and returns one JSON-able
dict: each target ratio with the raw figures behind it, measured in the
same run, the per-call cost of a redirect per model, and the scaling
tables (stop_machine pause, transition latency) as the number of tasks and
the stack depth grow. format_bench() renders it for a terminal,
write_scaling_plot() draws the scaling tables.

One concept per module:
- workloads.py   the C programs measured (benchmarks/ runs them too)
- measure.py     sizes, the shared context, timing, ratios
- redirect.py    redirect_ratio: C fast path / Python twin, per call
- models.py      the redirect's per-call cost under each model
- stacks.py      unwind_ratio: the models' stack checks, C / Python twin
- throughput.py  throughput_ratio: the Machine / raw Unicorn
- scaling.py     pause and latency as tasks and depth grow
- campaign.py    fuzz_runs_per_s, rss_growth, fuzz_floor_ratio, campaign_scaling
- run.py         the targets, the sections in order, run_bench
- table.py       format_bench
- plot.py        scaling_figure, write_scaling_plot
"""
from emu.app.bench.measure import Context, Sizes
from emu.app.bench.plot import PLOT_SUFFIXES, scaling_figure, write_scaling_plot
from emu.app.bench.run import SECTIONS, TARGETS, run_bench
from emu.app.bench.table import format_bench
from emu.app.bench.workloads import Workloads

__all__ = ["run_bench", "format_bench", "write_scaling_plot", "PLOT_SUFFIXES", "scaling_figure", "TARGETS",
           "SECTIONS", "Sizes", "Context", "Workloads"]
