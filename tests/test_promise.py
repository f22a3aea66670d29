"""The promise oracle (emu/runs/promise.py and its C twin csrc/promise.c)
holds each model to the checks its kernel makes: traces with a planted
switch that the kernel's check would have refused are breaches, in both
twins alike; the real runs they come from are not."""
import types
from pathlib import Path

import pytest

from emu.engine import core
from emu.machine.machine import EV_PATCH_STATE, EV_STOP_MACHINE
from emu.machine.task import PATCHED, ROUTES, UNPATCHED
from emu.models.base import T_COMPLETE, T_START, T_SWITCH
from emu.runs import promise, scenario
from emu.runs.fuzz import Runner

HELD = Path(__file__).resolve().parent / "data" / "heldout"


@pytest.fixture
def kept_run(request):
    """kept_run(rel, model) -> (machine, model) of one run of a held-out
    scenario, closed after the test."""
    open_ = []

    def run(rel: str, model: str):
        r = Runner(scenario.build(scenario.load(HELD / rel)))
        res, m, mod = r.execute(r.plan(model, 0), keep=True)
        open_.append((r, m))
        return res, m, mod

    yield run
    for r, m in open_:
        m.engine.close()
        r.close()


def judged(m, patches, trace, model):
    """Both twins' breaches of trace (as m's), which must agree."""
    fake = types.SimpleNamespace(trace=core.EventLog(trace), tasks=m.tasks, functions=m.functions,
                                 engine=m.engine, images=m.images, function_at=m.function_at, unwinder=m.unwinder)
    fast = promise.check(fake, patches, model)
    assert fast == promise.check(fake, patches, model, fast=False)
    return [str(b).split(" ", 1)[1] for b in fast]


def test_kpatch_unpatching_is_held_to_the_active_version_too(kept_run):
    """kpatch_backtrace_address_verify() checks, for each func of the patch
    being removed, the active func's code (kpatch_get_func: p2's f() on top
    of p1's): a switch that removes p1 while a task runs p2's f() is a
    breach of kpatch's promise. Ksplice checks the update's own code
    alone, so the same switch keeps its promise (the oracle held kpatch to
    p1's own version only and let it pass)."""
    _, m, mod = kept_run("kpatch-disable-under-forced/scenario.toml", "stop_machine")
    p1, p2 = (p.index for p in mod.patches)
    f = m.function("f").id
    switch = lambda clock, idx, target: [(clock, core.EV_TRANSITION, -1, T_START, idx, target),  # noqa: E731
                                         (clock + 1, core.EV_TRANSITION, -1, T_SWITCH, idx, 0),
                                         (clock + 2, core.EV_TRANSITION, -1, T_COMPLETE, idx, target)]
    trace = [(0, EV_STOP_MACHINE, -1, 1, 0, 0), *switch(1, p1, PATCHED), *switch(4, p2, PATCHED),
             (7, core.EV_ENTRY, 0, f, p2, 0), *switch(8, p1, UNPATCHED)]
    assert judged(m, mod.patches, trace, "stop_machine") == [f"[stack] sleeper: patch p1 switched with f v{p2} "
                                                             f"on the stack"]
    assert judged(m, mod.patches, trace, "ksplice") == []
    # p1's own version is checked by both
    own = [e if e[1] != core.EV_ENTRY else (7, core.EV_ENTRY, 0, f, p1, 0) for e in trace]
    for model in ("stop_machine", "ksplice"):
        assert judged(m, mod.patches, own, model)[-1] == f"[stack] sleeper: patch p1 switched with f v{p1} on the stack"


def test_a_reversed_atomic_replace_is_held_to_its_nops_originals(kept_run):
    """Reversed, an atomic replace's unpatching transition checks each nop's
    new_func, which klp_init_object_loaded() set to the original function
    (klp_check_stack_func, target UNPATCHED): in replace-nop-reverse p2's
    nop covers f(), and the walker asleep in the original f() may not
    switch back until it leaves it. The run keeps that promise; the same
    trace with the walker switched by the stack check right after the
    reversal started is a breach (the oracle checked p2's own functions
    alone and let it pass)."""
    res, m, mod = kept_run("replace-nop-reverse/scenario.toml", "livepatch")
    assert [(t["patch"], t["result"]) for t in res.transitions][1:] == [("p2", "reversed"), ("p2", "completed")]
    trace = list(m.trace.records())
    assert judged(m, mod.patches, trace, "livepatch") == []
    p2 = next(p.index for p in mod.patches if p.name == "p2")
    walker = next(t.tid for t in m.tasks if t.name == "walker")
    at = next(i for i, e in enumerate(trace)
              if e[1] == core.EV_TRANSITION and e[3] == T_START and e[4] == p2 and e[5] == UNPATCHED)
    clock = trace[at][0]
    planted = trace[:at + 1] + [(clock, EV_PATCH_STATE, walker, UNPATCHED, ROUTES.index("stack"), 0)] + trace[at + 1:]
    found = judged(m, mod.patches, planted, "livepatch")
    assert found[:1] == ["[stack] walker: switched by stack with f v0 on its stack"]
