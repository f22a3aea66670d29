"""The `lpemu` command (also `python -m emu`).

User errors print one message and exit with status 2, never a traceback.
With --json a command prints one JSON object on stdout and nothing else there
(progress goes to stderr).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emu.errors import GuestFault, UserError
from emu.runs.scenario import MODELS, STRATEGIES

VERSION_NAMES = {0: "old", 1: "new"}
UNTIL_COVERED_RUNS = 1000     # --until-covered without --runs: at most this many runs per model
UNTIL_COVERED_STEP = 16       # runs per model between two looks at the coverage
MISSED_SHOWN = 10


# ---- shared pieces ------------------------------------------------------------------------------
def _console(stderr: bool = False):
    from rich.console import Console
    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal:
        con = Console(stderr=stderr, highlight=False, width=160)
    return con


def _load(path: str):
    from emu.runs import scenario
    scn = scenario.load(path)
    return scenario.build(scn)


def _progress(total: int, enabled: bool, label: str):
    """A rich progress bar on stderr (only when stderr is a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    console = _console(stderr=True)
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, disable=not (enabled and console.is_terminal), transient=True)
    return bar, bar.add_task(label, total=total)


def _spec_from_args(runner, args):
    from dataclasses import replace
    spec = runner.plan(args.model, args.seed, strategy=args.strategy)
    if args.at is not None:
        spec = replace(spec, start=args.at)
    if args.schedule:
        spec = replace(spec, schedule=args.schedule, sched_seed=args.sched_seed
                       if args.sched_seed is not None else spec.sched_seed)
    if args.preempt:
        spec = replace(spec, preempt=args.preempt)
    if args.tasks:
        names = [n for n in args.tasks.split(",") if n]
        known = {i for t in runner.scn.tasks for i in t.instances()}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(f"--tasks: no task '{unknown[0]}' in the scenario (tasks: {', '.join(sorted(known))})")
        spec = replace(spec, tasks=tuple(names))
    return spec


def _command_line(args, spec) -> str:
    parts = ["lpemu", "run", args.scenario, "--model", spec.model, "--seed", str(spec.seed),
             "--strategy", spec.strategy, "--at", str(spec.start), "--schedule", spec.schedule]
    if spec.schedule != "rr":
        parts += ["--sched-seed", str(spec.sched_seed)]
    if spec.preempt:
        parts += ["--preempt", spec.preempt]
    if spec.tasks is not None:
        parts += ["--tasks", ",".join(spec.tasks)]
    return " ".join(parts)


def _outputs(args, machine, model, result) -> dict:
    """--trace FILE (Perfetto JSON) and --timeline FILE (PNG/SVG) of a kept run."""
    written = {}
    if not (args.trace or args.timeline):
        return written
    from emu.app import report
    functions = {f.old.id for p in model.patches for _, f in p.funcs() if f.old is not None}
    if args.trace:
        report.write_perfetto(args.trace, machine, model.transitions, functions, force=args.force)
        written["trace"] = args.trace
    if args.timeline:
        report.timeline(machine, model.transitions, functions, args.timeline, force=args.force,
                        title=f"{machine.name} under {model.name}, seed {result.spec.seed}")
        written["timeline"] = args.timeline
    return written


def _print_result(res, machine, model, *, title: str) -> None:
    from rich.table import Table
    con = _console()
    spec = res.spec
    verdict = ("[bold red]INCONSISTENT[/]" if res.inconsistent else
               "[bold red]ASSERTION FAILED[/]" if res.violations else "[green]consistent[/]")
    con.print(f"[bold]{title}[/]: model {spec.model}, seed {spec.seed} ({spec.strategy}), "
              f"first action at {spec.start}, schedule {spec.schedule}"
              f"{'/' + str(spec.sched_seed) if spec.schedule != 'rr' else ''}: {verdict}, "
              f"transition {res.outcome}, ran to t={res.end}, {res.preemptions} preemptions, "
              f"trace {res.trace_hash}")
    if machine is not None and machine.log:
        con.print("\n[bold]kernel log[/]")
        for t, text in machine.log:
            con.print(f"  [{t:>10}] {text}", markup=False)
    if res.transitions:
        tab = Table(title="transitions", title_justify="left")
        for col in ("patch", "target", "requested", "completed", "result", "attempts", "latency", "pause"):
            tab.add_column(col)
        for t in res.transitions:
            pause = max((e - s for s, e in t["pauses"]), default=None)
            tab.add_row(t["patch"], t["target"], str(t["requested_at"]), str(t["completed_at"] or "-"),
                        t["result"] + (f" ({t['error']})" if t["error"] else ""), str(t["attempts"]),
                        str(t["latency"] if t["latency"] is not None else "-"),
                        str(pause if pause is not None else "-"))
        con.print(tab)
        for t in res.transitions:
            for b in t["blockers"]:
                con.print(f"  blocked by task {b['task']}:", markup=False)
                for line in b["stack"]:
                    con.print(f"      {line}", markup=False)
    for e in res.errors:
        con.print(f"  refused at t={e['time']}: {e['action']}: {e['error']}", markup=False)
    if res.fault:
        con.print(f"\n[bold red]guest fault[/]\n{res.fault}")
    for bad in res.inconsistencies:
        runs = ", ".join(f"{e['function']} {VERSION_NAMES.get(e['version'], 'v' + str(e['version']))}"
                         f" (v{e['version']}) at {e['clock']}" for e in bad["entries"])
        con.print(f"\n[red]inconsistent[/]: task {bad['task']}, {bad['unit']} "
                  f"(t={bad['start']}..{bad['end']}): {runs}")
    if res.inconsistent_units > len(res.inconsistencies):
        con.print(f"  ... {res.inconsistent_units - len(res.inconsistencies)} more inconsistent units")
    for v in res.violations:
        con.print(f"\n[red]assertion failed[/]: {v['assert']!r} (line {v['line']}) on observe({v['key']}, "
                  f"{v['value']}) by task {v['task']} at t={v['time']}" + (f": {v['error']}" if v["error"] else ""))
    if model is not None and res.transitions:
        st = model.status()
        pending = [t["name"] for t in st["tasks"] if t["pending"]]
        if pending:
            con.print(f"\ntasks still pending: {', '.join(pending)}")


def _emit_json(obj) -> None:
    print(json.dumps(obj, default=str))


# ---- commands -----------------------------------------------------------------------------------
def _run(args) -> int:
    """`lpemu run` and `lpemu replay [--shrink]`: one run, printed."""
    from emu.runs.fuzz import Runner
    from emu.runs.shrink import shrink
    prog = _load(args.scenario)
    runner = Runner(prog)
    spec = _spec_from_args(runner, args)
    shrunk = None
    if args.shrink:
        bar, task = _progress(args.budget, not args.json, "shrinking")
        with bar:
            small, _, tried = shrink(runner, spec, budget=args.budget, progress=lambda: bar.advance(task))
        shrunk = (spec, small, tried)
        spec = small
    res, m, model = runner.execute(spec, keep=True)
    try:
        written = _outputs(args, m, model, res)
        if args.json:
            out = res.to_json() | {"log": [[t, text] for t, text in m.log], "status": model.status(),
                                   "files": written,
                                   "command": _command_line(args, spec)}
            if shrunk:
                out["shrunk_from"] = shrunk[0].to_json()
                out["shrink_runs"] = shrunk[2]
            _emit_json(out)
            return 0
        what = "shrunk " if shrunk else "replay of " if args.command == "replay" else ""
        _print_result(res, m, model, title=what + Path(args.scenario).name)
        if shrunk:
            orig = shrunk[0]
            ntasks = sum(t.count for t in runner.scn.tasks)
            print(f"\nshrunk in {shrunk[2]} runs: first action at {spec.start} (was {orig.start}), "
                  f"{len(spec.tasks) if spec.tasks is not None else ntasks} tasks (was "
                  f"{len(orig.tasks) if orig.tasks is not None else ntasks}), schedule {spec.schedule} "
                  f"(was {orig.schedule}), {res.preemptions} preemptions")
        print(f"\nreproduce: {_command_line(args, spec)}")
        for kind, path in written.items():
            print(f"{kind}: {path}")
    finally:
        m.engine.close()
        runner.close()
    return 0


def _fuzz(args) -> int:
    from emu.runs import campaign, coverage
    prog = _load(args.scenario)
    fz = prog.scenario.fuzz
    models = args.model or fz.models
    strategy = args.strategy or fz.strategy
    runs = args.runs or (UNTIL_COVERED_RUNS if args.until_covered else fz.runs)
    seed = fz.seed if args.seed is None else args.seed
    if runs < 1:
        raise UserError("--runs must be at least 1")
    if args.jobs is not None and args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    if args.resume and args.force:
        raise UserError("--resume and --force exclude each other")
    if (args.resume or args.force) and not args.out:
        raise UserError("--resume and --force need --out DIR")
    client = None
    if args.scheduler:                 # before anything is written: no Dask or no scheduler is a UserError
        from emu.runs import distributed
        client = distributed.connect(args.scheduler)
    jobs = args.jobs or campaign.default_jobs()
    # --until-covered: rounds of runs until every model met every state, at most `runs`
    step = min(runs, max(UNTIL_COVERED_STEP, 4 * jobs)) if args.until_covered else runs
    plan = campaign.Plan(str(Path(args.scenario).resolve()), list(models), list(range(seed, seed + step)), strategy)
    try:
        camp = campaign.Campaign(prog, plan, jobs=jobs,
                                 out=Path(args.out) if args.out else None, resume=args.resume, force=args.force)
    except BaseException:
        if client is not None:
            client.close()
        raise
    bar, task = _progress(runs * len(models), not args.json, "fuzzing")
    bar.advance(task, len(camp.records))
    interrupted = False
    try:
        with bar:
            while True:
                camp.run(progress=lambda n: bar.advance(task, n), client=client)
                if not args.until_covered or len(plan.seeds) >= runs:
                    break
                if all(m["coverage"]["complete"] for m in camp.summary()["models"]):
                    break
                more = min(step, runs - len(plan.seeds))
                plan.seeds.extend(range(plan.seeds[-1] + 1, plan.seeds[-1] + 1 + more))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        camp.close()
        if client is not None:
            client.close()
    summary = camp.summary()
    summary["interrupted"] = interrupted
    if args.out:
        summary["out"] = str(args.out)
    last = plan.seeds[-1]
    if args.json:
        _emit_json(summary)
    else:
        _print_summary(summary, title=f"{Path(args.scenario).name}: {strategy}, seeds {seed}..{last}")
        _print_coverage(summary, coverage)
        if interrupted:
            print(f"interrupted: {len(camp.records)} runs kept" +
                  (f"; continue with --resume --out {args.out}" if args.out else ""))
        for s in summary["models"]:
            if s["first_failing_seed"] is not None:
                print(f"{s['model']}: first failing seed {s['first_failing_seed']}: "
                      f"lpemu replay {args.scenario} --model {s['model']} --seed {s['first_failing_seed']} "
                      f"--strategy {strategy} --shrink")
            if s.get("first_fault_seed") is not None:
                print(f"{s['model']}: first faulting seed {s['first_fault_seed']}: "
                      f"lpemu replay {args.scenario} --model {s['model']} --seed {s['first_fault_seed']} "
                      f"--strategy {strategy} --shrink\n  " + str(s["first_fault"]).replace("\n", "\n  "))
    return 130 if interrupted else 0


def _print_coverage(summary: dict, coverage) -> None:
    """Per model: states met at transition start over the probe's; the never-met ones."""
    shown = False
    for s in summary["models"]:
        cov = s.get("coverage")
        if cov is None:
            continue
        if not shown:
            print(coverage.probe_line(cov))
            shown = True
        print(f"{s['model']}: {coverage.line(cov)}")
        missed = [(t["task"], m) for t in cov["tasks"] for m in t["missed"]]
        for task, m in missed[:MISSED_SHOWN]:
            opened = f" (patched open: {', '.join(m['open'])})" if m["open"] else ""
            print(f"  never met: {task}: {m['state']}{opened}")
        if len(missed) > MISSED_SHOWN:
            print(f"  ... {len(missed) - MISSED_SHOWN} more never met (--json lists them)")


def _first_failure(args) -> int:
    from emu.runs import first_failure
    if args.limit < 1:
        raise UserError("--limit must be at least 1")
    for path in args.scenario:
        _load(path)                    # a bad scenario is a UserError before anything runs
    strategies = args.strategy or list(first_failure.STRATEGIES)
    rows = first_failure.compare(args.scenario, models=args.model, strategies=strategies, limit=args.limit)
    if args.json:
        _emit_json({"limit": args.limit, "rows": [r.to_json() for r in rows]})
    else:
        print(f"runs to the first failing run (seeds in order; >{args.limit}: none within {args.limit})\n")
        print(first_failure.table(rows, args.limit))
    return 0


def _print_summary(summary: dict, *, title: str) -> None:
    from rich.table import Table
    tab = Table(title=title, title_justify="left")
    cols = ("model", "runs", "inconsistent", "bad values", "completed", "failed", "stalled", "faults",
            "latency median", "latency max", "pause median", "pause max", "first failing seed")
    for c in cols:
        tab.add_column(c, justify="left" if c == "model" else "right")

    def f(v):
        return "-" if v is None else str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    for s in summary["models"]:
        tab.add_row(s["model"], f(s["runs"]), f(s["inconsistent"]), f(s["bad_values"]), f(s["completed"]),
                    f(s["failed"]), f(s["stalled"]), f(s["fault"] + s["error"] + s["crash"]),
                    f(s["latency_median"]), f(s["latency_max"]), f(s["pause_median"]), f(s["pause_max"]),
                    f(s["first_failing_seed"]))
    _console().print(tab)
    print("times in virtual instructions (1 s = 100 ticks); latency: from the request to completion; "
          "pause: every CPU stopped")


def _demo(args) -> int:
    from emu.app import demo
    if args.runs < 1:
        raise UserError("--runs must be at least 1")
    bar, task = _progress(args.runs * len(demo.DEMO_MODELS) * len(demo.VARIANTS), not args.json, "demo")
    with bar:
        results = demo.run_demo(runs=args.runs, progress=lambda: bar.advance(task))
    if args.json:
        _emit_json({"results": [s.to_json() for s in results]})
        return 0
    print("Is the seed patch safe? foo() { f = bar(); something_else(); baz(f); },\n"
          "the patch changes what bar() returns and patches baz() to match.\n"
          f"{args.runs} transition start points per row, each run checked by the oracle.\n")
    print(demo.table(results))
    for s in results:
        if s.example:
            print(f"\n{s.model} / {s.variant}, first inconsistent run (seed {s.first_failing_seed}):\n  {s.example}")
    return 0


def _bench(args) -> int:
    from emu.app import bench
    result = bench.run_bench(quick=args.quick)
    if args.json:
        _emit_json(result)
    else:
        print(bench.format_bench(result))
    if args.plot:
        bench.write_scaling_plot(result, args.plot)
    return 0


def _diff(args) -> int:
    from emu.images import diff
    d = diff.diff_sources(args.old, args.new, cflags=args.cflags.split() if args.cflags else ())
    if args.json:
        _emit_json(d.to_json())
        return 0
    for kind in ("changed", "new", "removed"):
        names = getattr(d, kind)
        print(f"{kind}: {', '.join(names) if names else '(none)'}")
    for name, why in sorted(d.reasons.items()):
        print(f"  {name}: {why}")
    for warning in d.warnings:
        print(f"warning: {warning}")
    return 0


# ---- the parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lpemu", description="live-patching laboratory: real x86-64 code in "
                                "Unicorn under every kernel live-patching consistency model")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the seed scenario under every model and print the comparison")
    d.add_argument("--runs", type=int, default=24, help="transition start points per model and variant")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=_demo)

    def one_run(sp, *, model_required=True):
        sp.add_argument("scenario", help="scenario file (TOML)")
        sp.add_argument("--model", required=model_required, choices=MODELS)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--strategy", choices=STRATEGIES, help="how the seed picks the run (default: [fuzz])")
        sp.add_argument("--at", type=int, help="virtual time of the first action (overrides the seed's)")
        sp.add_argument("--schedule", choices=("rr", "random", "pct"), help="scheduling policy")
        sp.add_argument("--sched-seed", type=int, help="seed of a random or pct schedule")
        sp.add_argument("--preempt", choices=("none", "voluntary", "full"))
        sp.add_argument("--tasks", help="comma-separated task names that take part (default: all)")
        sp.add_argument("--trace", help="write a Perfetto/Chrome trace (JSON) of the run")
        sp.add_argument("--timeline", help="write a timeline picture (.png or .svg) of the run")
        sp.add_argument("--force", action="store_true", help="overwrite --trace/--timeline files")
        sp.add_argument("--json", action="store_true", help="print one JSON object")

    r = sub.add_parser("run", help="one deterministic run")
    one_run(r)
    r.set_defaults(func=_run, shrink=False)

    rp = sub.add_parser("replay", help="re-run one run of a campaign exactly; --shrink minimizes it")
    one_run(rp)
    rp.add_argument("--shrink", action="store_true", help="find the smallest failing variant")
    rp.add_argument("--budget", type=int, default=200, help="runs the shrinker may spend")
    rp.set_defaults(func=_run)

    f = sub.add_parser("fuzz", help="a transition-timing campaign")
    f.add_argument("scenario")
    f.add_argument("--model", action="append", choices=MODELS, help="model (repeatable; default: [fuzz] models)")
    f.add_argument("--runs", type=int, help="runs per model (default: [fuzz] runs)")
    f.add_argument("--jobs", type=int, help="worker processes (default: every core)")
    f.add_argument("--strategy", choices=STRATEGIES)
    f.add_argument("--seed", type=int, help="first seed (default: [fuzz] seed)")
    f.add_argument("--out", help="directory for runs.jsonl, summary.json, campaign.json")
    f.add_argument("--resume", action="store_true", help="continue the campaign in --out")
    f.add_argument("--force", action="store_true", help="replace the results in --out")
    f.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask cluster of this scheduler (tcp://HOST:PORT) instead of local processes")
    f.add_argument("--until-covered", action="store_true",
                   help="run until every state of every task was met at a transition start "
                        f"(at most --runs runs per model, default {UNTIL_COVERED_RUNS})")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=_fuzz)

    ff = sub.add_parser("first-failure", help="runs to the first failure under each strategy (a table)")
    ff.add_argument("scenario", nargs="+")
    ff.add_argument("--model", action="append", choices=MODELS, help="model (repeatable; default: [fuzz] models)")
    ff.add_argument("--strategy", action="append", choices=STRATEGIES,
                    help="strategy (repeatable; default: directed, exhaustive, random)")
    ff.add_argument("--limit", type=int, default=200, help="runs tried per model and strategy")
    ff.add_argument("--json", action="store_true")
    ff.set_defaults(func=_first_failure)

    b = sub.add_parser("bench", help="what a patch switch costs, and what the emulator costs")
    b.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    b.add_argument("--plot", help="write the scaling plot (.png or .svg)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_bench)

    df = sub.add_parser("diff", help="the functions a patch must carry (OLD.c -> NEW.c)")
    df.add_argument("old")
    df.add_argument("new")
    df.add_argument("--cflags", help="extra compiler flags")
    df.add_argument("--json", action="store_true")
    df.set_defaults(func=_diff)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"lpemu: error: {exc}", file=sys.stderr)
        return 2
    except GuestFault as exc:
        print(f"lpemu: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lpemu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
