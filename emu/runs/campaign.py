"""Fuzz campaigns: many runs over worker processes, streamed to JSONL.

A campaign is the list of (model, seed) runs of a scenario. Workers each
receive the compiled program once (not once per run) and run batches of
seeds; every finished run is appended to DIR/runs.jsonl and flushed at
once, so an interrupted campaign keeps every finished run, and `--resume`
runs exactly the ones missing. A worker that dies (killed, out of memory)
takes its batch with it: the batch is re-run one seed at a time in a fresh
pool, and a seed that kills its worker again is recorded as a `crash`.

The summary is computed from the records sorted by (model, seed), so it is
the same whatever the number of workers or interruptions.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from emu.errors import EmuError, UserError
from emu.runs.expect import FINDINGS, findings
from emu.runs import coverage
from emu.runs.fuzz import Runner
from emu.runs.scenario import Program

RUNS_FILE = "runs.jsonl"
META_FILE = "campaign.json"
SUMMARY_FILE = "summary.json"


@dataclass
class Plan:
    scenario: str
    models: list[str]
    seeds: list[int]
    strategy: str

    def runs(self) -> list[tuple[str, int]]:
        return [(m, s) for m in self.models for s in self.seeds]

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "models": self.models, "seeds": [self.seeds[0], len(self.seeds)],
                "strategy": self.strategy}


# ---- workers ----------------------------------------------------------------------------------
def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the parent decides when to stop


def _run_batch(program: Program, known: dict, strategy: str, batch: list[tuple[str, int]]) -> list[dict]:
    """One batch in a worker: the program and what the parent's runner
    learned (Runner.known: the cycle, the probe) travel with the batch (tens
    of runs), not with each run."""
    with Runner(program, **known) as runner:
        return [run_record(runner, strategy, model, seed) for model, seed in batch]


def run_record(runner: Runner, strategy: str, model: str, seed: int) -> dict:
    spec = runner.plan(model, seed, strategy=strategy)
    try:
        return runner.execute(spec).to_json()
    except EmuError as exc:        # a run that cannot be set up (e.g. a patch refused by the model)
        return {"model": model, "seed": seed, "strategy": strategy, "start": spec.start,
                "spec": spec.to_json(), "outcome": "error", "error": str(exc), "inconsistent": False,
                "violation_count": 0, "latency": None, "pause": None}


# ---- the campaign -----------------------------------------------------------------------------
class Campaign:
    def __init__(self, program: Program, plan: Plan, *, jobs: int = 1, out: Path | None = None,
                 resume: bool = False, force: bool = False, batch: int | None = None,
                 scheduler: str | None = None):
        self.program = program
        self.scheduler = scheduler     # a Dask scheduler address: run the batches there (emu.runs.distributed)
        self.plan = plan
        self.jobs = max(1, jobs)
        self.out = Path(out) if out is not None else None
        self.batch = batch
        self.records: dict[tuple[str, int], dict] = {}
        self.crashes: list[dict] = []
        self.known: dict | None = None     # Runner.known() of this campaign's program
        self._file = None
        if self.out is not None:
            self._open(resume, force)

    def _open(self, resume: bool, force: bool) -> None:
        out, meta = self.out, self.plan.to_json()
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a directory")
        runs = out / RUNS_FILE
        if out.exists() and any(out.iterdir()) and not (resume or force):
            raise UserError(f"--out {out}: the directory exists; continue it with --resume or "
                            f"replace its results with --force")
        out.mkdir(parents=True, exist_ok=True)
        if resume and (out / META_FILE).exists():
            old = json.loads((out / META_FILE).read_text())
            if {k: v for k, v in old.items() if k != "seeds"} != {k: v for k, v in meta.items() if k != "seeds"}:
                raise UserError(f"--resume {out}: it holds a different campaign ({old}); "
                                f"use another --out or --force")
        if force and not resume:
            for name in (RUNS_FILE, SUMMARY_FILE):
                (out / name).unlink(missing_ok=True)
        elif runs.exists():
            self.records = read_records(runs)
        (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        self._file = open(runs, "a", encoding="utf-8")

    def todo(self) -> list[tuple[str, int]]:
        return [r for r in self.plan.runs() if r not in self.records]

    def _record(self, rec: dict) -> None:
        self.records[(rec["model"], rec["seed"])] = rec
        if self._file is not None:
            try:
                self._file.write(json.dumps(rec, separators=(",", ":")) + "\n")
                self._file.flush()
            except OSError as exc:     # e.g. a full disk: what was written stays; a torn line is dropped on resume
                raise UserError(f"{self.out / RUNS_FILE}: cannot write ({exc.strerror}); the runs written "
                                f"so far are kept: continue with --resume --out {self.out}") from None

    def run(self, progress=None, *, client=None) -> None:
        """Run what is missing. progress(n) is called as runs finish. An
        interrupt (Ctrl-C, SIGTERM) stops it with every finished run kept.
        With client (a dask.distributed Client) or a scheduler address given
        to the Campaign, the batches run on that Dask cluster."""
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
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
                for model, seed in todo:
                    self._record(run_record(runner, self.plan.strategy, model, seed))
                    if progress:
                        progress(1)
            else:
                self._parallel(todo, known, progress)
        finally:
            runner.close()
            signal.signal(signal.SIGTERM, old_term)
            if own is not None:
                own.close()
            if self._file is not None:
                self._file.flush()

    def _parallel(self, todo, known: dict, progress) -> None:
        size = self.batch or max(1, min(64, len(todo) // (self.jobs * 8) or 1))
        batches = [todo[i:i + size] for i in range(0, len(todo), size)]
        while batches:
            batches, lost = self._pool(batches, known, progress, self.jobs, self.jobs * 2)
            # A worker died: re-run what was in flight one seed at a time on one
            # worker, so the seed that kills it again is known.
            suspects = [run for b in lost for run in b if run not in self.records]
            while suspects:
                rest, dead = self._pool([[r] for r in suspects], known, progress, 1, 1)
                if dead:
                    self._crash(*dead[0][0])
                suspects = [r for b in dead[1:] + rest for r in b if r not in self.records]

    def _pool(self, batches, known, progress, workers: int, inflight: int):
        """Run batches in one pool, at most inflight at a time. Returns (not
        started, lost with a dead worker: the first one lost first)."""
        lost: list = []
        ex = ProcessPoolExecutor(workers, initializer=_init_worker)
        pending = {}
        queue = list(batches)
        try:
            while queue or pending:
                while queue and len(pending) < inflight:
                    b = queue.pop(0)
                    pending[ex.submit(_run_batch, self.program, known, self.plan.strategy, b)] = b
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    b = pending.pop(fut)
                    try:
                        recs = fut.result()
                    except BrokenProcessPool:
                        lost.append(b)
                        continue
                    for rec in recs:
                        self._record(rec)
                    if progress:
                        progress(len(recs))
                if lost:
                    lost += list(pending.values())
                    return queue, lost
            return [], []
        finally:
            ex.shutdown(wait=not lost, cancel_futures=True)

    def _crash(self, model: str, seed: int) -> None:
        rec = {"model": model, "seed": seed, "strategy": self.plan.strategy, "outcome": "crash",
               "error": f"the worker running seed {seed} under {model} died (twice)",
               "inconsistent": False, "violation_count": 0, "latency": None, "pause": None}
        self.crashes.append(rec)
        self._record(rec)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def summary(self) -> dict:
        if self.known is None:
            with Runner(self.program) as runner:
                self.known = runner.known()
        out = summarize(self.plan, self.records, probe=self.known["probe"])
        if self.out is not None:
            (self.out / SUMMARY_FILE).write_text(json.dumps(out, indent=1) + "\n")
        return out


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def read_records(path: Path) -> dict[tuple[str, int], dict]:
    """Records of a runs.jsonl; a line cut short by an interruption is dropped."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
                out[(rec["model"], rec["seed"])] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out


def summarize(plan: Plan, records: dict, *, probe=None) -> dict:
    """Per model: counts, latencies, the first failing and faulting seeds,
    and (given the probe) the states the runs met (emu/runs/coverage.py)."""
    models = []
    warnings = []
    for model in plan.models:
        recs = [records[(model, s)] for s in plan.seeds if (model, s) in records]
        lat = [r["latency"] for r in recs if r.get("latency") is not None]
        pause = [r["pause"] for r in recs if r.get("pause") is not None]
        failing = [r["seed"] for r in recs if r.get("inconsistent") or r.get("violation_count")]
        faults = [r for r in recs if r.get("outcome") in ("fault", "crash")]
        count = {k: sum(r.get("outcome") == k for r in recs) for k in
                 ("completed", "failed", "stalled", "fault", "error", "crash")}
        models.append({
            "model": model, "runs": len(recs),
            "inconsistent": sum(bool(r.get("inconsistent")) for r in recs),
            "bad_values": sum(bool(r.get("violation_count")) for r in recs),
            **count,
            "latency_median": statistics.median(lat) if lat else None, "latency_max": max(lat) if lat else None,
            "pause_median": statistics.median(pause) if pause else None, "pause_max": max(pause) if pause else None,
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
            warnings.append(f"{model}: {said[0]}")
    return {"scenario": plan.scenario, "strategy": plan.strategy, "seeds": [plan.seeds[0], len(plan.seeds)],
            "models": models, "warnings": warnings}


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
