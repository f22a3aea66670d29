"""Shrinking: the smallest variant of a failing run that still fails.

A run fails the way the fuzzer hunts (a unit that mixed versions, a broken
assertion) or by a guest fault; its variants must fail the same way. In
order:

1. fewer tasks: drop halves, then quarters, ... then single tasks (the
   complements of ddmin) while the run still fails. Dropping tasks moves
   every other task in time, so a variant that passes at the old start
   point is not given up at once: the state in which the transition met the
   failing task (Result.met) is looked for in the variant (a short unpatched
   run of it, emu/runs/probe.find_state), and the variant is tried at the
   first few points where a task meets that state. Identical tasks in
   lockstep, which no single start point shrinks, shrink this way;
2. simpler schedules and fewer preemptions;
3. the latest start point that still fails (gallop, then bisect);
4. when tasks are left and the start point moved, 1 again at the new start
   point (a task that had to stay at the first may go there), then 3.
"""
from __future__ import annotations

from dataclasses import replace

from emu.errors import UserError
from emu.runs.fuzz import Result, Runner, RunSpec
from emu.runs.probe import find_state

LOCKSTEP_TRIES = 3         # start points tried per variant that passed at the old one


def failure_kind(res: Result) -> str | None:
    """'failing' (mixed versions or a broken assertion), 'fault', or None."""
    if res.failing:
        return "failing"
    if res.outcome == "fault":
        return "fault"
    return None


def failed_task(res: Result) -> str | None:
    """The task the failure is about: the first inconsistent unit's, the
    first broken assertion's, or the faulting task."""
    if res.inconsistencies:
        return res.inconsistencies[0]["task"]
    if res.violations:
        return res.violations[0]["task"]
    return res.fault_task


def shrink(runner: Runner, spec: RunSpec, *, budget: int = 200, progress=None) -> tuple[RunSpec, Result, int]:
    """The smallest variant of a failing (or faulting) run: fewest tasks,
    the simplest schedule with the fewest preemptions, then the latest start
    point that still fails. Returns (spec, its result, runs tried). Raises
    UserError when spec neither fails nor faults. progress(failed) is
    called after each run, failed saying whether it failed or faulted."""
    tried = 0

    def run(s: RunSpec) -> Result:
        nonlocal tried
        tried += 1
        r = runner.execute(s)
        if progress:
            progress(failure_kind(r) is not None)
        return r

    best = run(spec)
    kind = failure_kind(best)
    if kind is None:
        raise UserError(f"seed {spec.seed} under {spec.model} does not fail: nothing to shrink")

    def fails(s: RunSpec) -> Result | None:
        r = run(s)
        return r if failure_kind(r) == kind else None

    task = failed_task(best)
    state = best.met.get(task) if task else None

    def variant_fails(cand: RunSpec):
        """(spec, result) of cand or of cand at a start point meeting the
        failed state, or None."""
        r = fails(cand)
        if r is not None:
            return cand, r
        if state is None or tried >= budget:
            return None
        focus = {task} if task in cand.tasks else None
        m, fault = runner.prefix(replace(cand, start=runner.first_at))
        try:
            if fault is not None:
                return None
            points = find_state(m, state, tasks=focus, until=m.now + 4 * max(runner.window(), 1) +
                                runner.probe().end - runner.first_at, count=LOCKSTEP_TRIES,
                                stacks=runner.stacks)
        finally:
            m.engine.close()
        for t in points:
            if tried >= budget:
                break
            moved = replace(cand, start=t)
            r = fails(moved)
            if r is not None:
                return moved, r
        return None

    def fewer_tasks(cur: RunSpec, best: Result):
        """1. complements of halves, quarters, ..., single tasks."""
        names = list(cur.tasks or [i for t in runner.scn.tasks for i in t.instances()])
        size = len(names) // 2
        while size >= 1 and len(names) > 1 and tried < budget:
            i = 0
            while i < len(names) and len(names) > 1 and tried < budget:
                keep = names[:i] + names[i + size:]
                got = variant_fails(replace(cur, tasks=tuple(keep))) if keep else None
                if got is not None:
                    (cur, best), names = got, keep
                else:
                    i += size
            size = min(size // 2, len(names) // 2)
        return cur, best

    def latest_start(cur: RunSpec, best: Result):
        """3. the latest start point that still fails: gallop, then bisect."""
        lo, step, hi = cur.start, 1, None
        limit = cur.start + runner.window()
        while tried < budget and lo + step <= limit:
            r = fails(replace(cur, start=lo + step))
            if r is None:
                hi = lo + step
                break
            lo, best, step = lo + step, r, step * 2
        if hi is not None:
            while hi - lo > 1 and tried < budget:
                mid = (lo + hi) // 2
                r = fails(replace(cur, start=mid))
                if r is None:
                    hi = mid
                else:
                    lo, best = mid, r
        return replace(cur, start=lo), best

    def ntasks(s: RunSpec) -> int:
        return len(s.tasks) if s.tasks is not None else sum(t.count for t in runner.scn.tasks)

    cur, best = fewer_tasks(spec, best)
    # 2. simpler schedules, fewer preemptions
    for simplify in _SIMPLIFY:
        cand = simplify(cur, runner.scn.machine.get("preempt", "voluntary"))
        if cand is None or tried >= budget:
            continue
        r = fails(cand)
        if r is not None and r.preemptions <= best.preemptions:
            cur, best = cand, r
    cur, best = latest_start(cur, best)
    # a task that could not go at the first start point may go at the last
    # one (every other task stands elsewhere there): once more, then the
    # latest start point of what is left
    if ntasks(cur) > 1 and cur.start != spec.start and tried < budget:
        fewer, fbest = fewer_tasks(cur, best)
        if ntasks(fewer) < ntasks(cur):
            cur, best = latest_start(fewer, fbest)
    return cur, best, tried


def _round_robin(spec: RunSpec, _preempt):
    return replace(spec, schedule="rr", sched_seed=0) if spec.schedule != "rr" else None


def _shallower(spec: RunSpec, _preempt):
    return replace(spec, depth=1) if spec.schedule == "pct" and spec.depth > 1 else None


def _less_preemptive(spec: RunSpec, preempt: str):
    current = spec.preempt or preempt
    return replace(spec, preempt="voluntary") if current == "full" else None


_SIMPLIFY = (_round_robin, _shallower, _less_preemptive)
