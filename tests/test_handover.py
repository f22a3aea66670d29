"""Value handovers (emu/runs/handover.py) and the promise oracle
(emu/runs/promise.py), both from the trace alone.

The seed's bug is reported as a value handover with no assertion in the
scenario: under stop_machine and livepatch (foo is not in the patch) a task
that called bar v0 hands its 5 to baz v1; never under kGraft, and never
once the patch carries foo. The argument registers the trace records are
the ones the function received (C and Python twins alike). The oracle holds
real runs of every model, and finds the breaches planted in their traces."""
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.engine import core
from emu.machine.machine import EV_PATCH_STATE, EV_SCHED_IN, EV_STOP_MACHINE, Machine
from emu.machine.task import ROUTES
from emu.runs import promise, scenario
from emu.runs.fuzz import Runner

SCENARIO = """
[program]
sources = ["base.c"]
[machine]
cpus = 2
quantum = 500
[[task]]
name = "user"
entry = "user_entry"
args = [0]
count = 2
[[task]]
name = "kthread"
entry = "kthread_entry"
args = [2]
kind = "kthread"
[[patch]]
name = "seed_patch"
sources = ["{patch}"]
functions = [{functions}]
[[action]]
at = 20000
do = "enable"
patch = "seed_patch"
[fuzz]
runs = 8
strategy = "exhaustive"
"""


def runner(seed_copy, patch="patch.c", functions='"bar", "baz"'):
    path = seed_copy / "scenario.toml"
    path.write_text(SCENARIO.format(patch=patch, functions=functions))
    scn = scenario.load(path)
    assert not scn.assertions          # nothing asserted: the handover is found by itself
    return Runner(scenario.build(scn))


@pytest.mark.parametrize("model", ["stop_machine", "livepatch"])
def test_the_seed_bug_is_a_value_handover_without_any_assertion(seed_copy, model):
    with runner(seed_copy) as r:
        results = [r.execute(r.plan(model, s)) for s in range(8)]
    handed = [h for res in results for h in res.handovers]
    assert handed, "no run handed bar v0's value to baz v1"
    for h in handed:
        assert (h["consumer"], h["consumer_version"], h["producer"], h["producer_version"]) == ("baz", 1, "bar", 0)
        assert h["value"] == 5 and h["arg"] == 1 and h["produced_at"] < h["at"]
        assert h["text"].startswith(f"baz v1 received 5 in its 1st argument, returned by bar v0 at t={h['produced_at']}")
    for res in results:
        assert res.handover_count == len(res.handovers)
        # a handover happens inside one unit, which then mixed versions too
        assert not res.handovers or res.inconsistent_units
        assert res.promise == [], res.promise


def test_kgraft_and_a_patch_that_carries_foo_hand_nothing_over(seed_copy):
    with runner(seed_copy) as r:
        assert not any(r.execute(r.plan("kgraft", s)).handovers for s in range(8))
    with runner(seed_copy, "patch_foo.c", '"foo", "bar", "baz"') as r:
        for model in ("stop_machine", "livepatch"):
            assert not any(r.execute(r.plan(model, s)).handovers for s in range(8))


ARGS_SRC = """
volatile long sink;
__attribute__((noinline)) long six(long a, long b, long c, long d, long e, long f)
{ sink = a ^ b ^ c ^ d ^ e ^ f; return sink; }
long entry(long a, long b, long c, long d, long e, long f)
{ for (;;) { six(a, b, c, d, e, f); six(f, e, d, c, b, a); lpemu_yield(); } }
"""


def test_entries_carry_the_six_argument_registers_in_both_twins(compile_c):
    image = compile_c(ARGS_SRC, cflags=["-O2"])
    word = st.integers(0, 2**64 - 1)

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(word, min_size=6, max_size=6))
    def check(args):
        got = {}
        for accel in ("c", "python"):
            m = Machine(image, cpus=1, quantum=50, accel=accel)
            m.add_task("t", "entry", tuple(a - (1 << 64) if a >> 63 else a for a in args))
            m.start()
            m.watch(m.function("six"))
            m.run(until=3000)
            trace = list(m.trace)
            m.engine.close()
            regs = []
            for i, e in enumerate(trace):
                if e[1] == core.EV_ENTRY:
                    lo, hi = trace[i + 1], trace[i + 2]
                    assert (lo[1], hi[1]) == (core.EV_ARGS, core.EV_ARGS_HI)
                    assert lo[0] == hi[0] == e[0] and lo[2] == hi[2] == e[2]
                    regs.append(tuple(v & (2**64 - 1) for v in (*lo[3:], *hi[3:])))
            assert regs[:2] == [tuple(args), tuple(reversed(args))]
            got[accel] = trace
        assert got["c"] == got["python"]
    check()


def _run(seed_copy, model, seed=0):
    r = runner(seed_copy)
    res, m, mod = r.execute(r.plan(model, seed), keep=True)
    return r, m, mod


def _fake(m, trace, unwinder=None):
    """m with another trace (a machine's trace is a core.EventLog), and unwinder."""
    return types.SimpleNamespace(trace=core.EventLog(trace), tasks=m.tasks, functions=m.functions, engine=m.engine,
                                 images=m.images, function_at=m.function_at, unwinder=unwinder or m.unwinder)


def _judged(m, mod, trace, model):
    fake = _fake(m, trace)
    return promise.check(fake, mod.patches, model)


@pytest.mark.parametrize("model", scenario.MODELS)
def test_real_runs_keep_their_promise_and_planted_breaches_are_found(seed_copy, model):
    r, m, mod = _run(seed_copy, model)
    try:
        trace = list(m.trace)
        assert _judged(m, mod, trace, model) == []
        bar = m.function("bar").id
        first_entry = next(i for i, e in enumerate(trace) if e[1] == core.EV_ENTRY and e[3] == bar and e[4] == 1)
        # every model: a new version before any transition started is a task left behind / early
        planted = [e for e in trace[:first_entry]]
        early = next(i for i, e in enumerate(planted) if e[1] == core.EV_ENTRY and e[3] == bar)
        clock, kind, task, a, b, c = planted[early]
        planted[early] = (clock, kind, task, a, 1, c)
        rules = {b.rule for b in _judged(m, mod, planted, model)}
        assert rules & {"left-behind", "together", "early"}, rules
        if model in ("stop_machine", "ksplice"):
            # the switch instant with CPUs running
            no_stop = [e for e in trace if not (e[1] == EV_STOP_MACHINE and e[3] == 1)]
            assert "stopped" in {b.rule for b in _judged(m, mod, no_stop, model)}
        if model in ("livepatch", "kgraft"):
            # a switch by a route the model does not take
            other = "safe_point" if model == "livepatch" else "stack"
            swapped = [(e[0], e[1], e[2], e[3], ROUTES.index(other), e[5])
                       if e[1] == EV_PATCH_STATE and ROUTES[e[4]] not in ("init", "complete") else e for e in trace]
            assert "route" in {b.rule for b in _judged(m, mod, swapped, model)}
        if model == "livepatch":
            # a stack-check switch of a task that a CPU runs
            i = next(i for i, e in enumerate(trace)
                     if e[1] == EV_PATCH_STATE and ROUTES[e[4]] == "stack" and e[2] >= 0)
            running = trace[:i] + [(trace[i][0], EV_SCHED_IN, trace[i][2], 0, 0, 0)] + trace[i:]
            assert "running" in {b.rule for b in _judged(m, mod, running, model)}
    finally:
        m.engine.close()
        r.close()


def test_hostile_traces_never_crash_the_oracles(seed_copy):
    """Any sequence of events (kinds the oracles read, hostile fields) is
    judged without an exception: they read a trace, never trust it."""
    from emu.runs import handover
    r, m, mod = _run(seed_copy, "livepatch")
    kinds = [core.EV_ENTRY, core.EV_ARGS, core.EV_ARGS_HI, core.EV_RETURN, core.EV_UNWOUND, core.EV_RET_UNTRACED,
             EV_PATCH_STATE, EV_SCHED_IN, core.EV_SCHED_OUT, EV_STOP_MACHINE, core.EV_TRANSITION,
             core.EV_KERNEL_EXIT, core.EV_SAFE_POINT, core.EV_EXIT]
    small = st.integers(-3, 12)
    word = st.one_of(small, st.integers(-2**63, 2**63 - 1))
    event = st.tuples(st.integers(0, 2**40), st.sampled_from(kinds), st.integers(-4, 6), word, word,
                      st.integers(0, 2**64 - 1))
    try:
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(event, max_size=60), st.sampled_from(scenario.MODELS))
        def check(trace, model):
            for b in _judged(m, mod, trace, model):
                assert str(b) and b.to_json()
            fake = _fake(m, trace)
            for h in handover.find(fake, mod.patches):
                assert str(h)
        check()
    finally:
        m.engine.close()
        r.close()


def test_handover_finder_c_and_python_twins_agree(seed_copy):
    """csrc/handover.c and handover.scan give the same handovers on real
    traces of every model and on generated ones: entries, argument events
    and returns of carried and other functions, values that repeat (a value
    returned twice, an argument that equals several returns), unit ends,
    damaged fields (any task id, any kind, arguments without an entry)."""
    from emu.runs import handover
    r = runner(seed_copy)
    try:
        for i, model in enumerate(scenario.MODELS):
            res, m, mod = r.execute(r.plan(model, i), keep=True)
            try:
                fast, slow = handover.find(m, mod.patches), handover.find(m, mod.patches, fast=False)
                assert fast == slow
                assert len(fast) == res.handover_count
            finally:
                m.engine.close()
        carriers = handover.carriers_of(mod.patches)
        fids = sorted(carriers) + [max(carriers) + 1, -1]
        kinds = [core.EV_ENTRY, core.EV_ARGS, core.EV_ARGS_HI, core.EV_RETURN, core.EV_KERNEL_EXIT,
                 core.EV_SAFE_POINT, core.EV_EXIT, core.EV_OBSERVE, 99, -7]
        value = st.one_of(st.integers(0, 3), st.sampled_from([2**64 - 1, 2**63]))     # rax, rdx, r9
        word = st.one_of(st.integers(0, 3), st.sampled_from([-1, -2**63]), st.integers(-2**63, 2**63 - 1))
        task = st.one_of(st.integers(-2, 3), st.integers(-2**31, 2**31 - 1))
        event = st.tuples(st.integers(0, 2**64 - 1), st.sampled_from(kinds), task,
                          st.one_of(st.sampled_from(fids), word), st.one_of(st.integers(0, 3), word), value)

        @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(event, max_size=80), st.dictionaries(st.sampled_from(fids[:-2] + [fids[-2]]),
                                                             st.sets(st.integers(0, 3), min_size=1), max_size=4),
               st.dictionaries(st.tuples(st.sampled_from(fids), st.integers(0, 3)),
                               st.frozensets(st.integers(0, 5)), max_size=6),
               st.sets(st.integers(-1, 4), max_size=4))
        def check(trace, carry, regs, stacking):
            log = core.EventLog(trace)
            pairs = [(f, i) for f, s in carry.items() for i in s]
            masks = [(f, v, sum(1 << k for k in taken)) for (f, v), taken in regs.items()]
            assert core.handover_find(log, pairs, masks, stacking) == \
                handover.scan(log.records(), carry, regs, stacking)
        check()
    finally:
        r.close()


def test_promise_oracle_c_and_python_twins_agree(seed_copy):
    """csrc/promise.c and the oracle's Python pass (promise.check with
    fast=False) find the same breaches: on real traces of every model, on
    real traces edited at random (events dropped, repeated, moved to another
    task, fields changed: the planted breaches of the test above and their
    kin) and on generated traces of every kind the oracle reads, with damaged
    fields (unknown routes, tasks, transition codes)."""
    from emu.models.base import T_COMPLETE, T_START, T_SWITCH
    models = list(scenario.MODELS) + ["unknown-model"]
    r = runner(seed_copy)
    runs = []
    try:
        for i, model in enumerate(scenario.MODELS):
            res, m, mod = r.execute(r.plan(model, i), keep=True)
            runs.append((model, m, mod, list(m.trace.records())))
            assert promise.check(m, mod.patches, model) == promise.check(m, mod.patches, model, fast=False) == []
        _, m, mod, _ = runs[-1]
        fids = sorted({f.old.id for p in mod.patches for _, f in p.funcs() if f.old is not None})
        kinds = [core.EV_ENTRY, core.EV_RETURN, core.EV_UNWOUND, core.EV_RET_UNTRACED, EV_PATCH_STATE, EV_SCHED_IN,
                 core.EV_SCHED_OUT, EV_STOP_MACHINE, core.EV_TRANSITION, core.EV_KERNEL_EXIT, core.EV_SAFE_POINT,
                 core.EV_EXIT, core.EV_ARGS, 99]
        # small domains, so that events meet: a few tasks and CPUs, the patched
        # functions, versions and patch indexes 0-2, every route, the
        # transition codes; now and then any value
        small_a = st.sampled_from(sorted(set(fids + [fids[-1] + 1, -1, 0, 1, 2, 5, T_START, T_COMPLETE, T_SWITCH])))
        word = st.integers(-2**63, 2**63 - 1)
        a = st.one_of(small_a, small_a, small_a, word)
        b = st.one_of(st.integers(-1, len(ROUTES) + 1), st.integers(-1, len(ROUTES) + 1), word)
        task = st.one_of(st.integers(-2, 3), st.integers(-2, 3), st.integers(-2**31, 2**31 - 1))
        event = st.tuples(st.integers(0, 2**20), st.sampled_from(kinds), task, a, b,
                          st.one_of(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2**64 - 1)))
        transition = st.tuples(st.integers(0, 2**20), st.just(core.EV_TRANSITION), st.sampled_from([-1, -2]),
                               st.sampled_from([T_START, T_COMPLETE, T_SWITCH, 3]), st.integers(0, 2),
                               st.integers(0, 1))

        @st.composite
        def dense(draw):
            """An event whose fields fit its kind, among two tasks and an idle one."""
            kind = draw(st.sampled_from(kinds))
            task = draw(st.sampled_from([-1, 0, 1]))
            a, b, c = 0, 0, draw(st.integers(0, 1))
            if kind in (core.EV_ENTRY, core.EV_RETURN, core.EV_UNWOUND, core.EV_RET_UNTRACED):
                a, b = draw(st.sampled_from(fids)), draw(st.integers(0, 2))
            elif kind == EV_PATCH_STATE:
                a, b = draw(st.sampled_from([-1, 0, 1, 5])), draw(st.integers(0, len(ROUTES)))
            elif kind in (EV_SCHED_IN, core.EV_SCHED_OUT, EV_STOP_MACHINE):
                a, b = draw(st.integers(0, 1)), draw(st.integers(0, 1))
            elif kind == core.EV_TRANSITION:
                task, a, b = -1, draw(st.sampled_from([T_START, T_COMPLETE, T_SWITCH])), draw(st.integers(1, 2))
            return (draw(st.integers(0, 2**20)), kind, task, a, b, c)

        event = st.one_of(event, transition, dense(), dense(), dense(), dense())
        edit = st.tuples(st.sampled_from(["drop", "repeat", "task", "a", "b", "c", "insert"]),
                         st.integers(0, 10**6), st.integers(-3, 3), event)

        def edited(trace, edits):
            out = list(trace)
            for what, at, v, ev in edits:
                if not out:
                    break
                i = at % len(out)
                e = list(out[i])
                if what == "drop":
                    del out[i]
                elif what == "repeat":
                    out.insert(i, out[i])
                elif what == "insert":
                    out.insert(i, ev)
                else:
                    k = {"task": 2, "a": 3, "b": 4, "c": 5}[what]
                    e[k] = e[k] + v if k != 5 else abs(e[k] + v) % 2**64
                    e[2] = max(-2**31, min(2**31 - 1, e[2]))
                    e[3] = max(-2**63, min(2**63 - 1, e[3]))
                    e[4] = max(-2**63, min(2**63 - 1, e[4]))
                    out[i] = tuple(e)
            return out

        # a few that random traces meet seldom: each rule's breach, at least once
        bar = m.function("bar").id
        start = (0, core.EV_TRANSITION, -1, T_START, 1, 1)
        stack, idle = ROUTES.index("stack"), ROUTES.index("idle")
        cases = [
            ("kgraft", [start, (1, core.EV_ENTRY, 0, bar, 0, 0), (2, core.EV_ENTRY, 0, bar, 1, 0)]),
            ("livepatch", [start, (1, EV_PATCH_STATE, 0, 5, 0, 0), (2, core.EV_ENTRY, 0, bar, 1, 0)]),
            ("livepatch", [(0, EV_SCHED_IN, 0, 0, 0, 0), (1, EV_SCHED_IN, 1, 0, 0, 0), start,
                           (2, EV_PATCH_STATE, 0, 1, stack, 0), (3, EV_PATCH_STATE, 1, 1, stack, 0)]),
            ("livepatch", [start, (1, core.EV_ENTRY, 0, bar, 0, 0), (2, EV_PATCH_STATE, 0, 1, stack, 0),
                           (3, EV_PATCH_STATE, -1, 1, idle, 0), (4, EV_PATCH_STATE, 0, 1, idle, 0)]),
            ("immediate", [start, (1, core.EV_ENTRY, 0, bar, 1, 0), (2, core.EV_ENTRY, 1, bar, 0, 0)]),
            ("stop_machine", [(0, core.EV_ENTRY, 0, bar, 0, 0), start, (1, core.EV_TRANSITION, -1, T_SWITCH, 1, 0),
                              (2, core.EV_ENTRY, 1, bar, 0, 0)]),
        ]
        # kpatch's frame-pointer check: a preempted task's innermost two frames are not seen
        blind = [(0, core.EV_ENTRY, 0, bar, 0, 0), (1, core.EV_ENTRY, 0, bar, 0, 0),
                 (3, core.EV_SCHED_OUT, 0, 0, 1, 0), (4, EV_STOP_MACHINE, -1, 1, 0, 0), start,
                 (5, core.EV_TRANSITION, -1, T_SWITCH, 1, 0)]
        cases.append(("stop_machine", blind))
        for model, trace in cases:
            fake = _fake(m, trace)
            found = promise.check(fake, mod.patches, model)
            assert found and found == promise.check(fake, mod.patches, model, fast=False), (model, found)
        fp = _fake(m, blind, "fp")
        assert promise.check(fp, mod.patches, "stop_machine") == promise.check(fp, mod.patches, "stop_machine",
                                                                               fast=False)
        assert len(promise.check(fp, mod.patches, "stop_machine")) < len(promise.check(_fake(m, blind, "orc"),
                                                                                   mod.patches, "stop_machine"))

        @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.integers(0, len(runs) - 1), st.sampled_from(models + ["livepatch", "kgraft"] * 2),
               st.lists(edit, max_size=8),
               st.lists(event, max_size=100), st.booleans(), st.sampled_from(["orc", "fp"]))
        def check(which, model, edits, generated, use_generated, unwinder):
            _, m, mod, trace = runs[which]
            fake = _fake(m, generated if use_generated else edited(trace, edits), unwinder)
            assert promise.check(fake, mod.patches, model) == promise.check(fake, mod.patches, model, fast=False)
        check()
    finally:
        for _, m, _, _ in runs:
            m.engine.close()
        r.close()


STACKED_BASE = """
#include "lpemu.h"
volatile long zero;
__attribute__((noinline)) long f(void) { return 0 + zero; }
__attribute__((noinline)) long g(long record) { lpemu_observe(10, record); return 0; }
long user_entry(long i) { g(f()); lpemu_sleep(2); return 0; }
"""


@pytest.mark.parametrize("replace", [False, True])
def test_a_stacked_patch_hands_its_values_to_the_functions_of_the_patch_below(tmp_path, replace):
    """p1 patches f and g (a new record format), p2 patches f again. With
    p2 stacked on p1 (livepatch's func_stack), p2's f runs with p1 applied:
    its records go to p1's g, the g of its own universe, and that is no
    handover. With atomic replace p2 takes p1 off: p2's f and the original g
    are one universe, and p1's g receiving p2's record would be one."""
    from emu.runs import handover
    (tmp_path / "base.c").write_text(STACKED_BASE)
    (tmp_path / "p1.c").write_text(STACKED_BASE.replace("return 0 + zero", "return 1 + zero")
                                   .replace("observe(10,", "observe(11,"))
    (tmp_path / "p2.c").write_text(STACKED_BASE.replace("return 0 + zero", "return 2 + zero"))
    (tmp_path / "s.toml").write_text(f"""
[program]
sources = ["base.c"]
[machine]
cpus = 2
[[task]]
name = "user"
entry = "user_entry"
args = [0]
count = 2
[[patch]]
name = "p1"
sources = ["p1.c"]
functions = ["f", "g"]
[[patch]]
name = "p2"
sources = ["p2.c"]
functions = ["f"]
replace = {'true' if replace else 'false'}
[[action]]
at = 20000
do = "enable"
patch = "p1"
[[action]]
at = 220000
do = "enable"
patch = "p2"
[fuzz]
horizon = 3.0
""")
    with Runner(scenario.build(scenario.load(tmp_path / "s.toml"))) as r:
        res, m, model = r.execute(r.plan("livepatch", 0), keep=True)
        try:
            assert [t.result for t in model.transitions] == ["completed", "completed"]
            late = [e for e in m.trace if e[1] == core.EV_OBSERVE and e[0] > model.transitions[1].completed_at]
            assert late, "the tasks kept calling g"
            found = handover.find(m, model.patches)
            assert found == handover.find(m, model.patches, fast=False)
            if replace:
                # the original g gets p2's records: one universe, no handover
                assert {e[3] for e in late} == {10}
            else:
                assert {(e[3], e[4]) for e in late} == {(11, 2)}      # p1's g gets p2's records
            assert [h for h in found if h.produced_at > model.transitions[1].completed_at] == []
        finally:
            m.engine.close()
