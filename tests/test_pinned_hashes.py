"""Pinned trace hashes: every example scenario under every model and
strategy, two seeds each. A change that is meant to keep results the same
(a restructuring, a faster path) must keep every hash; a change that is
meant to change a run's events updates tests/data/trace_hashes.json in the
same commit and says why (regenerate: python tests/test_pinned_hashes.py)."""
import json
import os
import subprocess
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


@pytest.mark.parametrize("perturb", ["165", "16"])
def test_trace_hashes_do_not_depend_on_what_the_heap_held(perturb):
    """glibc's MALLOC_PERTURB_ fills every allocation and every freed chunk
    with a byte pattern: memory read before anything wrote it (in the C
    core, Unicorn, keystone, capstone) then holds other values than on a
    fresh heap, and a run that depended on it would change. Each process
    builds its programs anew (the C compiler, keystone) and runs them."""
    paths = [ROOT / "examples" / "seed" / "scenario.toml", ROOT / "examples" / "modules" / "scenario.toml"]
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
            "from test_pinned_hashes import current_hashes; "
            "print(json.dumps(current_hashes([Path(p) for p in sys.argv[2:]])))")
    run = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), *map(str, paths)],
                         env={**os.environ, "MALLOC_PERTURB_": perturb}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.splitlines()[-1])
    pinned = json.loads(PINNED.read_text())
    assert got == {k: pinned[k] for k in got} and len(got) == 2 * len(scenario.MODELS) * len(scenario.STRATEGIES) * len(SEEDS)


if __name__ == "__main__":
    json.dump(current_hashes(example_scenarios()), sys.stdout, indent=1, sort_keys=True)
    print()
