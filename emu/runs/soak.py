"""The emulator checked on programs nobody wrote for it: generated
scenarios (emu/runs/generate.py) run under every model, and every run is
held to what the emulator itself promises. A breach is the emulator's bug,
never a finding about a patch.

For each scenario and model, one run of the scenario's default strategy:
- it ends by the scenario's own rules: completed, failed (a refused
  action), stalled, idle, or a soft lockup of a task that never schedules;
  any other fault of a well-formed program is a breach; a run that reaches
  the bound on the events a run keeps is refused (EventBound, exit 2 in
  lpemu) and counted as such, not a breach, when repeat and twin refuse it
  the same way;
- the same RunSpec run again gives the same trace hash (determinism), and so
  does the scheduler's Python twin (emu/engine/sched.py against sched.c);
- the model kept its own promise (emu/runs/promise.py, from the trace: no
  task switched early, while running or with a checked function on its
  stack, kGraft's units in one universe, stop_machine's switch with every
  CPU stopped, no task left behind, ...; a force gives up what it must:
  kGraft's universe of the unit it cuts, stop_machine's stack check).

`python -m emu.runs.soak --scenarios N` runs N scenarios on the cores and
prints what it tried (the knobs the generator chose, counted) and every
breach with the seed and the command that replays it; exit 1 on a breach.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from emu.errors import EmuError, EventBound
from emu.runs import scenario
from emu.runs.campaign import POOL_CONTEXT
from emu.runs.fuzz import Runner
from emu.runs.generate import generate

#: a fault a well-formed generated program may legitimately end with
ALLOWED_FAULTS = ("soft lockup",)
#: the outcome of a run refused at the bound on a run's events (EventBound):
#: a generated scenario cannot know beforehand how dense a model's run is
#: (a stalled transition beside a CPU-bound kthread runs its whole horizon)
BOUNDED = "refused at the event bound"


def check_scenario(seed: int, *, twins: bool = True, workdir: Path | None = None, extended: bool = True) -> dict:
    """Generate scenario seed (extended: with the second generator's knobs,
    emu/runs/generate.py), run it under every model and return
    {"seed", "shape", "runs", "outcomes", "breaches": [...]}."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path, shape = generate(seed, Path(tmp), extended=extended)
        breaches: list[dict] = []
        outcomes: dict[str, str] = {}
        runs = 0
        try:
            prog = scenario.build(scenario.load(path))
        except EmuError as exc:
            return {"seed": seed, "shape": asdict(shape), "runs": 0, "outcomes": {},
                    "breaches": [{"model": "-", "what": "build", "detail": str(exc)[:2000]}]}

        def breach(model, what, detail):
            breaches.append({"model": model, "what": what, "detail": detail})

        with Runner(prog) as runner:
            twin = Runner(prog, cycle=runner.cycle(), sched="python") if twins else None
            for model in scenario.MODELS:
                spec = runner.plan(model, 0)
                try:
                    first = _run(runner, spec)
                    again = _run(runner, spec)
                    py = _run(twin, spec) if twin is not None else None
                except Exception as exc:      # the runner itself broke: the worst breach
                    breach(model, "exception", f"{type(exc).__name__}: {exc}")
                    breaches[-1]["spec"] = spec.to_json()
                    continue
                runs += 2 if py is None else 3
                bounded = isinstance(first, EventBound)
                outcomes[model] = BOUNDED if bounded else first.outcome
                if _same(again) != _same(first):
                    breach(model, "repeat", f"{_same(first)} then {_same(again)}")
                if py is not None and _same(py) != _same(first):
                    breach(model, "twin", f"C {_same(first)}, Python {_same(py)}")
                if not bounded:
                    if first.fault and not any(a in first.fault for a in ALLOWED_FAULTS):
                        breach(model, "fault", first.fault)
                    if first.promise_breaches:
                        breach(model, "promise", f"{first.promise_breaches} breaches of the model's promise: "
                                                 f"{first.promise[0]['text']}")
                        breaches[-1]["rules"] = sorted({b["rule"] for b in first.promise})
                for b in breaches:
                    b.setdefault("spec", spec.to_json())
        return {"seed": seed, "shape": asdict(shape), "runs": runs, "outcomes": outcomes, "breaches": breaches}


def _run(runner: Runner, spec):
    """spec's run: its Result, or the EventBound that refused it (a run
    that asks for more events than a run may keep: the input's refusal,
    exit 2 in lpemu, not a fault of the emulator)."""
    try:
        return runner.execute(spec)
    except EventBound as exc:
        return exc


def _same(run) -> str:
    """What must be the same when a run is repeated (or run by the twin):
    its trace hash, or the message of its refusal at the event bound (the
    same count at the same time)."""
    return str(run) if isinstance(run, EventBound) else run.trace_hash


def _counted(results: list[dict]) -> dict:
    """How often each knob value was tried."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        for k, v in r["shape"].items():
            if k != "seed":
                counts[k][str(v)] += 1
        for model, outcome in r["outcomes"].items():
            counts[f"outcome {model}"][outcome] += 1
    return {k: dict(sorted(c.items())) for k, c in sorted(counts.items())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emu.runs.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", type=int, default=100, help="how many generated scenarios (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="the first scenario seed (default 0)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--no-twins", action="store_true", help="skip the Python scheduler twin (3x faster)")
    ap.add_argument("--classic", action="store_true",
                    help="the scenarios as generated before the second generator's knobs (kernels, modules, "
                         "shadow variables, ...) came: a seed's old scenario")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    if args.scenarios < 1 or args.jobs < 1:
        ap.error("--scenarios and --jobs must be at least 1")
    seeds = range(args.seed, args.seed + args.scenarios)
    t0 = time.monotonic()
    results = []
    with ProcessPoolExecutor(args.jobs, mp_context=POOL_CONTEXT) as pool:
        futures = [pool.submit(check_scenario, s, twins=not args.no_twins, extended=not args.classic) for s in seeds]
        for i, f in enumerate(futures, 1):
            results.append(f.result())
            if not args.json and (i % 50 == 0 or i == len(futures)):
                bad = sum(bool(r["breaches"]) for r in results)
                print(f"{i}/{len(futures)} scenarios, {bad} with breaches, {time.monotonic() - t0:.0f} s",
                      file=sys.stderr)
    breaches = [dict(b, seed=r["seed"]) for r in results for b in r["breaches"]]
    report = {"scenarios": len(results), "runs": sum(r["runs"] for r in results),
              "seconds": round(time.monotonic() - t0, 1), "tried": _counted(results), "breaches": breaches}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['scenarios']} generated scenarios, {report['runs']} runs in {report['seconds']} s")
        for knob, values in report["tried"].items():
            print(f"  {knob}: " + ", ".join(f"{v} x{n}" for v, n in values.items()))
        print(f"{len(breaches)} breaches")
        for b in breaches:
            print(f"  seed {b['seed']} {b['model']} {b['what']}: {b['detail'][:300]}")
            classic = ", extended=False" if args.classic else ""
            print(f"    regenerate: python -c 'from emu.runs.generate import generate; "
                  f"generate({b['seed']}, \"gen-{b['seed']}\"{classic})'")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
