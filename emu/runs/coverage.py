"""What a campaign covered: the states its transitions met, over the states
the probe saw.

Every run records the state in which its transition first met each task
(Result.met, emu/runs/fuzz.py); the probe (emu/runs/probe.py) lists each
task's states. Coverage is, per task and in total, how many of the probe's
states some run met, and which were never met (as function stacks, with the
patched functions open there). A run may also meet a state the probe did
not see (the probe stopped before it, or the transition itself changed the
schedule): those are counted apart, as `unforeseen`.

The probe's states include those it saw only as a task passed a
cond_resched() (Probe.passing): a transition meets the task there when its
kernel work waits for that CPU then (a stopper thread, a kworker). They
are states like the others, counted in the same total, so coverage is not
complete while one was never met; a never-met one says so
(`cond_resched`), since meeting it takes a transition whose work wants the
task's CPU as it passes there.
"""
from __future__ import annotations

from emu.runs import states as st
from emu.runs.probe import Probe


def coverage(probe: Probe, records) -> dict:
    """The coverage of records (run records, as Result.to_json gives them)."""
    met: dict[str, set[str]] = {}
    for rec in records:
        for task, state in (rec.get("met") or {}).items():
            met.setdefault(task, set()).add(state)
    patched = set(probe.patched)
    tasks, total, hit, extra = [], 0, 0, 0
    for task, seen in probe.states.items():
        got = met.get(task, set())
        passing = set(probe.passing.get(task, ()))
        missed = [s for s in seen if s not in got]
        unforeseen = sorted(got - set(seen))
        total += len(seen)
        hit += len(seen) - len(missed)
        extra += len(unforeseen)
        tasks.append({"task": task, "states": len(seen), "met": len(seen) - len(missed),
                      "missed": [{"state": s, "open": st.open_functions(s, patched), "cond_resched": s in passing}
                                 for s in missed],
                      "unforeseen": unforeseen})
    return {"states": total, "met": hit, "complete": hit == total, "unforeseen": extra, "tasks": tasks,
            "probe": {"first_at": probe.first_at, "end": probe.end, "last_new": probe.last_new,
                      "saturated": probe.saturated, "fault": probe.fault, "quiet": probe.quiet}}


def line(cov: dict) -> str:
    """One line: 'coverage 8/8 states (web 2/2, db 2/2, ...)', and how
    many states runs met that the probe never saw, when some did. With no
    state to cover (the probe saw none), it says so in words."""
    if not cov["states"]:
        met = cov["unforeseen"]
        return "coverage: none to measure, the probe saw no state" + \
            (f"; the runs met {met} state{'s' if met > 1 else ''} it never saw" if met else "")
    extra = f"; {cov['unforeseen']} more met that the probe never saw" if cov["unforeseen"] else ""
    per = ", ".join(f"{t['task']} {t['met']}/{t['states']}" for t in cov["tasks"])
    return f"coverage {cov['met']}/{cov['states']} states ({per}){extra}"


def probe_line(cov: dict) -> str:
    """What ended the probe, and where (one line, or two)."""
    p = cov["probe"]
    if p["fault"]:
        return f"probe: the unpatched run faulted at t={p['end']}; states seen up to there"
    if not cov["states"]:
        # every task stayed on its CPU whenever the probe looked and passed
        # no cond_resched() (a CPU-bound kthread with neither a sleep nor a
        # cond_resched): no state to cover, nothing to raise
        return "probe: no task was ever seen off its CPU up to t={end}: no state to cover".format(**p)
    # (two lines: a summary fits 80 columns)
    if p["saturated"]:
        how = ("no new state after t={last_new} up to t={end}\n"
               "  ({quiet} cycles with nothing new; a rarer path may be unseen: [fuzz] quiet)")
    elif p["end"] - p["last_new"] >= 2 * (p["last_new"] - p["first_at"]):
        # nothing new for most of the bound, but fewer than `quiet` cycles of
        # the tasks (a task with no kernel exit or safe point has a cycle of
        # a second): the bound, not a late state, ended it
        how = ("stopped at its bound t={end}, no new state after t={last_new}\n"
               "  (fewer than {quiet} cycles of the tasks; a rarer path may be unseen: [fuzz] probe)")
    else:
        how = "stopped at its bound t={end}, a new state still appeared at t={last_new}: raise [fuzz] probe"
    return "probe: " + how.format(**p)
