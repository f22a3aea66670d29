"""`lpemu demo`: the seed question answered by running it.

The seed scenarios (emu/seed/, also examples/seed/) run two user tasks and
a kthread on two CPUs; they call foo() { f = bar(); something_else(); baz(f); }
and sleep in something_else(). The patch carries bar+baz (scenario.toml)
or foo+bar+baz (scenario-foo.toml). Under each model a transition starts at
`runs` points spread over one cycle of the tasks (the exhaustive strategy),
and each run is checked by the oracle (a system call that ran an old bar and
a new baz is inconsistent) and by the scenario's value assertion (the new
baz must receive thousandths).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import scenario
from .fuzz import Runner

SEED = Path(__file__).resolve().parent / "seed"
DEMO_MODELS = ("immediate", "stop_machine", "kgraft", "livepatch")
VARIANTS = {"bar+baz": SEED / "scenario.toml", "foo+bar+baz": SEED / "scenario-foo.toml"}


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
    first_failing_seed: int | None = None
    example: str | None = None
    latencies: list = field(default_factory=list)

    def add(self, res) -> None:
        self.runs += 1
        self.inconsistent += res.inconsistent
        self.bad_values += bool(res.violations)
        self.completed += res.outcome == "completed"
        self.failed += res.outcome == "failed"
        self.stalled += res.outcome == "stalled"
        if res.latency is not None:
            self.latencies.append(res.latency)
        if res.inconsistent and self.first_failing_seed is None:
            self.first_failing_seed = res.spec.seed
            bad = res.inconsistencies[0]
            runs = ", ".join(f"{e['function']} v{e['version']} at {e['clock']}" for e in bad["entries"])
            self.example = f"task {bad['task']}, {bad['unit']} (t={bad['start']}..{bad['end']}): {runs}"

    def to_json(self):
        lat = sorted(self.latencies)
        return {"model": self.model, "variant": self.variant, "runs": self.runs,
                "inconsistent": self.inconsistent, "completed": self.completed, "failed": self.failed,
                "stalled": self.stalled, "bad_values": self.bad_values,
                "first_failing_seed": self.first_failing_seed, "example": self.example,
                "latency_median": lat[len(lat) // 2] if lat else None, "latency_max": lat[-1] if lat else None}


def run_demo(*, runs: int = 24, models=DEMO_MODELS, progress=None) -> list[Summary]:
    results = []
    for variant, path in VARIANTS.items():
        runner = Runner(scenario.build(scenario.load(path)))
        for model in models:
            s = Summary(model, variant)
            for seed in range(runs):
                s.add(runner.execute(runner.plan(model, seed, strategy="exhaustive")))
                if progress:
                    progress()
            results.append(s)
    order = {m: i for i, m in enumerate(models)}
    return sorted(results, key=lambda s: (order[s.model], s.variant != "bar+baz"))


def table(results) -> str:
    head = f"{'model':<13} {'patch':<12} {'runs':>5} {'inconsistent':>12} {'bad values':>10} " \
           f"{'completed':>9} {'failed':>6} {'stalled':>7}"
    lines = [head, "-" * len(head)]
    for s in results:
        lines.append(f"{s.model:<13} {s.variant:<12} {s.runs:>5} {s.inconsistent:>12} {s.bad_values:>10} "
                     f"{s.completed:>9} {s.failed:>6} {s.stalled:>7}")
    return "\n".join(lines)
