"""Runs to the first failure: how fast each strategy finds a bug.

For a scenario, a model and a strategy, the number of runs (seeds from the
scenario's first seed on, in order, as a campaign runs them) until the first
run that mixes versions or breaks an assertion, or None when none of `limit`
runs did. compare() measures every (scenario, model, strategy) in one go and
table() prints it; `lpemu first-failure` is the command, docs/fuzzing.md
holds a table it printed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emu.runs import scenario
from emu.runs.fuzz import Runner

STRATEGIES = ("directed", "exhaustive", "random")


@dataclass
class Row:
    scenario: str
    model: str
    runs: dict[str, int | None]          # strategy -> runs to the first failure (None: not within limit)

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "model": self.model, "runs": self.runs}


def runs_to_first_failure(runner: Runner, model: str, strategy: str, limit: int) -> int | None:
    first = runner.scn.fuzz.seed
    for i in range(limit):
        if runner.execute(runner.plan(model, first + i, strategy=strategy)).failing:
            return i + 1
    return None


def compare(paths, *, models=None, strategies=STRATEGIES, limit: int = 200, progress=None) -> list[Row]:
    """One Row per (scenario, model); models default to each scenario's [fuzz] models."""
    rows = []
    paths = [Path(p) for p in paths]
    short = [f"{p.parent.name}/{p.name}" for p in paths]
    for path, name in zip(paths, short):
        if short.count(name) > 1:          # x/seed/scenario.toml and y/seed/scenario.toml: as given
            name = str(path)
        prog = scenario.build(scenario.load(path))
        with Runner(prog) as runner:
            for model in models or prog.scenario.fuzz.models:
                row = Row(name, model, {})
                for strategy in strategies:
                    row.runs[strategy] = runs_to_first_failure(runner, model, strategy, limit)
                    if progress:
                        progress()
                rows.append(row)
    return rows


def table(rows: list[Row], limit: int) -> str:
    """A Markdown table: runs to the first failure, '>limit' for none."""
    strategies = list(rows[0].runs) if rows else list(STRATEGIES)
    lines = ["| scenario | model | " + " | ".join(strategies) + " |",
             "|---|---|" + "---:|" * len(strategies)]
    for r in rows:
        cells = [str(v) if v is not None else f">{limit}" for v in r.runs.values()]
        lines.append(f"| {r.scenario} | {r.model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
