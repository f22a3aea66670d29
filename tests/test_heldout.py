"""Held-out scenarios (tests/data/heldout/), written from the kernel's
semantics before the tool ran them: each scenario's header says what every
model must give and why (kernel/livepatch/transition.c, core.c, shadow.c;
kpatch's kmod/core/core.c; the kGraft series; Ksplice). The tests hold the
emulator to those answers, and the regressions below are the places where it
once gave another."""
import pytest

from emu.kernel.patch import make_patch
from emu.machine.machine import Machine
from emu.models import make_model

# ---- regressions ---------------------------------------------------------------------

BUSY = """
volatile long sink;
__attribute__((noinline)) long f(long x) { return x + sink; }
long user_entry(long t) { for (long i = 0; i < 20; i++) sink += i; sink += f(t); lpemu_sleep(t); return 0; }
"""
BUSY_PATCH = """
extern volatile long sink;
__attribute__((noinline)) long f(long x) { return x + sink + 1; }
"""


def test_a_busy_cpus_idle_task_is_not_running_and_switches_by_its_stack(compile_c):
    """klp_try_complete_transition() tries every CPU's idle task with
    klp_try_switch_task(), which refuses only task_curr(). A CPU whose run
    queue always holds a runnable task never runs its idle task: the idle
    task sleeps in schedule() and passes the stack check. A CPU that is
    merely between two tasks of its queue (the previous one went to sleep)
    is in the scheduler, not idle; taking it for idle made every check
    miss that idle task and the transition stalled forever."""
    base = compile_c(BUSY)
    m = Machine(base, cpus=4, quantum=300)
    for i in range(32):                          # more work than four CPUs do
        m.add_task(f"u{i}", "user_entry", (1 + (i & 3),), cpu=i % 4)
    img = compile_c(BUSY_PATCH, name="p", base=m.module_base(), link_against=base, keep={"f"})
    m.load(img)
    lp = make_model("livepatch", m)
    patch = lp.add(make_patch(m, "p", img, ["f"]))
    m.at(60_000, lambda: lp.enable(patch))
    m.run(until=m.seconds(4))
    assert lp.transitions[0].result == "completed", lp.transitions[0].blockers


FREEZER = """
volatile long sink;
__attribute__((noinline)) long scan(long n) { return n + sink; }
long freezer(long t) { for (;;) { sink += scan(t); lpemu_sleep_freezable(t); } }
"""


def test_a_freezable_sleep_works_before_any_model_is_attached(compile_c):
    """wait_event_freezable() is the kernel's own primitive: a kthread
    sleeping freezably before any patch exists (a scenario's prefix, the
    window probe) sleeps; it faulted with "unknown hypercall 11" because
    only a model registered its handler."""
    m = Machine(compile_c(FREEZER), cpus=1)
    m.add_task("freezer", "freezer", (2,), kind="kthread")
    m.run(until=m.seconds(0.5))                  # a fault would raise here
    assert m.now >= m.seconds(0.5)


FREEZER_PATCH = """
extern volatile long sink;
__attribute__((noinline)) long scan(long n) { return n + sink + 1; }
"""


def test_kgraft_migrating_a_kthread_at_its_freezable_sleep_keeps_its_promise(compile_c):
    """wait_event_freezable() passes try_to_freeze(), kGraft's kthread safe
    point: the kthread migrates there, and its unit ends there. The promise
    oracle saw no unit end and reported scan v0 and scan v1 in one unit as
    the model's breach."""
    from emu.runs.verdicts import verdicts
    base = compile_c(FREEZER)
    m = Machine(base, cpus=1)
    m.add_task("freezer", "freezer", (2,), kind="kthread")
    img = compile_c(FREEZER_PATCH, name="p", base=m.module_base(), link_against=base, keep={"scan"})
    m.load(img)
    kg = make_model("kgraft", m)
    patch = kg.add(make_patch(m, "p", img, ["scan"]))
    m.at(m.seconds(0.1), lambda: kg.enable(patch))
    m.run(until=m.seconds(3))
    assert kg.transitions[0].result == "completed"
    checked = verdicts(m, [patch], spec_model="kgraft")
    assert checked.breaches == 0, checked.promise
