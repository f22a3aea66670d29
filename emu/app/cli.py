"""The `lpemu` command (also `python -m emu`).

Exit status (EXIT_*): 0 no finding, 1 findings (run, replay: a finding of a
kind --fail-on counts; fuzz: a model whose campaign breaks its [expect], or
without one has a finding --fail-on counts; demo: a model that does not
answer the seed question as expected, emu/app/demo.py EXPECTED), 2 usage or input
error (one message on stderr, never a traceback), 128 + the signal when a
signal stopped it, as a shell reports a process that signal killed (130
Ctrl-C, 143 SIGTERM, 129 SIGHUP: emu/runs/interrupt.py); what was written
by then is kept.
With --json a command prints one JSON object on stdout and nothing else there
(progress and warnings go to stderr).
"""
from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from pathlib import Path

from emu import __version__
from emu.errors import GuestFault, UserError
from emu.models import MODEL_NAMES
from emu.runs import expect, interrupt
from emu.runs.scenario import MAX_RUNS, MAX_TIME, SEED_MAX, STRATEGIES

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2

VERSION_NAMES = {0: "old", 1: "new"}
UNTIL_COVERED_RUNS = 1000     # --until-covered without --runs: at most this many runs per model
UNTIL_COVERED_STEP = 16       # runs per model between two looks at the coverage
MISSED_SHOWN = 10


# ---- shared pieces ------------------------------------------------------------------------------
def _console(stderr: bool = False):
    """rich on a terminal; piped, lines are not wrapped or padded to a width."""
    from rich.console import Console
    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal:
        con = Console(stderr=stderr, highlight=False, width=100_000, soft_wrap=True)
    return con


def _table(headers, rows) -> str:
    from emu.app.tables import format_table, width_of
    return format_table(headers, rows, width=width_of(sys.stdout))


def _path(text: str) -> str:
    """argparse type of a file or directory argument: an empty one is refused
    (Path("") is the current directory: --out "" would write into it, and
    --trace "" would silently write nothing)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no file")
    import errno
    import os
    try:
        os.lstat(text)
    except OSError as exc:
        # a name longer than the file system takes (ENAMETOOLONG) is refused
        # here: left to each check, Path.exists() raised it as a traceback
        if exc.errno == errno.ENAMETOOLONG:
            raise argparse.ArgumentTypeError(f"{text[:40]}...: {exc.strerror} ({len(os.fsencode(text))} bytes; "
                                             f"a name has at most 255, a path 4095)") from None
    return text


#: --jobs (and the pytest plugin's --lpemu-jobs): at most this many workers asked for
MAX_JOBS = 4096


def int_in(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi] (argparse names the option in its message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text[:40]} is outside {lo}..{hi:_}")
        return value
    parse.__name__ = "integer"
    return parse


def _output(option: str, path, force: bool, json_out: bool = False, made=None) -> None:
    """Check before the run that path can be written: its directory exists and
    is writable, and it is not a directory (an existing file needs --force);
    with json_out (--json), that it is not standard output, which holds
    the JSON document alone. made: a directory the command creates before
    it writes path (--out): path may be in it while it does not exist yet."""
    import os
    p = Path(path)
    if json_out:
        try:
            same = os.path.samestat(os.stat(path), os.fstat(1))
        except OSError:                    # path absent, or no standard output
            same = False
        if same:
            raise UserError(f"{option} {path}: is standard output, which holds the --json document alone: "
                            f"name a file")
    if p.is_dir():
        raise UserError(f"{option} {path}: is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        if made is not None and parent.absolute() == Path(made).absolute():
            return          # written once the command made it (and said so if it could not)
        raise UserError(f"{option} {path}: no such directory: {parent}")
    if p.exists() and not force:
        raise UserError(f"{option} {path}: already exists; remove it or pass --force to overwrite it")
    if not os.access(p if p.exists() else parent, os.W_OK):
        raise UserError(f"{option} {path}: not writable (permission denied or a read-only file system)")


DRAWN = "a picture lpemu drew (a PNG or SVG by Matplotlib)"


def _replaceable(option: str, path, ours, what: str) -> None:
    """UserError when path is a regular file that --force would replace but
    that ours(path) says lpemu did not write (emu/app/report.py is_trace,
    is_drawn; what names the kind): --force replaces lpemu's output of an
    earlier run, never a file of the user's under its name. A device or a
    fifo (/dev/null) is written in place (emu/runs/output.py)."""
    if Path(path).is_file() and not ours(path):
        raise UserError(f"{option} {path}: exists and is not {what}; --force replaces only such a file, never "
                        f"one of yours: remove it or choose another file")


def _not_an_input(option: str, path, scn) -> None:
    """UserError when path is a file the run reads (the scenario or one of
    its sources): --force replaces an output, never an input."""
    import os
    for f in scn.inputs:
        try:
            same = os.path.samefile(path, f)
        except OSError:                    # path or f absent: not the same file
            continue
        if same:
            raise UserError(f"{option} {path}: is {'the scenario itself' if f == scn.path else f'a source of the scenario ({f})'}; "
                            f"an output never replaces an input, even with --force: name another file")


def _load(path: str, kernel: str | None = None):
    """Load and build a scenario; kernel (--kernel) replaces its [machine] kernel."""
    from emu.runs import scenario
    scn = scenario.load(path)
    if kernel is not None:
        _check_kernel(kernel)
        scn.machine["kernel"] = kernel
    return scenario.build(scn)


def _progress(label: str, totals: dict[str, int], args):
    """Progress on stderr (emu/app/progress.py); --quiet turns it off."""
    from emu.app.progress import Progress
    return Progress(label, totals, enabled=not getattr(args, "quiet", False))


def _fail_on(args) -> tuple[str, ...]:
    try:
        return expect.parse_fail_on(args.fail_on) if args.fail_on is not None else expect.DEFAULT_FAIL_ON
    except ValueError as exc:
        raise UserError(f"--fail-on: {exc}") from None


def _spec_from_args(runner, args):
    from dataclasses import replace
    spec = runner.plan(args.model, args.seed, strategy=args.strategy)
    if args.at is not None:
        spec = replace(spec, start=args.at)
    if args.schedule:
        spec = replace(spec, schedule=args.schedule)
    if args.sched_seed is not None:
        # the seed of the run's schedule, --schedule's or the seed's own; a
        # round robin draws nothing: the option would change nothing
        if spec.schedule == "rr":
            raise UserError(f"--sched-seed {args.sched_seed}: the run's schedule is rr, which draws no random "
                            f"numbers; give --schedule random or pct with it")
        spec = replace(spec, sched_seed=args.sched_seed)
    if args.preempt:
        spec = replace(spec, preempt=args.preempt)
    if args.tasks is not None:
        names = [n for n in args.tasks.split(",") if n]
        runner.check_tasks(names, "--tasks")
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
    if getattr(args, "kernel", None):
        parts += ["--kernel", args.kernel]
    return shlex.join(parts)          # a path or a task name with spaces still reproduces


def _outputs(args, machine, model, result) -> dict:
    """--trace FILE (Perfetto JSON) and --timeline FILE (PNG/SVG) of a kept run."""
    written = {}
    if not (args.trace or args.timeline):
        return written
    from emu.app import report
    functions = {f.old.id for p in model.patches for _, f in p.funcs() if f.old is not None}
    option = "--trace"
    try:
        if args.trace:
            report.write_perfetto(args.trace, machine, model.transitions, functions, force=args.force,
                                  handovers=result.handovers)
            written["trace"] = args.trace
        option = "--timeline"
        if args.timeline:
            marks = report.marks_of(machine, result.to_json())
            report.timeline(machine, model.transitions, functions, args.timeline, force=args.force,
                            title=f"{machine.name} under {model.name}, seed {result.spec.seed}", marks=marks,
                            window=report.parse_window(args.window, machine, marks),
                            patch_names={p.index: p.name for p in model.patches})
            written["timeline"] = args.timeline
    except FileExistsError:              # made by someone else while the run ran
        raise UserError(f"{option} {getattr(args, option[2:])}: already exists (it was made while this run ran); "
                        f"remove it or pass --force to overwrite it") from None
    except OSError as exc:
        raise UserError(f"{option} {getattr(args, option[2:])}: cannot write it ({exc.strerror or exc})") from None
    return written


def _print_result(res, machine, model, *, title: str) -> None:
    from rich.markup import escape as esc    # what the run says is text: "[r8]" is an operand, not markup
    from emu.app import report
    con = _console()
    spec = res.spec
    verdict = ("[bold red]INCONSISTENT[/]" if res.inconsistent else
               "[bold red]ASSERTION FAILED[/]" if res.violations else "[green]consistent[/]")
    con.print(f"[bold]{esc(title)}[/]: model {spec.model}, seed {spec.seed} ({spec.strategy}), "
              f"first action at {spec.start}, schedule {spec.schedule}"
              f"{'/' + str(spec.sched_seed) if spec.schedule != 'rr' else ''}: {verdict}, "
              f"transition {res.outcome}, ran to t={res.end}, {_count(res.preemptions, 'preemption')}, "
              f"trace {res.trace_hash}")
    if machine is not None and machine.log:
        con.print("\n[bold]kernel log[/]")
        for t, text in machine.log:
            con.print(f"  [{t:>10}] {text}", markup=False)
    moments = report.module_moments(machine) if machine is not None else []
    if moments:
        con.print("\n[bold]modules[/]")
        for mo in moments:
            con.print(f"  [{mo.clock:>10}] {mo.module}: {mo.kind}" + (f" ({mo.task})" if mo.task else ""), markup=False)
    if res.transitions:
        rows = []
        for t in res.transitions:
            pause = max((e - s for s, e in t["pauses"]), default=None)
            rows.append([t["patch"], t["target"], t["requested_at"], t["completed_at"] or "-",
                         t["result"] + (f" ({t['error']})" if t["error"] else ""), t["attempts"],
                         t["latency"] if t["latency"] is not None else "-", pause if pause is not None else "-"])
        print("\ntransitions")
        print(_table(("patch", "target", "requested", "completed", "result", "attempts", "latency", "pause"),
                     rows))
        for t in res.transitions:
            _print_attempts(t)
    for e in res.errors:
        con.print(f"  refused at t={e['time']}: {e['action']}: {e['error']}", markup=False)
    for warning in res.warnings:
        con.print(f"[bold yellow]warning[/]: {esc(warning)}")
    if res.fault:
        con.print(f"\n[bold red]guest fault[/]\n{esc(str(res.fault))}")
    for bad in res.inconsistencies:
        runs = ", ".join(f"{e['function']} {VERSION_NAMES.get(e['version'], 'v' + str(e['version']))}"
                         f" (v{e['version']}) at {e['clock']}" for e in bad["entries"])
        con.print(f"\n[red]inconsistent[/]: task {esc(bad['task'])}, {esc(bad['unit'])} "
                  f"(t={bad['start']}..{bad['end']}): {esc(runs)}")
    if res.inconsistent_units > len(res.inconsistencies):
        con.print(f"  ... {res.inconsistent_units - len(res.inconsistencies)} more inconsistent units")
    for v in res.violations:
        con.print(f"\n[red]assertion failed[/]: " + esc(f"{v['assert']!r} (line {v['line']}) on observe({v['key']}, "
                  f"{v['value']}) by task {v['task']} at t={v['time']}" + (f": {v['error']}" if v["error"] else "")))
    for h in res.handovers:
        con.print(f"\n[red]value handover[/]: {esc(h['text'])}")
    if res.handover_count > len(res.handovers):
        con.print(f"  ... {res.handover_count - len(res.handovers)} more value handovers")
    for b in res.promise:
        con.print(f"\n[bold magenta]emulator error[/] (the model broke its own promise; this run says "
                  f"nothing about the patch): {esc(b['text'])}")
    if model is not None and res.transitions:
        st = model.status()
        pending = [t["name"] for t in st["tasks"] if t["pending"]]
        if pending:
            con.print(f"\ntasks still pending: {esc(', '.join(pending))}")


def _print_attempts(t: dict) -> None:
    """Each blocked attempt of a transition with its blockers' stacks;
    consecutive attempts blocked the same way are printed once."""
    log = t.get("attempt_log", [])
    i = 0
    while i < len(log):
        j = i
        while j + 1 < len(log) and log[j + 1]["blockers"] == log[i]["blockers"]:
            j += 1
        first, last = log[i], log[j]
        which = (f"attempt {first['attempt']} at t={first['clock']}" if i == j else
                 f"attempts {first['attempt']}..{last['attempt']} at t={first['clock']}..{last['clock']}")
        print(f"\n{t['patch']}: {which} blocked by {', '.join(b['task'] for b in first['blockers'])}")
        for b in first["blockers"]:
            if b["stack"]:
                print(f"  {b['task']}:")
                for line in b["stack"]:
                    print(f"      {line}")
        i = j + 1
    if t["attempts"] - (t["result"] == "completed") > len(log) and log:
        print(f"  (the first {len(log) - 1} blocked attempts and the last are kept)")


def _emit_json(obj) -> None:
    print(json.dumps(obj, default=str))


# ---- commands -----------------------------------------------------------------------------------
def _run(args) -> int:
    """`lpemu run` and `lpemu replay [--shrink]`: one run, printed. Exit 1
    when the run has a finding --fail-on counts."""
    from emu.app import report
    from emu.runs.fuzz import Runner
    from emu.runs.shrink import shrink
    fail_on = _fail_on(args)
    for option in ("trace", "timeline"):
        if getattr(args, option):
            _output(f"--{option}", getattr(args, option), args.force, args.json)
    if args.window is not None and not args.timeline:
        raise UserError(f"--window {args.window[:40]!r}: it chooses the span of --timeline; give --timeline FILE too")
    if args.timeline:                  # before the run, as every other mistake in an output path
        report.timeline_format(args.timeline)
        if args.window is not None:
            report.window_bounds(args.window)
        if args.trace and Path(args.trace).resolve() == Path(args.timeline).resolve():
            raise UserError(f"--trace and --timeline name the same file ({args.trace}): give each its own")
    prog = _load(args.scenario, args.kernel)
    for option in ("trace", "timeline"):
        if getattr(args, option):
            _not_an_input(f"--{option}", getattr(args, option), prog.scenario)
    if args.trace:
        _replaceable("--trace", args.trace, report.is_trace, "a trace lpemu wrote")
    if args.timeline:
        _replaceable("--timeline", args.timeline, report.is_drawn, DRAWN)
    runner = Runner(prog)
    spec = _spec_from_args(runner, args)
    shrunk = None
    if args.shrink:
        with _progress("shrinking", {spec.model: args.budget}, args) as bar:
            small, _, tried = shrink(runner, spec, budget=args.budget, progress=lambda failed: bar.advance(spec.model, 1, int(failed)))
        shrunk = (spec, small, tried)
        spec = small
    res, m, model = runner.execute(spec, keep=True)
    try:
        written = _outputs(args, m, model, res)
        record = res.to_json()
        failing = expect.failing(record, fail_on)
        if args.json:
            out = record | {"log": [[t, text] for t, text in m.log],
                            "modules": [{"time": mo.clock, "module": mo.module, "became": mo.kind, "by": mo.task or None}
                                        for mo in report.module_moments(m)],
                            "status": model.status(),
                            "files": written, "findings": expect.findings(record), "fail_on": list(fail_on),
                            "failing": failing, "command": _command_line(args, spec)}
            if shrunk:
                out["shrunk_from"] = shrunk[0].to_json()
                out["shrink_runs"] = shrunk[2]
            _emit_json(out)
        else:
            what = "shrunk " if shrunk else "replay of " if args.command == "replay" else ""
            _print_result(res, m, model, title=what + Path(args.scenario).name)
            if shrunk:
                orig = shrunk[0]
                ntasks = sum(t.count for t in runner.scn.tasks)
                print(f"\nshrunk in {_count(shrunk[2], 'run')}: first action at {spec.start} (was {orig.start}), "
                      f"{_count(len(spec.tasks) if spec.tasks is not None else ntasks, 'task')} (was "
                      f"{len(orig.tasks) if orig.tasks is not None else ntasks}), schedule {spec.schedule} "
                      f"(was {orig.schedule}), {_count(res.preemptions, 'preemption')}")
            print(f"\nreproduce: {_command_line(args, spec)}")
            for kind, path in written.items():
                print(f"{kind}: {path}")
            print(f"findings: {', '.join(expect.findings(record)) or 'none'}"
                  f" (--fail-on {','.join(fail_on) or 'none'}: {'fail' if failing else 'pass'})")
    finally:
        m.engine.close()
        runner.close()
    return EXIT_FINDINGS if failing else EXIT_OK


def _count(n: int, noun: str) -> str:
    """'1 task', '3 tasks'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fuzz(args) -> int:
    from emu.runs import campaign, coverage
    fail_on = _fail_on(args)
    kernels = list(dict.fromkeys(args.kernel or ()))
    for k in kernels:
        _check_kernel(k)
    # one --kernel: the scenario's kernel replaced; more: compared, every run on each
    prog = _load(args.scenario, kernels[0] if len(kernels) == 1 else None)
    if len(kernels) < 2:
        kernels = []
    fz = prog.scenario.fuzz
    models = list(dict.fromkeys(args.model or fz.models))
    strategy = args.strategy or fz.strategy
    runs = args.runs or (UNTIL_COVERED_RUNS if args.until_covered else fz.runs)
    seed = fz.seed if args.seed is None else args.seed
    if seed + runs - 1 > SEED_MAX:
        raise UserError(f"{'--seed' if args.seed is not None else f'{prog.scenario.path}: [fuzz] seed'} {seed} "
                        f"with {runs} runs: the last seed would be {seed + runs - 1}, past {SEED_MAX} "
                        f"(2**63 - 1); start lower or run fewer")
    if runs * len(models) * max(1, len(kernels)) > MAX_RUNS:
        raise UserError(f"--runs {runs} under {len(models)} models{f' on {len(kernels)} kernels' if kernels else ''}: "
                        f"a campaign has at most {MAX_RUNS:_} runs (split it with --seed)")
    jobs = args.jobs or campaign.default_jobs()
    if jobs > campaign.default_jobs():
        print(f"lpemu: warning: --jobs {jobs} is more than the {campaign.default_jobs()} cores this process "
              f"may use: {campaign.default_jobs()} workers", file=sys.stderr)
        jobs = campaign.default_jobs()
    if args.resume and args.force:
        raise UserError("--resume and --force exclude each other")
    if (args.resume or args.force) and not args.out:
        raise UserError("--resume and --force need --out DIR")
    if args.junit and args.out and Path(args.junit).absolute() == Path(args.out).absolute():
        raise UserError(f"--junit {args.junit}: is the --out directory; name a file (in it, or elsewhere)")
    if args.junit and args.out and campaign.own_file(args.out, args.junit):
        raise UserError(f"--junit {args.junit}: is the campaign's own {campaign.own_file(args.out, args.junit)} "
                        f"in --out {args.out}; name another file")
    if args.junit:
        from emu.app import junit
        _output("--junit", args.junit, True, args.json, made=args.out)     # a writable directory, or --out
        junit.check_replaceable(args.junit)
    client = None
    if args.scheduler is not None:     # before anything is written: no Dask or no scheduler is a UserError
        from emu.runs import distributed
        client = distributed.connect(args.scheduler)
    # --until-covered: rounds of runs until every model met every state, at most `runs`
    step = min(runs, max(UNTIL_COVERED_STEP, 4 * jobs)) if args.until_covered else runs
    seeds = range(seed, seed + step)             # --until-covered extends its list round by round
    plan = campaign.Plan(str(Path(args.scenario).resolve()), list(models),
                         list(seeds) if args.until_covered else seeds, strategy, kernels)
    try:
        camp = campaign.Campaign(prog, plan, jobs=jobs,
                                 out=Path(args.out) if args.out else None, resume=args.resume, force=args.force)
    except BaseException:
        if client is not None:
            client.close()
        raise
    for note in camp.notes:
        print(f"lpemu: {note}", file=sys.stderr)
    todo = camp.todo()
    groups = plan.groups()
    totals = {_label(k, mo): sum(1 for run in todo if run[0] == mo and run[2:3] == ((k,) if k else ()))
              for k, mo in groups}
    if args.until_covered:
        totals = {label: runs - (step - n) for label, n in totals.items()}
    interrupted = None          # the KeyboardInterrupt that stopped the campaign
    seen = len(camp.records)
    started = time.monotonic()

    def advance(bar, n):
        """The records added since the last call are the newest ones (a
        dict keeps insertion order): read them from the end."""
        nonlocal seen
        new, seen = len(camp.records) - seen, len(camp.records)
        for r in itertools.islice(reversed(camp.records.values()), new):
            bar.advance(_label(r.get("kernel"), r["model"]), 1, 1 if expect.failing(r, fail_on) else 0)

    try:
        with _progress("fuzzing", totals, args) as bar:
            while True:
                camp.run(progress=lambda n: advance(bar, n), client=client)
                if not args.until_covered or len(plan.seeds) >= runs:
                    break
                if all(m["coverage"]["complete"] for m in camp.summary()["models"]):
                    break
                more = min(step, runs - len(plan.seeds))
                plan.seeds.extend(range(plan.seeds[-1] + 1, plan.seeds[-1] + 1 + more))
    except KeyboardInterrupt as exc:
        interrupted = exc
    finally:
        if client is not None:
            client.close()
    seconds = time.monotonic() - started
    try:
        summary = camp.summary()
    finally:
        camp.close()
    keys = set(plan.runs())
    by_model = {_label(k, mo): [r for key, r in camp.records.items() if key in keys and key[0] == mo
                                and key[2:3] == ((k,) if k else ())] for k, mo in groups}
    # an interrupted campaign judges a model by what its runs so far settle (expect.judge)
    planned = {(k, mo): sum(1 for key in keys if key[0] == mo and key[2:3] == ((k,) if k else ()))
               for k, mo in groups} if interrupted is not None else {}
    verdicts = [expect.judge(_label(k, mo), prog.scenario.expected(mo, k), fail_on, by_model[_label(k, mo)],
                             planned.get((k, mo))) for k, mo in groups]
    summary["interrupted"] = interrupted is not None
    summary["fail_on"] = list(fail_on)
    summary["verdicts"] = [v.to_json() | ({"model": mo, "kernel": k} if k else {})
                           for v, (k, mo) in zip(verdicts, groups)]
    summary["ok"] = all(v.ok for v in verdicts)
    if args.out:
        summary["out"] = str(args.out)
    replay = {v.model: _replay_command(args, mo, v.seed, strategy, k)
              for v, (k, mo) in zip(verdicts, groups) if v.seed is not None}
    if args.junit:
        _write_junit(args.junit, prog, verdicts, by_model, replay, seconds)
        summary["junit"] = str(args.junit)
    last = plan.seeds[-1]
    for warning in summary.get("warnings", ()):
        print(f"lpemu: warning: {warning}", file=sys.stderr)
    if args.json:
        _emit_json(summary)
    else:
        _print_summary(summary, title=f"{Path(args.scenario).name}: {strategy}, seeds {seed}..{last}")
        _print_coverage(summary, coverage)
        if interrupted:
            print(f"interrupted: {len(camp.records)} runs kept" +
                  (f"; continue with --resume --out {args.out}" if args.out else ""))
        print()
        for s in summary["models"]:
            if s.get("emulator_errors"):
                print(f"{_label(s.get('kernel'), s['model'])}: emulator error in {s['emulator_errors']} runs (the "
                      f"model broke its own promise; those runs say nothing about the patch): "
                      f"{s['first_emulator_error']}")
        for v in verdicts:
            mark = "ok  " if v.ok else "----" if v.interrupted else "FAIL"      # ----: not run, or not settled
            print(f"{mark} {v.why}")
            if v.model in replay:
                print(f"     replay: {replay[v.model]}")
        for s in summary["models"]:
            if s.get("first_fault_seed") is not None:
                print(f"{_label(s.get('kernel'), s['model'])}: first faulting seed {s['first_fault_seed']}: "
                      f"{_replay_command(args, s['model'], s['first_fault_seed'], strategy, s.get('kernel'))}\n  "
                      + str(s["first_fault"]).replace("\n", "\n  "))
        if args.junit:
            print(f"junit: {args.junit}")
    if interrupted is not None:
        return interrupt.status(interrupted)
    return EXIT_OK if summary["ok"] else EXIT_FINDINGS


def _replay_command(args, model: str, seed: int, strategy: str, kernel: str | None = None) -> str:
    kernel = kernel or (args.kernel[0] if getattr(args, "kernel", None) else None)
    return (f"lpemu replay {shlex.quote(args.scenario)} --model {model} --seed {seed} --strategy {strategy}"
            f"{f' --kernel {kernel}' if kernel else ''} --shrink")


def _label(kernel: str | None, model: str) -> str:
    """How a campaign names a model's runs: 'livepatch', or 'livepatch on 6.8'
    when kernels are compared."""
    return f"{model} on {kernel}" if kernel else model


def _check_kernel(kernel: str) -> None:
    from emu.kernel import versions
    try:
        versions.kernel(kernel)
    except ValueError as exc:
        raise UserError(f"--kernel: {exc}") from None


def _write_junit(path, prog, verdicts, by_model: dict, replay, seconds: float) -> None:
    """One test case per model of the campaign (emu/app/junit.py); a case's
    time is its share of the campaign's by runs."""
    from emu.app import junit
    name = prog.scenario.name
    total = max(1, sum(len(recs) for recs in by_model.values()))
    cases = []
    for v in verdicts:
        recs = by_model[v.model]
        details = []
        if v.seed is not None:
            first = next(r for r in recs if r["seed"] == v.seed)
            details += [f"first failing seed: {v.seed}", f"summary: {expect.summary_line(first)}",
                        *(f"  {_describe_inconsistency(b)}" for b in first.get("inconsistencies", [])[:3]),
                        *(f"  assertion failed: {x['assert']!r} on observe({x['key']}, {x['value']}) by task "
                          f"{x['task']} at t={x['time']}" for x in first.get("violations", [])[:3]),
                        f"replay: {replay[v.model]}"]
        cases.append(junit.Case(name, v.model, v.ok, v.why, details, seconds * len(recs) / total,
                                "surprise" if v.expected else "finding", skipped=v.interrupted))
    junit.write(path, {name: cases})


def _describe_inconsistency(bad: dict) -> str:
    runs = ", ".join(f"{e['function']} v{e['version']} at {e['clock']}" for e in bad["entries"])
    return f"inconsistent: task {bad['task']}, {bad['unit']} (t={bad['start']}..{bad['end']}): {runs}"


SUMMARY_COLUMNS = (("model", "model"), ("runs", "runs"), ("inconsistent", "inconsistent"),
                   ("bad_values", "bad values"), ("completed", "completed"), ("failed", "failed"),
                   ("stalled", "stalled"), ("faults", "faults"), ("latency_median", "latency median"),
                   ("latency_max", "latency max"), ("pause_median", "pause median"), ("pause_max", "pause max"),
                   ("first_failing_seed", "first failing seed"))


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
        print(f"{_label(s.get('kernel'), s['model'])}: {coverage.line(cov)}")
        missed = [(t["task"], m) for t in cov["tasks"] for m in t["missed"]]
        for task, m in missed[:MISSED_SHOWN]:
            notes = ([f"patched open: {', '.join(m['open'])}"] if m["open"] else []) + \
                (["seen only passing cond_resched"] if m.get("cond_resched") else [])
            said = " (" + "; ".join(notes) + ")" if notes else ""
            print(f"  never met: {task}: {m['state']}{said}")
        if len(missed) > MISSED_SHOWN:
            print(f"  ... {len(missed) - MISSED_SHOWN} more never met (--json lists them)")


def _first_failure(args) -> int:
    from emu.runs import first_failure
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
    def f(v):
        return "-" if v is None else str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    rows = []
    columns = ((("kernel", "kernel"),) if summary.get("kernels") else ()) + SUMMARY_COLUMNS
    for s in summary["models"]:
        s = s | {"faults": s["fault"] + s["error"] + s["crash"]}
        rows.append([f(s.get(key)) for key, _ in columns])
    print(title)
    print(_table([head for _, head in columns], rows))
    from emu.runs.campaign import MEDIAN_RULE
    print("times in virtual instructions (1 s = 100 ticks)\n"
          f"latency: from the request to completion; pause: every CPU stopped\n{MEDIAN_RULE}")


def _demo(args) -> int:
    from emu.app import demo
    from emu.app.tables import width_of
    if args.runs < 1:
        raise UserError("--runs must be at least 1")
    totals = {f"{m}/{v}": args.runs for v in demo.VARIANTS for m in demo.DEMO_MODELS}
    with _progress("demo", totals, args) as bar:
        results = demo.run_demo(runs=args.runs,
                                progress=lambda model, variant, bad: bar.advance(f"{model}/{variant}", 1, bad))
    surprises = [s for s in results if s.surprise]
    if args.json:
        _emit_json({"results": [s.to_json() for s in results], "ok": not surprises})
        return EXIT_FINDINGS if surprises else EXIT_OK
    print("Is the seed patch safe? foo() { f = bar(); something_else(); baz(f); },\n"
          "the patch changes what bar() returns and patches baz() to match.\n"
          f"{args.runs} transition start points per row, each run checked by the oracle.\n")
    print(demo.table(results, width=width_of(sys.stdout)))
    for s in results:
        if s.example:
            print(f"\n{s.model} / {s.variant}, first inconsistent run (seed {s.first_failing_seed}):\n  {s.example}")
    print()
    for s in results:
        if s.surprise:
            print(f"FAIL {s.variant}: {s.surprise}")
    if not surprises:
        print("every model answered the seed question as expected")
    return EXIT_FINDINGS if surprises else EXIT_OK


def _bench(args) -> int:
    from emu.app import bench
    if args.plot:                      # before the bench, which takes minutes
        _output("--plot", args.plot, args.force, args.json)
        from emu.app import report
        _replaceable("--plot", args.plot, report.is_drawn, DRAWN)
        if Path(args.plot).suffix.lower() not in bench.PLOT_SUFFIXES:
            raise UserError(f"--plot {args.plot}: the plot is written as {' or '.join(bench.PLOT_SUFFIXES)}")
    result = bench.run_bench(quick=args.quick)
    if args.json:
        _emit_json(result)
    else:
        from emu.app.tables import width_of
        print(bench.format_bench(result, width=width_of(sys.stdout)))
    if args.plot:
        try:
            bench.write_scaling_plot(result, args.plot, replace=args.force)
        except FileExistsError:
            raise UserError(f"--plot {args.plot}: already exists (it was made while the bench ran); "
                            f"remove it or pass --force to overwrite it") from None
        except OSError as exc:
            raise UserError(f"--plot {args.plot}: cannot write it ({exc.strerror or exc})") from None
    return 0


def _diff(args) -> int:
    from emu.images import diff
    d = diff.diff_files(args.old, args.new, cflags=args.cflags.split() if args.cflags else ())
    if args.json:
        for warning in d.warnings:      # stdout stays the JSON document
            print(f"warning: {warning}", file=sys.stderr)
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
EPILOGS = {
    "demo": "example:\n  lpemu demo --runs 48",
    "run": "examples:\n  lpemu run examples/seed/scenario.toml --model livepatch --seed 4\n"
           "  lpemu run examples/seed/scenario.toml --model livepatch --seed 4 --trace /tmp/seed.json "
           "--timeline /tmp/seed.png",
    "replay": "example:\n  lpemu replay examples/seed/scenario.toml --model stop_machine --seed 0 --shrink",
    "fuzz": "examples:\n  lpemu fuzz examples/seed/scenario.toml --runs 200 --out /tmp/seed-runs\n"
            "  lpemu fuzz examples/seed/scenario.toml --model livepatch --junit /tmp/lpemu.xml\n"
            "  lpemu fuzz examples/kernel-versions/scenario.toml --kernel 4.18 --kernel 6.8 --kernel 6.19",
    "first-failure": "example:\n  lpemu first-failure examples/rare/scenario.toml --limit 100",
    "bench": "example:\n  lpemu bench --quick --plot /tmp/scaling.png",
    "diff": "example:\n  lpemu diff tests/diff/inline/old.c tests/diff/inline/new.c",
}
INTERRUPTED_HELP = "128 + the signal when interrupted (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)"
EXIT_HELP = ("exit status: 0 no finding, 1 findings (see --fail-on and [expect]), 2 usage or input error, "
             + INTERRUPTED_HELP)
# demo has no --fail-on or [expect]: the seed question's expected answers judge it
EXIT_HELP_DEMO = ("exit status: 0 every model answered the seed question as expected, 1 findings (a model "
                  "answered it otherwise), 2 usage or input error, " + INTERRUPTED_HELP)
# the commands that judge nothing (diff, bench, first-failure: its table is the answer)
EXIT_HELP_PLAIN = "exit status: 0 done, 2 usage or input error, " + INTERRUPTED_HELP
FAIL_ON_HELP = (f"comma-separated finding kinds that fail the command: {', '.join(expect.FINDINGS)}, "
                f"or all, or none (default: {','.join(expect.DEFAULT_FAIL_ON)})")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="lpemu", formatter_class=fmt, epilog=EXIT_HELP,
                                description="live-patching laboratory: real x86-64 code in "
                                "Unicorn under every kernel live-patching consistency model")
    p.add_argument("--version", action="version", version=f"lpemu {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, help_, exits=EXIT_HELP):
        return sub.add_parser(name, help=help_, description=help_, epilog=f"{EPILOGS[name]}\n\n{exits}",
                              formatter_class=fmt)

    def json_flag(sp):
        sp.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")

    def quiet_flag(sp):
        sp.add_argument("--quiet", action="store_true", help="no progress on stderr")

    d = command("demo", "run the seed scenario under immediate, stop_machine, kgraft and livepatch and print "
                "the comparison", EXIT_HELP_DEMO)
    d.add_argument("--runs", type=int_in(1, 100_000), default=24, help="transition start points per model and variant "
                   "(default: 24)")
    json_flag(d)
    quiet_flag(d)
    d.set_defaults(func=_demo)

    def one_run(sp):
        sp.add_argument("scenario", type=_path, help="scenario file (TOML)")
        sp.add_argument("--model", required=True, choices=MODEL_NAMES, help="consistency model")
        sp.add_argument("--seed", type=int_in(0, SEED_MAX), default=0, help="run seed: picks the start point and schedule "
                        "(default: 0)")
        sp.add_argument("--strategy", choices=STRATEGIES, help="how the seed picks the run (default: [fuzz] "
                        "strategy)")
        sp.add_argument("--at", type=int_in(0, MAX_TIME), help="virtual time of the first action (overrides the seed's)")
        sp.add_argument("--schedule", choices=("rr", "random", "pct"), help="scheduling policy (overrides "
                        "the seed's)")
        sp.add_argument("--sched-seed", type=int_in(0, 2**32 - 1), help="seed of a random or pct schedule, "
                        "--schedule's or the seed's (default: the seed's)")
        sp.add_argument("--preempt", choices=("none", "voluntary", "full"), help="preemption mode "
                        "(default: [machine] preempt)")
        sp.add_argument("--tasks", help="comma-separated task names that take part (default: all)")
        sp.add_argument("--kernel", metavar="VERSION", help="the kernel whose livepatch semantics apply, "
                        "4.18 to 6.19 (default: [machine] kernel, else the newest)")
        sp.add_argument("--trace", metavar="FILE", type=_path, help="write a Perfetto/Chrome trace (JSON) of the run")
        sp.add_argument("--timeline", metavar="FILE", type=_path,
                        help="write a timeline picture (.png or .svg) of the run")
        sp.add_argument("--window", metavar="START:END", help="the timeline's span of virtual time, in "
                        "instructions (default: around the first finding; 'all' for the whole run)")
        sp.add_argument("--force", action="store_true", help="replace --trace/--timeline files of an earlier run (never a file lpemu "
                        "did not write)")
        sp.add_argument("--fail-on", metavar="KINDS", help=FAIL_ON_HELP)
        json_flag(sp)

    r = command("run", "one deterministic run")
    one_run(r)
    r.set_defaults(func=_run, shrink=False)

    rp = command("replay", "re-run one run of a campaign exactly; --shrink minimizes it")
    one_run(rp)
    rp.add_argument("--shrink", action="store_true", help="find the smallest failing variant")
    rp.add_argument("--budget", type=int_in(1, 100_000), default=200, help="runs the shrinker may spend (default: 200)")
    quiet_flag(rp)
    rp.set_defaults(func=_run)

    f = command("fuzz", "a transition-timing campaign; [expect] or --fail-on decides the exit status")
    f.add_argument("scenario", type=_path, help="scenario file (TOML)")
    f.add_argument("--model", action="append", choices=MODEL_NAMES, help="model (repeatable; default: [fuzz] models)")
    f.add_argument("--runs", type=int_in(1, MAX_RUNS), help="runs per model (default: [fuzz] runs)")
    f.add_argument("--jobs", type=int_in(1, MAX_JOBS), help="worker processes (default: every core)")
    f.add_argument("--strategy", choices=STRATEGIES, help="how seeds pick runs (default: [fuzz] strategy)")
    f.add_argument("--seed", type=int_in(0, SEED_MAX), help="first seed (default: [fuzz] seed)")
    f.add_argument("--out", metavar="DIR", type=_path, help="directory for runs.jsonl, summary.json, campaign.json "
                   "(default: nothing written)")
    f.add_argument("--resume", action="store_true", help="continue the campaign in --out")
    f.add_argument("--force", action="store_true", help="replace a campaign's results in --out (never a file it did not write)")
    f.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask cluster of this scheduler (tcp://HOST:PORT) instead of local processes")
    f.add_argument("--fail-on", metavar="KINDS", help=FAIL_ON_HELP + "; a model with an [expect] entry is "
                   "judged by it instead")
    f.add_argument("--junit", metavar="FILE", type=_path, help="write JUnit XML: one test case per model (a report "
                   "lpemu wrote there is replaced; any other file is refused)")
    f.add_argument("--kernel", metavar="VERSION", action="append",
                   help="the kernel whose livepatch semantics apply, 4.18 to 6.19 (default: [machine] kernel, "
                        "else the newest); repeat it to compare kernels: every run on each, the summary per "
                        "kernel and model")
    f.add_argument("--until-covered", action="store_true",
                   help="run until every state of every task was met at a transition start "
                        f"(at most --runs runs per model, default {UNTIL_COVERED_RUNS})")
    json_flag(f)
    quiet_flag(f)
    f.set_defaults(func=_fuzz)

    ff = command("first-failure", "runs to the first failure under each strategy (a table)", EXIT_HELP_PLAIN)
    ff.add_argument("scenario", nargs="+", type=_path, help="scenario files (TOML)")
    ff.add_argument("--model", action="append", choices=MODEL_NAMES, help="model (repeatable; default: [fuzz] models)")
    ff.add_argument("--strategy", action="append", choices=STRATEGIES,
                    help="strategy (repeatable; default: directed, exhaustive, random)")
    ff.add_argument("--limit", type=int_in(1, MAX_RUNS), default=200, help="runs tried per model and strategy (default: 200)")
    json_flag(ff)
    ff.set_defaults(func=_first_failure)

    b = command("bench", "what a patch switch costs, and what the emulator costs", EXIT_HELP_PLAIN)
    b.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    b.add_argument("--plot", metavar="FILE", type=_path, help="write the scaling plot (.png or .svg)")
    b.add_argument("--force", action="store_true", help="replace a --plot picture of an earlier bench (never a file lpemu did "
                   "not draw)")
    json_flag(b)
    b.set_defaults(func=_bench)

    df = command("diff", "the functions a patch must carry (OLD.c -> NEW.c, or ORIG.o -> PATCHED.o "
                 "as kpatch-build and klp-build compare them)", EXIT_HELP_PLAIN)
    df.add_argument("old", type=_path, help="the original source or object file")
    df.add_argument("new", type=_path, help="the patched source or object file")
    df.add_argument("--cflags", help="extra compiler flags (one string, split at spaces)")
    json_flag(df)
    df.set_defaults(func=_diff)
    return p


class _Stdout:
    """sys.stdout while a command runs. A reader that leaves before the end
    (`lpemu fuzz ... | head`) ends the output, not the verdict: the rest of
    what the command prints is dropped (fd 1 goes to /dev/null, so nothing
    flushed later fails either) and it exits with its own status, 1 for a
    finding. Left to Python, the broken pipe ended `fuzz` with 0 and rich
    ended `run` with 1, whatever the runs found. Output that cannot be
    written otherwise (a full disk, a descriptor closed or opened read-only)
    is a UserError saying so: the command's product is lost, exit 2."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        if self._stream is None:             # started with fd 1 closed (`>&-`)
            raise UserError("cannot write the output: standard output is closed")
        try:
            return _write_encodable(self._stream, text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)
        except OSError as exc:
            self._unwritable(exc)

    def flush(self):
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()
        except OSError as exc:
            self._unwritable(exc)

    def _unwritable(self, exc: OSError):
        self._reader_gone()                  # what is still buffered goes nowhere, not to a traceback at exit
        raise UserError(f"cannot write the output to standard output ({exc.strerror or exc})") from None

    def _reader_gone(self) -> None:
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _write_encodable(stream, text: str) -> int:
    """stream.write(text); what the stream's encoding cannot take (a file name
    that is not UTF-8 holds lone surrogates, which a UTF-8 locale's strict
    stdout refuses) is written as \\udcff rather than failing the command."""
    try:
        return stream.write(text)
    except UnicodeEncodeError:
        enc = getattr(stream, "encoding", None) or "utf-8"
        return stream.write(text.encode(enc, "backslashreplace").decode(enc))


class _Stderr:
    """sys.stderr while a command runs: messages and progress that cannot be
    written (stderr closed, full, or a reader gone) are dropped; the exit
    status still says what happened. Left to Python, the failed write of the
    error message itself ended a bad input with 1 instead of 2."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return _write_encodable(self._stream, text)
        except (OSError, AttributeError, ValueError):     # AttributeError: stderr is None (closed)
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except (OSError, AttributeError, ValueError):
            pass

    def isatty(self):
        try:
            return self._stream.isatty()
        except (OSError, AttributeError, ValueError):
            return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (module docstring)."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Stdout(out), _Stderr(err)
    old_handlers = interrupt.install()
    try:
        code = _main(argv)
        try:
            sys.stdout.flush()               # a failure to write the output shows here, not at exit
        except UserError as exc:
            print(f"lpemu: error: {exc}", file=sys.stderr)
            code = EXIT_USAGE
        return code
    finally:
        sys.stdout, sys.stderr = out, err
        interrupt.restore(old_handlers)


def _shown(message: str) -> str:
    """message with what would not show as itself escaped (\\x1b, \\u202e): a
    name quoted from the user's file, or a file name, may hold an escape
    sequence or a bidi override that would rewrite the line on a terminal.
    Line breaks stay (a compiler's output is quoted on lines of its own)."""
    from emu.runs.scenario import invisible
    if invisible(message.replace("\n", "").replace("\t", "")) is None:
        return message
    return "".join(c if c in "\n\t" or invisible(c) is None else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in message)


def _main(argv) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:          # a usage error (argparse printed it: status 2) or --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except UserError as exc:           # --help or --version on a stdout that cannot be written
        print(f"lpemu: error: {_shown(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    try:
        return args.func(args)
    except UserError as exc:
        print(f"lpemu: error: {_shown(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except GuestFault as exc:
        print(f"lpemu: {_shown(str(exc))}", file=sys.stderr)
        return EXIT_FINDINGS
    except KeyboardInterrupt as exc:
        print("lpemu: interrupted", file=sys.stderr)
        return interrupt.status(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
