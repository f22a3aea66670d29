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

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from emu.runs import scenario
from emu.runs.campaign import Plan, summarize
from emu.runs.fuzz import Runner

SEED = Path(__file__).resolve().parent.parent / "seed"
DEMO_MODELS = ("immediate", "stop_machine", "kgraft", "livepatch")
VARIANTS = {"bar+baz": SEED / "scenario.toml", "foo+bar+baz": SEED / "scenario-foo.toml"}


@dataclass
class Summary:
    """One row of the table: a model under one variant of the patch (the
    counts are campaign.summarize's)."""
    model: str
    variant: str
    runs: int = 0
    inconsistent: int = 0
    completed: int = 0
    failed: int = 0
    stalled: int = 0
    bad_values: int = 0
    first_failing_seed: int | None = None
    latency_median: float | None = None
    latency_max: int | None = None
    example: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def run_demo(*, runs: int = 24, models=DEMO_MODELS, progress=None) -> list[Summary]:
    results = []
    for variant, path in VARIANTS.items():
        plan = Plan(str(path), list(models), list(range(runs)), "exhaustive")
        records = {}
        with Runner(scenario.build(scenario.load(path))) as runner:
            for model, seed in plan.runs():
                records[model, seed] = runner.execute(runner.plan(model, seed, strategy="exhaustive")).to_json()
                if progress:
                    progress()
        for row in summarize(plan, records)["models"]:
            keep = {k: row[k] for k in (f.name for f in fields(Summary)) if k in row}
            results.append(Summary(**keep, variant=variant, example=_example(plan, records, row["model"])))
    order = {m: i for i, m in enumerate(models)}
    return sorted(results, key=lambda s: (order[s.model], s.variant != "bar+baz"))


def _example(plan: Plan, records: dict, model: str) -> str | None:
    """The first inconsistent unit of the model's first inconsistent run."""
    for seed in plan.seeds:
        bad = records[model, seed]["inconsistencies"]
        if bad:
            runs = ", ".join(f"{e['function']} v{e['version']} at {e['clock']}" for e in bad[0]["entries"])
            return f"task {bad[0]['task']}, {bad[0]['unit']} (t={bad[0]['start']}..{bad[0]['end']}): {runs}"
    return None


def table(results) -> str:
    head = f"{'model':<13} {'patch':<12} {'runs':>5} {'inconsistent':>12} {'bad values':>10} " \
           f"{'completed':>9} {'failed':>6} {'stalled':>7}"
    lines = [head, "-" * len(head)]
    for s in results:
        lines.append(f"{s.model:<13} {s.variant:<12} {s.runs:>5} {s.inconsistent:>12} {s.bad_values:>10} "
                     f"{s.completed:>9} {s.failed:>6} {s.stalled:>7}")
    return "\n".join(lines)
