"""`lpemu demo`: the seed question answered by running it.

The seed program (emu/seed/) runs on two CPUs: two user tasks and a kthread
call foo() { f = bar(); something_else(); baz(f); } and sleep in
something_else(). A transition starts at many points in time (every
`step` instructions over one cycle of the tasks), under each model, with
the patch carrying bar+baz and then foo+bar+baz. Each run is checked by the
oracle: a system call that ran an old bar and a new baz is inconsistent,
and so is a new baz that received a value in the old form.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import core, oracle
from .image import build_c
from .machine import Machine
from .models import MODELS, make_model
from .patch import make_patch

SEED = Path(__file__).resolve().parent / "seed"
DEMO_MODELS = ("immediate", "stop_machine", "kgraft", "livepatch")
VARIANTS = {"bar+baz": ("patch.c", ["bar", "baz"]), "foo+bar+baz": ("patch_foo.c", ["foo", "bar", "baz"])}


@dataclass
class Summary:
    model: str
    variant: str
    runs: int = 0
    inconsistent: int = 0
    completed: int = 0
    failed: int = 0
    stalled: int = 0
    bad_values: int = 0
    first_failing_start: int | None = None
    example: str | None = None
    latencies: list = field(default_factory=list)

    def to_json(self):
        lat = sorted(self.latencies)
        return {"model": self.model, "variant": self.variant, "runs": self.runs,
                "inconsistent": self.inconsistent, "completed": self.completed, "failed": self.failed,
                "stalled": self.stalled, "bad_values": self.bad_values,
                "first_failing_start": self.first_failing_start, "example": self.example,
                "latency_median": lat[len(lat) // 2] if lat else None, "latency_max": lat[-1] if lat else None}


class Seed:
    """The compiled seed: base image and the two patch variants."""

    def __init__(self):
        self.base = build_c([SEED / "base.c"], base=0x400000, name="vmlinux")
        probe = Machine(self.base)
        at = probe.module_base()
        probe.engine.close()
        self.patches = {}
        for variant, (src, funcs) in VARIANTS.items():
            self.patches[variant] = (build_c([SEED / src], base=at, name="seed_patch",
                                             link_against=self.base, keep=set(funcs)), funcs)


def run_once(seed: Seed, model_name: str, variant: str, start: int, *, horizon: float = 14.0):
    """One run: returns (transition, inconsistencies, bad values, machine)."""
    m = Machine(seed.base, cpus=2, quantum=500, preempt="voluntary")
    m.add_task("user0", "user_entry", (0,))
    m.add_task("user1", "user_entry", (1,))
    m.add_task("kthread", "kthread_entry", (2,), kind="kthread")
    image, funcs = seed.patches[variant]
    m.load(image)
    model = make_model(model_name, m)
    patch = model.add(make_patch(m, "seed_patch", image, funcs))
    for fn in funcs:
        m.watch(m.function(fn))
    m.at(start, lambda: model.enable(patch))
    end = start + m.seconds(horizon)
    settle = m.seconds(0.2)

    def done():
        t = model.transitions[-1] if model.transitions else None
        return t is not None and t.result != "pending" and m.now > (t.completed_at or m.now - 1) + settle

    m.run(until=end, stop_when=done)
    t = model.transitions[-1]
    bad = oracle.check(m, [patch], model.transitions)
    wrong = [e for e in m.trace if e[1] == core.EV_OBSERVE and e[3] == 2 and e[4] < 1000]
    return t, bad, wrong, m


def available_models():
    out = []
    for name in DEMO_MODELS:
        try:
            from .models import model_class
            model_class(name)
        except (ImportError, AttributeError):
            continue
        out.append(name)
    return out


def run_demo(*, runs: int = 24, step: int = 400, first: int = 20_000, models=None, progress=None):
    seed = Seed()
    results = []
    for model_name in models or available_models():
        for variant in VARIANTS:
            s = Summary(model_name, variant)
            for i in range(runs):
                start = first + i * step
                t, bad, wrong, m = run_once(seed, model_name, variant, start)
                s.runs += 1
                s.inconsistent += bool(bad)
                s.bad_values += bool(wrong)
                s.completed += t.result == "completed"
                s.failed += t.result == "failed"
                s.stalled += t.result == "pending"
                if t.latency is not None:
                    s.latencies.append(t.latency)
                if bad and s.first_failing_start is None:
                    s.first_failing_start = start
                    s.example = str(bad[0])
                m.engine.close()
                if progress:
                    progress()
            results.append(s)
    return results


def table(results) -> str:
    head = f"{'model':<13} {'patch':<12} {'runs':>5} {'inconsistent':>12} {'bad values':>10} " \
           f"{'completed':>9} {'failed':>6} {'stalled':>7}"
    lines = [head, "-" * len(head)]
    for s in results:
        lines.append(f"{s.model:<13} {s.variant:<12} {s.runs:>5} {s.inconsistent:>12} {s.bad_values:>10} "
                     f"{s.completed:>9} {s.failed:>6} {s.stalled:>7}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    t0 = time.perf_counter()
    res = run_demo()
    print(table(res))
    print(f"{time.perf_counter() - t0:.1f} s")
