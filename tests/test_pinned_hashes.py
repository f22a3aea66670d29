"""Pinned trace hashes: every example scenario under every model and
strategy, two seeds each. A change that is meant to keep results the same
(a restructuring, a faster path) must keep every hash; a change that is
meant to change a run's events updates tests/data/trace_hashes.json in the
same commit and says why (regenerate: python tests/test_pinned_hashes.py)."""
import json
import sys
from pathlib import Path

import pytest

from emu.runs import scenario
from emu.runs.fuzz import Runner

ROOT = Path(__file__).resolve().parent.parent
PINNED = Path(__file__).resolve().parent / "data" / "trace_hashes.json"
SEEDS = range(2)


def current_hashes(paths) -> dict[str, str]:
    out = {}
    for path in paths:
        prog = scenario.build(scenario.load(path))
        with Runner(prog) as r:
            for model in scenario.MODELS:
                for strategy in scenario.STRATEGIES:
                    for seed in SEEDS:
                        res = r.execute(r.plan(model, seed, strategy=strategy))
                        out[f"{path.parent.name}/{path.name}:{model}:{strategy}:{seed}"] = res.trace_hash[:16]
    return out


def example_scenarios() -> list[Path]:
    return sorted((ROOT / "examples").glob("*/*.toml"))


@pytest.mark.parametrize("path", example_scenarios(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_trace_hashes_are_pinned(path):
    pinned = json.loads(PINNED.read_text())
    got = current_hashes([path])
    want = {k: v for k, v in pinned.items() if k.startswith(f"{path.parent.name}/{path.name}:")}
    assert got == want


if __name__ == "__main__":
    json.dump(current_hashes(example_scenarios()), sys.stdout, indent=1, sort_keys=True)
    print()
