"""Where a function activation ends: at its exit (emu/runs/oracle.py's
activations, used by the function units and by the report's spans), not
at the first later entry that looks shallower. Each case is one where a
rule built from entries alone is wrong and the exits are right."""

from emu.engine import core
from emu.kernel.patch import make_patch
from emu.machine.machine import Machine
from emu.models import make_model
from emu.runs import oracle

# foo() returns before the task sleeps; an untraced helper then calls baz
# from deeper in the stack than foo's entry. Entries alone would keep foo's
# unit open over baz's call (no later entry at foo's rsp or above) and mix
# bar v0 with baz v1 in it.
BASE = """
volatile long zero;
__attribute__((noinline)) long bar(void) { return 5 + zero; }
__attribute__((noinline)) long baz(long f) { return f + zero; }
__attribute__((noinline)) long foo(void) { return bar() + zero; }
__attribute__((noinline)) long helper(long f) { long x = baz(f); lpemu_yield(); return x + zero; }
long user_entry(long i) { long f = foo(); lpemu_sleep(2); return helper(f) + zero; }
"""
PATCH = """
extern volatile long zero;
__attribute__((noinline)) long bar(void) { return 5000 + zero; }
__attribute__((noinline)) long baz(long f) { return f / 1000 + zero; }
"""


def run(compile_c, model_name):
    base = compile_c(BASE, cflags=["-O1"])
    m = Machine(base, cpus=1, quantum=200)
    m.add_task("user", "user_entry", (0,))
    img = compile_c(PATCH, name="patch", base=m.module_base(), link_against=base, keep={"bar", "baz"})
    m.load(img)
    model = make_model(model_name, m)
    patch = model.add(make_patch(m, "p1", img, ["bar", "baz"]))
    for name in ("foo", "bar", "baz"):
        m.watch(m.function(name))
    m.at(500, lambda: model.enable(patch))
    m.run(until=m.seconds(2.5))
    return m, model


def test_a_function_unit_ends_at_its_return_not_at_a_later_shallower_entry(compile_c):
    m, model = run(compile_c, "livepatch")
    assert model.transitions[0].result == "completed"
    ids = {m.function(n).id: n for n in ("foo", "bar", "baz")}
    acts = [a for a in oracle.activations(m.trace, m.now) if a.task == 0]
    foo = [a for a in acts if ids.get(a.function) == "foo" and a.finished]
    assert foo
    for a in foo:
        # the exit that ended it is foo's own return, with nothing after bar's return inside
        end = m.trace[a.exit]
        assert end[1] == core.EV_RETURN and end[3] == a.function and end[0] == a.end
        inside = [e for e in m.trace[a.entry + 1:a.exit] if e[1] == core.EV_ENTRY]
        assert [ids[e[3]] for e in inside] == ["bar"]
    # baz v1 was called from helper after foo #1 returned: no foo unit mixes versions
    assert any(ids[e[3]] == "baz" and e[4] == 1 for e in m.trace if e[1] == core.EV_ENTRY)
    assert oracle.check(m, list(model.patches), model.transitions, unit="foo") == []


def test_activations_nest_and_every_exit_closes_the_innermost(compile_c):
    m, model = run(compile_c, "stop_machine")
    acts = oracle.activations(m.trace, m.now)
    for a in acts:
        assert a.start <= a.end and a.entry < a.exit
        if a.finished:
            e = m.trace[a.exit]
            assert e[1] in (core.EV_RETURN, core.EV_UNWOUND, core.EV_KERNEL_EXIT, core.EV_ENTRY)
    # activations of one task nest or follow each other
    by_task = {}
    for a in acts:
        by_task.setdefault(a.task, []).append(a)
    for task_acts in by_task.values():
        for x in task_acts:
            for y in task_acts:
                if x.entry < y.entry < x.exit:
                    assert y.exit <= x.exit
