"""How `lpemu bench` measures: how much work each measurement does
(Sizes), what the sections share (Context), host time with the cyclic GC
held off (timed) and the ratios the targets are stated in (ratio).

Host times are the best of a few repeats (the least disturbed by the rest
of the system), each side of a ratio measured the same way, interleaved:
absolute host times vary by +-15 % between runs on these machines, ratios
much less.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

from emu.app.bench.workloads import Workloads


@dataclass
class Sizes:
    """How much work each measurement does (quick: a smoke run, not figures to quote)."""
    repeats: int = 5
    redirect_calls_c: int = 400_000
    redirect_calls_py: int = 20_000
    model_calls: int = 200_000
    unwind_tasks: int = 64
    unwind_reps_c: int = 400
    unwind_reps_py: int = 2
    throughput_instructions: int = 40_000_000
    raw_outer: int = 4_000
    scaling_tasks: tuple = (1, 4, 16, 64, 256, 1024, 4096)
    scaling_cpus: int = 64                  # the CPUs of the by_tasks rows and of the scale machines
    scaling_cpu_counts: tuple = (1, 2, 4, 8, 16, 32, 64)
    scaling_cpus_tasks: int = 256           # the tasks of the by_cpus rows
    scaling_depths: tuple = (1, 2, 4, 8, 16, 32)
    scaling_depth_tasks: int = 8
    scaling_offsets: tuple = (0, 1777, 3511, 5333, 7919)   # the patch is enabled at these offsets
    scaling_one_start: int = 1024           # from this many tasks on, one start offset
    scale_tasks: int = 4096                 # scale_throughput_ratio: this many tasks over 8
    scale_per_task: int = 50_000            # instructions each task runs there, per round
    scale_rounds: int = 3

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(repeats=1, redirect_calls_c=20_000, redirect_calls_py=2_000, model_calls=10_000,
                   unwind_tasks=8, unwind_reps_c=20, unwind_reps_py=1, throughput_instructions=1_000_000,
                   raw_outer=100, scaling_tasks=(1, 4, 16), scaling_cpus=4, scaling_cpu_counts=(1, 4),
                   scaling_cpus_tasks=8, scaling_depths=(1, 8), scaling_depth_tasks=2, scaling_offsets=(0,),
                   scale_tasks=64, scale_per_task=5_000, scale_rounds=1)


@dataclass
class Context:
    """What the sections share: sizes, compiled workloads, progress reports."""
    quick: bool
    sizes: Sizes
    work: Workloads
    progress: object = None
    notes: list = field(default_factory=list)

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)


def timed(fn, clock=time.perf_counter) -> float:
    """Host seconds fn() takes, with the cyclic GC held off (its pauses land
    on whichever side of a ratio happens to allocate the millionth tuple).
    clock=cpu_time counts only the time this process ran, so that runs of
    different lengths compare on a loaded machine (a short run fits between
    two preemptions, a long one never does)."""
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        t = clock()
        fn()
        return clock() - t
    finally:
        if gc_was:
            gc.enable()


#: CPU time of this process (the clock for timed() when runs of different lengths compare).
cpu_time = time.process_time


def ratio(a, b) -> float | None:
    """a / b rounded, None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 6)
