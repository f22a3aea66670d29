"""Where the other CPUs stand when kernel work runs is not fixed by the
quantum. Written from what an IPI does: text_poke_bp's sync interrupts each
CPU wherever it is, so under the immediate model a task on another CPU can
be between parse() and reply() of one system call when the sites change,
and run the old parse() with the new reply(). With slices of a fixed
length that divides the tasks' loop, every slice ended at the same point of
the call and no run ever found that mix (a heldout scenario: 0 of 80)."""
from emu.runs import scenario
from emu.runs.fuzz import Runner

BASE = """
#include "lpemu.h"
volatile long zero;
long served[8];
__attribute__((noinline)) long parse(long req) { return (req & 7) + zero; }
__attribute__((noinline)) long reply(long v) { lpemu_observe(1, v); return v; }
__attribute__((noinline)) long handle(long req)
{
    long v = parse(req), i, s = 0;
    for (i = 0; i < 8; i++)
        s += i ^ zero;
    return reply(v) + s;
}
long user_entry(long id)
{
    served[id & 7] += handle(id + served[id & 7]);
    return 0;
}
"""
PATCH = """
#include "lpemu.h"
extern volatile long zero;
__attribute__((noinline)) long parse(long req) { return 1000 + (req & 7) + zero; }
__attribute__((noinline)) long reply(long v) { lpemu_observe(1, v - 1000); return v - 1000; }
"""
TOML = """
[program]
sources = ["base.c"]
[machine]
cpus = 4
quantum = 300
preempt = "voluntary"
[[task]]
name = "u"
entry = "user_entry"
args = ["{i}"]
count = 8
[[patch]]
name = "fmt"
sources = ["patch.c"]
functions = ["parse", "reply"]
[[action]]
at = 30000
do = "enable"
patch = "fmt"
[check]
unit = "syscall"
observe = { 1 = "value >= 0 and value < 8" }
[fuzz]
horizon = 2.0
"""


def test_immediate_finds_a_task_between_two_calls_of_one_unit(tmp_path):
    (tmp_path / "base.c").write_text(BASE)
    (tmp_path / "patch.c").write_text(PATCH)
    (tmp_path / "s.toml").write_text(TOML)
    with Runner(scenario.build(scenario.load(tmp_path / "s.toml"))) as r:
        results = [r.execute(r.plan("immediate", seed)) for seed in range(16)]
    assert all(res.fault is None for res in results)
    mixed = [res for res in results if res.inconsistent]
    assert mixed, "no run caught a task between parse() and reply() as the sites changed"
    assert len(mixed) < len(results), "some runs change the text while no task is mid-call"
