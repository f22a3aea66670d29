"""Fuzz campaigns: many runs over worker processes, streamed to JSONL.

A campaign is the list of (model, seed) runs of a scenario, on each kernel
compared when `--kernel` is given more than once (Plan). Workers each
receive the compiled program once (not once per run) and run batches of
seeds; every finished run is appended to DIR/runs.jsonl and flushed at
once, so an interrupted campaign keeps every finished run, and `--resume`
runs exactly the ones missing. A worker that dies (killed, out of memory)
takes its batch with it: the batch is re-run one seed at a time in a fresh
pool, and a seed that kills its worker again is recorded as a `crash`.

The summary is computed from the records sorted by (kernel, model, seed), so it is
the same whatever the number of workers or interruptions.

A campaign directory belongs to one campaign at a time and to one program:
- a lock (fcntl, on DIR/lock, holding the owner's pid) keeps a second
  `lpemu fuzz` out of a directory in use;
- campaign.json holds the plan and a fingerprint of everything that decides
  a run (the scenario text, every source file, the flags, the compiler and
  linker versions, the tool's version); `--resume` of a different program is
  refused, naming what changed;
- `--resume` reads runs.jsonl line by line: a torn last line (an interrupted
  write) and unreadable lines (not UTF-8, not JSON, nested beyond reason, not
  a record, a record whose fields have the wrong types: _RECORD_FIELDS, a
  record of another strategy, which would stand for this one's run) are
  moved to DIR/rejected.txt, whose header says what they are,
  and their runs are run again; Campaign.notes says what was repaired;
- a record is counted only once written whole: a failed write (a full disk)
  is cut back to the last whole line and stops the campaign with one message;
- workers die with their parent (PR_SET_PDEATHSIG, and a check of the parent
  pid when they start), even when the parent is killed with SIGKILL.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import hashlib
import json
import multiprocessing
import os
import signal
import stat
import statistics
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emu.errors import EmuError, UserError, check_int, check_type
from emu.runs.expect import FINDINGS, findings
from emu.runs import coverage, interrupt, output
from emu.runs.fuzz import Runner
from emu.kernel import versions
from emu.models import MODEL_NAMES
from emu.runs.scenario import MAX_RUNS, SEED_MAX, STRATEGIES, Program

RUNS_FILE = "runs.jsonl"
META_FILE = "campaign.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = "lock"
REJECTED_FILE = "rejected.txt"
#: What a campaign writes in its directory besides the lock: --force
#: replaces these, and only when a campaign wrote them (_check_own_files).
OWN_FILES = (RUNS_FILE, SUMMARY_FILE, REJECTED_FILE, META_FILE)
#: The first words of rejected.txt's header (Campaign._repair), by which it is known as the campaign's
REJECTED_HEADER = f"lines of {RUNS_FILE} that lpemu fuzz --resume could not read"
MAX_LINE = 1 << 20         # bytes of one record; a longer line is damage, not a record
MAX_NESTING = 64           # JSON nesting of a record (records are a few levels deep)
MAX_META = 16 << 20        # bytes of campaign.json (a plan and a fingerprint: kilobytes)
PR_SET_PDEATHSIG = 1       # prctl(2)


@dataclass
class Plan:
    """The runs of a campaign: every model and seed, and, when kernels are
    compared (`lpemu fuzz --kernel A --kernel B`), on every kernel. A run is
    (model, seed), or (model, seed, kernel) when kernels are compared; the
    records are keyed the same way (run_key)."""
    scenario: str
    models: list[str]
    seeds: Sequence[int]         # a range or a list
    strategy: str
    kernels: list[str] = field(default_factory=list)    # empty: the scenario's [machine] kernel

    def __post_init__(self):
        """TypeError or ValueError naming the field that no campaign can run."""
        check_type(self.scenario, str, "Plan.scenario")
        for key in ("models", "kernels"):
            value = getattr(self, key)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise TypeError(f"Plan.{key} must be a list of names, not {type(value).__name__}")
        if not self.models:
            raise ValueError("Plan.models names no model")
        for name in self.models:
            if name not in MODEL_NAMES:
                raise ValueError(f"Plan.models: {name!r} is not a model (one of {', '.join(MODEL_NAMES)})")
        for name in self.kernels:
            versions.kernel(name)           # ValueError naming the version
        if not isinstance(self.seeds, (range, list, tuple)):
            raise TypeError(f"Plan.seeds must be a range or a list of ints, not {type(self.seeds).__name__}")
        if not self.seeds:
            raise ValueError("Plan.seeds holds no seed")
        if len(self.seeds) * len(self.models) * max(1, len(self.kernels)) > MAX_RUNS:
            raise ValueError(f"Plan: {len(self.seeds)} seeds x {len(self.models)} models"
                             f"{f' x {len(self.kernels)} kernels' if self.kernels else ''} is more than "
                             f"the {MAX_RUNS:_} runs a campaign may have")
        seeds = (self.seeds[0], self.seeds[-1]) if isinstance(self.seeds, range) else self.seeds
        for s in seeds:
            check_int(s, "Plan.seeds: a seed", 0, SEED_MAX)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Plan.strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")

    def runs(self) -> list[tuple]:
        if self.kernels:
            return [(m, s, k) for k in self.kernels for m in self.models for s in self.seeds]
        return [(m, s) for m in self.models for s in self.seeds]

    def groups(self) -> list[tuple[str | None, str]]:
        """(kernel, model) of each row of the summary (kernel None: the scenario's)."""
        return [(k, m) for k in (self.kernels or [None]) for m in self.models]

    def to_json(self) -> dict:
        out = {"scenario": self.scenario, "models": self.models, "seeds": [self.seeds[0], len(self.seeds)],
               "strategy": self.strategy}
        if self.kernels:
            out["kernels"] = list(self.kernels)
        return out


def run_key(model: str, seed: int, kernel: str | None = None) -> tuple:
    """The key of a run and of its record: (model, seed), with the kernel
    when kernels are compared."""
    return (model, seed) if kernel is None else (model, seed, kernel)


def record_key(rec: dict) -> tuple:
    return run_key(rec["model"], rec["seed"], rec.get("kernel"))


# ---- workers ----------------------------------------------------------------------------------
def batch_size(todo: int, workers: int, batch: int | None = None) -> int:
    """Runs per batch, for the local pool and a Dask cluster alike: the one
    asked for, or about eight batches per worker of at most 64 runs."""
    return batch or max(1, min(64, todo // (workers * 8) or 1))


#: How workers start, said once rather than left to the Python version's
#: default (fork up to 3.13, forkserver from 3.14): forked from the campaign
#: process, which _init_worker needs (a worker dies with its parent: prctl
#: and the parent's pid). The program and what the parent's runner learned
#: go to each worker once, as the initializer's arguments.
POOL_CONTEXT = multiprocessing.get_context("fork")

#: What stops a campaign (Campaign.run): held back while the pool forks
#: its workers and while it shuts down (_stop_signals_held).
_STOP_SIGNALS = interrupt.STOP_SIGNALS


@contextlib.contextmanager
def _stop_signals_held():
    """Hold the stop signals (Ctrl-C, SIGTERM, SIGHUP) back for a step of the pool that must not be
    cut: the submit that forks the workers and the shutdown. The terminal
    sends Ctrl-C to every process of the group, the workers being forked
    too; landing in a fork it was raised in the fork handlers of the parent
    and of the new worker (before its initializer ignores it), where it was
    lost (the campaign ran on to its end) or left a worker on a queue lock,
    and a second one cut the shutdown short: either way the parent joined
    a worker forever at exit. Held, it is raised in the parent once the
    step is done; a worker ignores it before unblocking it (_init_worker)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _PoolWorker:
    """The runner of a local pool's worker process, made by _init_worker in
    that process and kept for every batch it runs: building a runner's
    machines and running them to the first action again for each batch
    cost about half of a 64-run batch (measured on the seed scenario), which
    kept two workers from doubling the rate of one. The campaign's own
    process never makes one."""
    runner: Runner | None = None


def _init_worker(parent: int, program: Program | None = None, known: dict | None = None) -> None:
    """In each pool worker: die with the parent, leave Ctrl-C to it, and
    (given the program) make the runner its batches use."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):      # not Linux: the parent-pid check below still holds
        pass
    if os.getppid() != parent:             # the parent died before prctl took effect
        os._exit(1)
    # the parent decides when to stop: the terminal sends Ctrl-C and its
    # hangup to every process of the group
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)   # blocked across the fork (_pool)
    if program is not None:
        _PoolWorker.runner = Runner(program, **(known or {}))


def run_pool_batch(strategy: str, batch: list[tuple]) -> list[dict]:
    """The records of one batch of runs (Plan.runs), in a local pool's
    worker, by its runner."""
    runner = _PoolWorker.runner
    if runner is None:
        raise RuntimeError("run_pool_batch: not in a campaign's pool worker")
    return [run_record(runner, strategy, *run) for run in batch]


def run_batch(program: Program, known: dict, strategy: str, batch: list[tuple]) -> list[dict]:
    """The records of one batch of runs ((model, seed) or (model, seed,
    kernel), Plan.runs), in a worker of a Dask cluster: the program and what
    the parent's runner learned (Runner.known: the cycle, the probe) travel
    with the batch (tens of runs), not with each run."""
    with Runner(program, **known) as runner:
        return [run_record(runner, strategy, *run) for run in batch]


def run_record(runner: Runner, strategy: str, model: str, seed: int, kernel: str | None = None) -> dict:
    """The record of one run (on kernel: None is the scenario's). A run that
    ends badly is a record, never the end of the campaign: a run that cannot
    be set up or hits a bound (an EmuError) and an unexpected failure alike
    are `error` records that say why."""
    spec = runner.plan(model, seed, strategy=strategy, kernel=kernel)
    try:
        return runner.execute(spec).to_json()
    except EmuError as exc:        # a run that cannot be set up (e.g. a patch refused by the model)
        error = str(exc)
    except (MemoryError, RecursionError, RuntimeError, ValueError, OverflowError) as exc:
        error = f"internal error: {type(exc).__name__}: {exc}"
    return {"model": model, **({"kernel": kernel} if kernel is not None else {}), "seed": seed,
            "strategy": strategy, "start": spec.start, "spec": spec.to_json(), "outcome": "error",
            "error": error, "inconsistent": False, "violation_count": 0, "latency": None, "pause": None}


# ---- the campaign -----------------------------------------------------------------------------
class Campaign:
    def __init__(self, program: Program, plan: Plan, *, jobs: int = 1, out: Path | None = None,
                 resume: bool = False, force: bool = False, batch: int | None = None,
                 scheduler: str | None = None):
        check_type(program, Program, "Campaign: program", "emu.build_scenario gives one")
        check_type(plan, Plan, "Campaign: plan")
        check_int(jobs, "Campaign: jobs", 1, 4096)
        if batch is not None:
            check_int(batch, "Campaign: batch", 1, MAX_RUNS)
        if out is not None:
            check_type(out, (str, os.PathLike), "Campaign: out")
        check_type(resume, bool, "Campaign: resume")
        check_type(force, bool, "Campaign: force")
        if scheduler is not None:
            check_type(scheduler, str, "Campaign: scheduler")
        self.program = program
        self.scheduler = scheduler     # a Dask scheduler address: run the batches there (emu.runs.distributed)
        self.plan = plan
        self.jobs = max(1, jobs)
        self.out = Path(out) if out is not None else None
        self.batch = batch
        self.records: dict[tuple, dict] = {}     # run_key -> record
        self.crashes: list[dict] = []
        self.known: dict | None = None     # Runner.known() of this campaign's program
        self.notes: list[str] = []       # what opening the directory repaired, for the user
        self._fd: int | None = None       # runs.jsonl, appended to
        self._lock: int | None = None
        if self.out is not None:
            try:
                self._open(resume, force)
            except BaseException:
                self.close()
                raise

    def _open(self, resume: bool, force: bool) -> None:
        out, meta = self.out, self.plan.to_json()
        try:
            if out.exists() and not out.is_dir():
                raise UserError(f"--out {out}: exists and is not a directory")
            if out.exists():
                _check_own_files(out)       # before anything there is read, locked, replaced or removed
            held = out.exists() and any(p.name != LOCK_FILE for p in out.iterdir())
            if held and not (resume or force):
                if (out / META_FILE).exists():
                    raise UserError(f"--out {out}: the directory holds a campaign; continue it with --resume or "
                                    f"replace its results with --force")
                raise UserError(f"--out {out}: the directory exists and holds no campaign (no {META_FILE}); "
                                f"choose another --out, or write the campaign beside its files with --force")
            # every campaign writes campaign.json before its first run: a
            # directory that holds files but not it is someone else's
            if held and resume and not force and not (out / META_FILE).exists():
                raise UserError(f"--resume {out}: no {META_FILE} there, so no campaign to continue; "
                                f"choose another --out, or replace its results with --force")
            out.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(out / LOCK_FILE)
            meta["fingerprint"] = fingerprint(self.program)
            if resume and (out / META_FILE).exists():
                self._check_same(meta)
            runs = out / RUNS_FILE
            if force and not resume:
                for name in OWN_FILES:          # the campaign's own (_check_own_files), nothing else
                    (out / name).unlink(missing_ok=True)
            elif runs.exists():
                if not runs.is_file():          # a fifo or a device: its reads would block or never end
                    raise UserError(f"--resume {out}: {RUNS_FILE} is not a regular file; start over with --force")
                self.records = self._repair(runs)
            _write_own(out / META_FILE, json.dumps(meta, indent=1) + "\n")
            self._fd = _open_own(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except OSError as exc:
            raise UserError(f"--out {out}: {exc.strerror or exc}"
                            f"{' (' + exc.filename + ')' if isinstance(exc.filename, str) else ''}") from None

    def _check_same(self, meta: dict) -> None:
        """UserError unless campaign.json describes the campaign meta describes."""
        out = self.out
        try:
            # a regular file, read to a bound: a fifo there would block the
            # read, a link to /dev/zero would never end it
            if not (out / META_FILE).is_file():
                raise ValueError("not a regular file")
            with open(out / META_FILE, "rb") as f:
                raw = f.read(MAX_META + 1)
            if len(raw) > MAX_META:
                raise ValueError(f"larger than {MAX_META} bytes")
            old = json.loads(raw.decode("utf-8"))
            if not isinstance(old, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise UserError(f"--resume {out}: {META_FILE} is unreadable ({exc}); start over with --force") from None
        changed = [k for k in ("scenario", "models", "strategy", "kernels") if old.get(k) != meta.get(k)]
        if changed:
            what = ", ".join(f"{k} {_short(old.get(k))!r}, now {_short(meta.get(k))!r}" for k in changed)
            raise UserError(f"--resume {out}: it holds a different campaign ({what}); "
                            f"use another --out, or --force to start over")
        what = fingerprint_changes(old.get("fingerprint"), meta["fingerprint"])
        if what:
            raise UserError(f"--resume {out}: the program changed since the campaign started ({'; '.join(what)}); "
                            f"its records would mix two programs: use another --out, or --force to start over")

    def _repair(self, runs: Path) -> dict:
        """The records of runs.jsonl; damaged lines are moved to REJECTED_FILE
        and the file is rewritten without them (see the module doc)."""
        strategy = self.plan.strategy
        records, bad, torn, dup = read_lines(
            runs, lambda rec: None if rec.get("strategy") == strategy else
            f"a record of strategy {_short(rec.get('strategy'))!r}, not this campaign's {strategy}")
        if not (bad or torn or dup):
            return records
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        if bad or torn:
            # appended to, never followed: a link there (to a file of the
            # user's) is refused, not written through (_open_own)
            with os.fdopen(_open_own(self.out / REJECTED_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as f:
                f.write(f"# {when}: {REJECTED_HEADER} (cut short "
                        f"by an interruption, or damaged); their runs were run again. Raw bytes, one a "
                        f"line, as found:\n".encode())
                for no, raw, why in bad + ([torn] if torn else []):
                    f.write(f"# line {no}: {why}\n".encode() + raw.rstrip(b"\n") + b"\n")
        body = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records.values())
        _write_own(runs, body)
        parts = []
        if torn:
            parts.append(f"a last line cut short (line {torn[0]})")
        if bad:
            parts.append(f"{len(bad)} unreadable line{'s' if len(bad) > 1 else ''} "
                         f"(line {', '.join(str(b[0]) for b in bad[:5])}{', ...' if len(bad) > 5 else ''})")
        if dup:
            parts.append(f"{dup} record{'s' if dup > 1 else ''} written twice (kept once)")
        self.notes.append(f"{runs}: repaired: {' and '.join(parts)}"
                          + (f"; set aside in {self.out / REJECTED_FILE}; their runs are run again"
                             if bad or torn else ""))
        return records

    def todo(self) -> list[tuple]:
        return [r for r in self.plan.runs() if r not in self.records]

    def record(self, rec: dict) -> None:
        """Keep one finished run: appended whole to runs.jsonl (flushed), then
        counted. A write that fails (a full disk) is cut back to the last
        whole line and raises UserError; the record is not counted."""
        if self._fd is not None:
            data = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
            end = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                try:
                    os.ftruncate(self._fd, end)
                except OSError:
                    pass                  # the torn line is set aside by the next --resume
                os.close(self._fd)
                self._fd = None
                raise UserError(f"{self.out / RUNS_FILE}: cannot write ({exc.strerror or exc}); the "
                                f"{len(self.records)} runs written so far are kept: free space, then continue "
                                f"with --resume --out {self.out}") from None
        self.records[record_key(rec)] = rec

    def record_crash(self, model: str, seed: int, kernel: str | None = None) -> None:
        """Record that the run (model, seed[, kernel]) killed its worker, again."""
        on = f" on kernel {kernel}" if kernel is not None else ""
        rec = {"model": model, **({"kernel": kernel} if kernel is not None else {}), "seed": seed,
               "strategy": self.plan.strategy, "outcome": "crash",
               "error": f"the worker running seed {seed} under {model}{on} died (twice)",
               "inconsistent": False, "violation_count": 0, "latency": None, "pause": None}
        self.crashes.append(rec)
        self.record(rec)

    def run(self, progress=None, *, client=None) -> None:
        """Run what is missing. progress(n) is called as runs finish. An
        interrupt (Ctrl-C, SIGTERM, SIGHUP: emu/runs/interrupt.py) stops it
        with every finished run kept.
        With client (a dask.distributed Client) or a scheduler address given
        to the Campaign, the batches run on that Dask cluster."""
        old_handlers = interrupt.install()
        own = None
        runner = Runner(self.program, **(self.known or {}))
        try:
            todo = self.todo()
            known = self.known = runner.known()
            if client is None and self.scheduler is not None:
                from emu.runs import distributed
                client = own = distributed.connect(self.scheduler)
            if client is not None:
                from emu.runs import distributed
                if todo:
                    distributed.run(self, client, todo, known, progress)
            elif self.jobs == 1:
                for run in todo:
                    self.record(run_record(runner, self.plan.strategy, *run))
                    if progress:
                        progress(1)
            else:
                self._parallel(todo, known, progress)
        finally:
            runner.close()
            interrupt.restore(old_handlers)
            if own is not None:
                own.close()

    def _parallel(self, todo, known: dict, progress) -> None:
        size = batch_size(len(todo), self.jobs, self.batch)
        batches = [todo[i:i + size] for i in range(0, len(todo), size)]
        while batches:
            batches, lost = self._pool(batches, known, progress, self.jobs, self.jobs * 2)
            # A worker died: re-run what was in flight one seed at a time on one
            # worker, so the seed that kills it again is known.
            suspects = [run for b in lost for run in b if run not in self.records]
            while suspects:
                rest, dead = self._pool([[r] for r in suspects], known, progress, 1, 1)
                if dead:
                    self.record_crash(*dead[0][0])
                suspects = [r for b in dead[1:] + rest for r in b if r not in self.records]

    def _pool(self, batches, known, progress, workers: int, inflight: int):
        """Run batches in one pool, at most inflight at a time. Returns (not
        started, lost with a dead worker: the first one lost first)."""
        lost: list = []
        # The workers are forked: every object this process holds is theirs
        # too, shared until written. Their collector walking all of it (and
        # so writing it) made each copy what it touched; frozen, the objects
        # that exist now are left out of every collection, here and there
        # (measured, forked from a bench process of 400 MB: two workers took
        # 10 % more CPU time than one for the same runs, 5 % frozen).
        gc.freeze()
        ex = ProcessPoolExecutor(workers, mp_context=POOL_CONTEXT, initializer=_init_worker,
                                 initargs=(os.getpid(), self.program, known))
        pending = {}
        queue = list(batches)
        try:
            while queue or pending:
                while queue and len(pending) < inflight:
                    b = queue.pop(0)
                    with _stop_signals_held():      # the submit forks the workers
                        pending[ex.submit(run_pool_batch, self.plan.strategy, b)] = b
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    b = pending.pop(fut)
                    try:
                        recs = fut.result()
                    except BrokenProcessPool:
                        lost.append(b)
                        continue
                    for rec in recs:
                        self.record(rec)
                    # kept records stay out of this process's collections
                    # too (they hold no cycles): the collector scanning every
                    # record kept so far cost the parent about 9 us a run
                    gc.freeze()
                    if progress:
                        progress(len(recs))
                if lost:
                    lost += list(pending.values())
                    return queue, lost
            return [], []
        finally:
            with _stop_signals_held():
                ex.shutdown(wait=not lost, cancel_futures=True)
            gc.unfreeze()

    def close(self) -> None:
        """Close runs.jsonl and give the directory up (the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock is not None:
            os.close(self._lock)           # closing the descriptor drops the fcntl lock
            self._lock = None

    def summary(self) -> dict:
        """The summary of the records (summarize()); also written to
        summary.json. Raises UserError when it cannot be written."""
        if self.known is None:
            with Runner(self.program) as runner:
                self.known = runner.known()
        out = summarize(self.plan, self.records, probe=self.known["probe"])
        if self.out is not None:
            try:
                _write_own(self.out / SUMMARY_FILE, json.dumps(out, indent=1) + "\n")
            except OSError as exc:
                raise UserError(f"{self.out / SUMMARY_FILE}: cannot write ({exc.strerror or exc}); the runs "
                                f"are kept in {self.out / RUNS_FILE}") from None
        return out


def read_records(path: Path) -> dict[tuple, dict]:
    """Records of a runs.jsonl; lines that are not whole records are skipped."""
    return read_lines(path)[0]


def read_lines(path: Path, foreign=None):
    """(records by run_key, bad lines, the torn last line or None,
    records seen twice) of a runs.jsonl. A bad line is (line number, raw
    bytes, why); the torn line is a last line without its newline.
    foreign(record) -> why or None: a record it names is a bad line (a
    record some other campaign wrote: another strategy's run of the same
    seed is another run, and would take this one's place)."""
    records: dict = {}
    bad: list = []
    torn = None
    dup = 0
    with open(path, "rb") as f:
        no = 0
        while True:
            raw = f.readline(MAX_LINE + 1)
            if not raw:
                break
            no += 1
            if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                rest = 0
                while True:                     # skip the rest of an absurdly long line
                    more = f.readline(MAX_LINE)
                    rest += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                bad.append((no, raw[:200] + b"...", f"longer than {MAX_LINE} bytes ({len(raw) + rest} bytes)"))
                continue
            if not raw.endswith(b"\n"):
                torn = (no, raw, "cut short (no newline at its end)")
                break
            rec, why = _parse_record(raw)
            if rec is not None and foreign is not None:
                why = foreign(rec)
                rec = None if why else rec
            if rec is None:
                bad.append((no, raw, why))
                continue
            key = record_key(rec)
            dup += key in records
            records[key] = rec
    return records, bad, torn, dup


def _parse_record(raw: bytes):
    """(record, None) or (None, why the line is not a record)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte {exc.start})"
    depth = 0
    deepest = 0
    in_string = escaped = False
    for ch in text:                      # json.loads recurses: bound the nesting before it does
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_NESTING:
                return None, f"nested more than {MAX_NESTING} levels"
        elif ch in "]}":
            depth -= 1
    try:
        rec = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON ({exc})"
    if not (isinstance(rec, dict) and isinstance(rec.get("model"), str) and type(rec.get("seed")) is int
            and isinstance(rec.get("outcome"), str) and isinstance(rec.get("kernel", ""), str)):
        return None, "not a run record (model, seed, outcome)"
    if rec["outcome"] not in RECORD_OUTCOMES:
        return None, f"not a run record (outcome {_short(rec['outcome'])!r})"
    wrong = _record_problem(rec)
    if wrong:
        return None, f"not a run record ({wrong})"
    return rec, None


#: The outcomes a record carries: a run's (Result.outcome), or the campaign's own
#: for a run that raised (error) or whose worker died (crash). A record with any
#: other would be counted as a run without findings.
RECORD_OUTCOMES = ("completed", "failed", "stalled", "fault", "idle", "error", "crash")
_NUMBER = (int, type(None))
_TEXT = (str, type(None))
#: What the summary, the verdicts and the reports read of a record (Result.to_json;
#: error and crash records carry fewer fields): field -> its JSON types, and for a
#: list or table, the type of each element (a list's elements: the keys each holds).
_RECORD_FIELDS = {
    "latency": (_NUMBER, None), "pause": (_NUMBER, None), "units": (int, None), "inconsistent": (bool, None),
    "violation_count": (int, None), "handover_count": (int, None), "promise_breaches": (int, None),
    "fault": (_TEXT, None), "error": (_TEXT, None), "warnings": (list, str), "met": (dict, str),
    "promise": (list, ("text",)), "handovers": (list, ()),
    "inconsistencies": (list, ("task", "unit", "start", "end", "entries")),
    "violations": (list, ("assert", "key", "value", "task", "time")),
}


def _record_problem(rec: dict) -> str | None:
    """What in a record of the right kind (model, seed, outcome) has the
    wrong type for _RECORD_FIELDS, or None."""
    for key, (kind, each) in _RECORD_FIELDS.items():
        if key not in rec:
            continue
        value = rec[key]
        if not isinstance(value, kind) or (kind in (int, _NUMBER) and isinstance(value, bool)):
            return f"{key} is {type(value).__name__}"
        if kind in (int, _NUMBER) and value is not None and value < 0:
            # counts and virtual times: a negative one would be a median or a sum of the summary
            return f"{key} is negative ({value})"
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        if isinstance(each, tuple) and not all(isinstance(v, dict) and all(k in v for k in each) for v in items):
            return f"{key} holds an element without {', '.join(each) or 'fields'}"
        if each is str and not all(isinstance(v, str) for v in items):
            return f"{key} holds a value that is not a string"
    if rec.get("promise_breaches") and not rec.get("promise"):
        return "promise_breaches without promise"
    entries = [e for bad in rec.get("inconsistencies", ()) for e in (bad["entries"] if isinstance(bad["entries"], list)
                                                                     else [None])]
    if not all(isinstance(e, dict) and all(k in e for k in ("function", "version", "clock")) for e in entries):
        return "inconsistencies holds an entry without function, version, clock"
    return None


def _write_own(path: Path, text: str) -> None:
    """Replace one of the campaign's own files with text, whole or not at
    all (emu/runs/output.py, own: a symbolic link there is refused, not
    followed). UserError for a link or a file that is not a regular one."""
    try:
        output.write_text(path, text, own=True)
    except output.ForeignFile as exc:
        raise _foreign(path, exc.strerror) from None


def _open_own(path: Path, flags: int) -> int:
    """os.open of one of the campaign's own files (the lock, runs.jsonl,
    rejected.txt), which it writes in place: a symbolic link there is
    refused (UserError), not followed, so that no file of the user's it
    points at is written. One that is appended to (O_APPEND) and has
    another name too (a hard link: a copy of the directory made with
    `cp -al`, as backups by hard links are) is first made a file of its
    own, the same bytes under this name alone: appending in place wrote
    the other name's file as well."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _foreign(path, "a symbolic link") from None
        raise
    if flags & os.O_APPEND and os.fstat(fd).st_nlink > 1:
        os.close(fd)
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            data = f.read()
        with output.writing(path, replace=True, binary=True, own=True) as f:      # a new file: the link is broken
            f.write(data)
        return _open_own(path, flags)
    return fd


def _foreign(path: Path, what: str) -> UserError:
    return UserError(f"--out {path.parent}: {path.name} is {what}; lpemu writes only files of its own there: "
                     f"remove it, or choose another --out")


def own_file(out, path) -> str | None:
    """The name of the campaign's own file in directory out (the lock,
    OWN_FILES) that path names, by its name or as the same file; None when
    it names none (another output must not take one's place)."""
    path, out = Path(os.path.realpath(path)), Path(os.path.realpath(out))
    for name in (LOCK_FILE, *OWN_FILES):
        if path == out / name:
            return name
        with contextlib.suppress(OSError):
            if os.path.samefile(path, out / name):
                return name
    return None


def _check_own_files(out: Path) -> None:
    """UserError naming the first file in out that has the name of one of the
    campaign's own (the lock, OWN_FILES) but that no campaign wrote: the user
    named the directory, and what is already there stays theirs. --force
    replaces a campaign's results, never a file of the user's that happens
    to be called summary.json. A campaign's files are known by what they
    hold: campaign.json and summary.json by their schema, runs.jsonl by a
    campaign.json beside it or by lines that are all run records, rejected.txt
    by its header, the lock by the process id it holds."""
    meta = _not_meta(out / META_FILE)
    campaign = meta is None and (out / META_FILE).is_file()      # a campaign wrote this directory
    for name, why in ((LOCK_FILE, _not_lock), (META_FILE, lambda p: meta), (SUMMARY_FILE, _not_summary),
                      (RUNS_FILE, lambda p: None if campaign else _not_runs(p)),
                      (REJECTED_FILE, _not_rejected)):
        path = out / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            raise _foreign(path, "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file")
        problem = why(path)
        if problem:
            raise UserError(f"--out {out}: {name} there is not a file a campaign wrote ({problem}); lpemu "
                            f"replaces only its own files, even with --force: move it away, or choose another --out")


def _read_json(path: Path):
    """The JSON value in path (read to MAX_META bytes), or None."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_META + 1)
        return None if len(raw) > MAX_META else json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _not_meta(path: Path) -> str | None:
    """Why path is no campaign.json (Plan.to_json's fields), or None (also
    when no regular file is there)."""
    if not os.path.isfile(path):
        return None
    meta = _read_json(path)
    if not (isinstance(meta, dict) and isinstance(meta.get("scenario"), str) and isinstance(meta.get("models"), list)
            and isinstance(meta.get("seeds"), list) and isinstance(meta.get("strategy"), str)):
        return "not the JSON plan lpemu fuzz writes: scenario, models, seeds, strategy"
    return None


def _not_summary(path: Path) -> str | None:
    summary = _read_json(path)
    if not (isinstance(summary, dict) and isinstance(summary.get("scenario"), str)
            and isinstance(summary.get("seeds"), list) and isinstance(summary.get("models"), list)
            and all(isinstance(m, dict) and "model" in m for m in summary["models"])):
        return "not the JSON summary lpemu fuzz writes: scenario, seeds, models"
    return None


def _not_runs(path: Path) -> str | None:
    """Why path, a runs.jsonl without a campaign.json beside it, is not a
    campaign's: a line that is not a run record (a last line cut short is an
    interrupted campaign's)."""
    try:
        _, bad, _, _ = read_lines(path)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if bad:
        return f"no {META_FILE} beside it, and line {bad[0][0]} is not a run record"
    return None


def _not_rejected(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if not (first.startswith(b"# ") and REJECTED_HEADER.encode() in first):
        return f"it does not start with the header lpemu fuzz --resume writes ('# ...: {REJECTED_HEADER}')"
    return None


def _not_lock(path: Path) -> str | None:
    """The lock holds its holder's process id, or nothing (truncated, not yet written)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(65)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    held = raw.strip()
    if len(raw) > 64 or (held and not held.isdigit()):
        return "the lock of lpemu fuzz holds a process id and nothing else"
    return None


def _lock(path: Path) -> int:
    """Take the campaign lock at path (fcntl; released when the process
    ends, however it ends). UserError naming the holder when it is taken."""
    fd = _open_own(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise UserError(f"--out {path.parent}: another lpemu fuzz (pid {holder}) is running in this "
                            f"directory; wait for it or use another --out") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def fingerprint(program: Program) -> dict:
    """What decides the runs of program, as digests: the scenario text, each
    source file (program, modules, patches, lpemu.h), the compiler flags, the
    compiler and linker versions, the tool's version, and the kernel the
    runs take as theirs (`[machine] kernel`, or the one `--kernel` that
    replaces it: not in the scenario's text)."""
    from emu import __version__
    from emu.images.toolchain import DEFAULT_CFLAGS, INCLUDE_DIR, REQUIRED_CFLAGS
    from emu.kernel import versions
    scn = program.scenario
    files = scn.inputs[1:]
    here = scn.path.resolve().parent
    sources = {os.path.relpath(p, here): _digest(Path(p)) for p in files}
    sources["<lpemu.h>"] = _digest(Path(INCLUDE_DIR) / "lpemu.h")
    return {"scenario": _digest(scn.path), "sources": sources,
            "cflags": [*DEFAULT_CFLAGS, *scn.cflags, *REQUIRED_CFLAGS],
            "compiler": _tool_version("gcc"), "linker": _tool_version("ld"), "version": __version__,
            "kernel": versions.kernel(scn.machine.get("kernel")).name}


def fingerprint_changes(old, new: dict) -> list[str]:
    """What differs between two fingerprints, in words (empty: the same program)."""
    if not isinstance(old, dict):
        return ["the campaign was started without a fingerprint"]
    out = []
    if old.get("scenario") != new["scenario"]:
        out.append("the scenario file changed")
    olds = old.get("sources") if isinstance(old.get("sources"), dict) else {}
    for name, digest in new["sources"].items():
        if name not in olds:
            out.append(f"{name} is new")
        elif olds[name] != digest:
            out.append(f"{name} changed")
    out += [f"{name} is gone" for name in olds if name not in new["sources"]]
    for key, what in (("cflags", "the compiler flags"), ("compiler", "the compiler"), ("linker", "the linker"),
                      ("version", "lpemu")):
        if old.get(key) != new[key]:
            out.append(f"{what} changed ({_short(old.get(key))} -> {_short(new[key])})")
    # A campaign directory written before the kernel was recorded says nothing of it.
    if "kernel" in old and old["kernel"] != new["kernel"]:
        out.append(f"the kernel changed ({_short(old['kernel'])} -> {new['kernel']})")
    return out


def _short(value) -> str:
    """value (from campaign.json: any JSON) in at most 60 characters."""
    text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def _tool_version(tool: str) -> str:
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "absent"
    return out.splitlines()[0].strip() if out else "unknown"


#: How a campaign takes the median of latencies and pauses (median), said
#: where it prints them
MEDIAN_RULE = "median: the middle run's, the lower of the two middle ones for an even count"


def median(values: list[int]) -> int | None:
    """The lower median of values (None for none): the middle one, the lower
    of the two middle ones for an even count. A latency or a pause is a
    count of instructions; the median is one that a run had, a whole number,
    never the x.5 halfway between two runs."""
    return statistics.median_low(values) if values else None


def summarize(plan: Plan, records: dict, *, probe=None) -> dict:
    """Per model (per kernel and model when kernels are compared: each row
    then names its kernel): counts, latencies (median: median()), the first failing and
    faulting seeds, and (given the probe) the states the runs met
    (emu/runs/coverage.py)."""
    models = []
    warnings = []
    for kernel, model in plan.groups():
        keys = [run_key(model, s, kernel) for s in plan.seeds]
        recs = [records[k] for k in keys if k in records]
        lat = [r["latency"] for r in recs if r.get("latency") is not None]
        pause = [r["pause"] for r in recs if r.get("pause") is not None]
        failing = [r["seed"] for r in recs if r.get("inconsistent") or r.get("violation_count")
                   or r.get("handover_count")]
        broken = [r for r in recs if r.get("promise_breaches")]
        faults = [r for r in recs if r.get("outcome") in ("fault", "crash")]
        count = {k: sum(r.get("outcome") == k for r in recs) for k in
                 ("completed", "failed", "stalled", "fault", "error", "crash")}
        models.append({
            "model": model, **({"kernel": kernel} if kernel is not None else {}), "runs": len(recs),
            "inconsistent": sum(bool(r.get("inconsistent")) for r in recs),
            "bad_values": sum(bool(r.get("violation_count")) for r in recs),
            "handovers": sum(bool(r.get("handover_count")) for r in recs),
            # the emulator's own errors (emu/runs/promise.py): these runs say nothing about the patch
            "emulator_errors": len(broken),
            "first_emulator_error": (f"seed {broken[0]['seed']}: {broken[0]['promise'][0]['text']}"
                                     if broken else None),
            **count,
            "latency_median": median(lat), "latency_max": max(lat) if lat else None,
            "pause_median": median(pause), "pause_max": max(pause) if pause else None,
            "first_failing_seed": min(failing) if failing else None,
            "findings": {k: sum(k in findings(r) for r in recs) for k in FINDINGS},
            "first_fault_seed": faults[0]["seed"] if faults else None,
            "first_fault": (faults[0].get("fault") or faults[0].get("error")) if faults else None,
            "units": sum(r.get("units", 0) for r in recs),
        })
        if probe is not None:
            models[-1]["coverage"] = coverage.coverage(probe, recs)
        # a model whose runs saw no unit at all checked nothing: say so
        said = [w for r in recs for w in r.get("warnings", ())]
        if recs and not models[-1]["units"] and said:
            warnings.append(f"{model}{f' on kernel {kernel}' if kernel else ''}: {said[0]}")
    out = {"scenario": plan.scenario, "strategy": plan.strategy, "seeds": [plan.seeds[0], len(plan.seeds)],
           "models": models, "warnings": warnings}
    if plan.kernels:
        out["kernels"] = list(plan.kernels)
    return out


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
