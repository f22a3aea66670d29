"""`lpemu demo`: the seed question answered by running it.

The seed scenarios (emu/seed/, also examples/seed/) run two user tasks and
a kthread on two CPUs; they call foo() { f = bar(); something_else(); baz(f); }
and sleep in something_else(). The patch carries bar+baz (scenario.toml)
or foo+bar+baz (scenario-foo.toml). Under each model a transition starts at
`runs` points spread over one cycle of the tasks (the exhaustive strategy),
and each run is checked by the oracle (a system call that ran an old bar and
a new baz is inconsistent) and by the scenario's value assertion (the new
baz must receive thousandths). Each row is judged by EXPECTED (the words of
emu/runs/expect.py): a model that does not answer the seed question as
expected is a surprise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from emu.app.tables import format_table
from emu.models import DEFAULT_MODELS
from emu.runs import expect, scenario
from emu.runs.campaign import Plan, summarize
from emu.runs.fuzz import Runner

SEED = Path(__file__).resolve().parent.parent / "seed"
DEMO_MODELS = DEFAULT_MODELS
VARIANTS = {"bar+baz": SEED / "scenario.toml", "foo+bar+baz": SEED / "scenario-foo.toml"}
#: the seed question's answer, per variant and model (emu/runs/expect.py's words): neither
#: stop_machine nor livepatch looks for foo on a stack unless foo is in the patch; kGraft runs a
#: whole system call in one universe; kpatch may give up (-EBUSY) while a task sleeps in foo.
#: The scenario files carry no [expect], so `lpemu fuzz` on them reports what it finds.
EXPECTED = {
    "bar+baz": {"immediate": ("unsafe",), "stop_machine": ("unsafe",), "kgraft": ("safe", "completes"),
                "livepatch": ("unsafe",)},
    "foo+bar+baz": {"immediate": ("unsafe",), "stop_machine": ("safe",), "kgraft": ("safe", "completes"),
                    "livepatch": ("safe", "completes")},
}


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
    latency_median: int | None = None        # campaign.median: a run's, in instructions
    latency_max: int | None = None
    example: str | None = None
    expected: tuple[str, ...] = ()
    surprise: str | None = None        # why the row breaks its [expect], if it does

    def to_json(self) -> dict:
        return asdict(self)


def run_demo(*, runs: int = 24, models=DEMO_MODELS, progress=None) -> list[Summary]:
    """Every model under both variants; progress(model, variant, failing)
    after each run (failing: 1 if it has a finding of the default kinds)."""
    results = []
    for variant, path in VARIANTS.items():
        plan = Plan(str(path), list(models), list(range(runs)), "exhaustive")
        records = {}
        prog = scenario.build(scenario.load(path))
        with Runner(prog) as runner:
            for model, seed in plan.runs():
                rec = records[model, seed] = runner.execute(runner.plan(model, seed, strategy="exhaustive")).to_json()
                if progress:
                    progress(model, variant, 1 if expect.failing(rec, expect.DEFAULT_FAIL_ON) else 0)
        for row in summarize(plan, records)["models"]:
            keep = {k: row[k] for k in (f.name for f in fields(Summary)) if k in row}
            wanted = EXPECTED[variant].get(row["model"], ())
            verdict = expect.judge_expectations(row["model"], wanted, [records[row["model"], s] for s in plan.seeds])
            results.append(Summary(**keep, variant=variant, example=_example(plan, records, row["model"]),
                                   expected=wanted, surprise=None if verdict.ok else verdict.why))
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


def table(results, *, width: int | None = None) -> str:
    """The comparison (emu/app/tables.py: fitted to width when given)."""
    heads = ("model", "patch", "runs", "inconsistent", "bad values", "completed", "failed", "stalled", "expected")
    rows = [[s.model, s.variant, s.runs, s.inconsistent, s.bad_values, s.completed, s.failed, s.stalled,
             ("" if not s.expected else ",".join(s.expected) + (" (NO)" if s.surprise else ""))] for s in results]
    return format_table(heads, rows, width=width)
