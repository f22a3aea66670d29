"""Where kernel work runs (emu/machine/works.py), held to the kernel's
semantics (kernel/livepatch/transition.c, kernel/stop_machine.c):

- klp_try_switch_task() refuses a task that is task_curr(): without full
  preemption, a task in a long kernel loop on another CPU is "running" at
  every attempt and is never stack-checked or switched in the middle of it;
- a CPU-bound kthread that calls cond_resched() outside the patched code
  switches itself there (klp_cond_resched, kernels 6.4 to 6.15), never by
  another CPU's check;
- an idle CPU's idle task is running: the first attempt cannot switch it,
  wake_up_if_idle() sends it through the idle loop, which switches it, and
  the transition completes at a later attempt;
- stop_machine waits for every CPU to schedule its stopper thread: its pause
  grows with the longest kernel loop without a scheduling point, unless full
  preemption lets the stopper preempt the loop.
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.engine import core
from emu.kernel.patch import make_patch
from emu.machine.machine import Delay, Machine
from emu.machine.task import PATCHED
from emu.machine.works import WORK_COST
from emu.models import kgraft, make_model
from emu.models.livepatch import transition

BASE = """
volatile long sink;
__attribute__((noinline)) long other(long x) { return x + sink; }
__attribute__((noinline)) void spin(long n) { for (long i = 0; i < n; i++) sink += i; }
/* a user task: one long kernel loop per system call, no scheduling point in it */
long looper_entry(long n) { spin(n); return 0; }
/* a CPU-bound kthread: patched work, then cond_resched() outside it */
__attribute__((noinline)) long work(long n) { spin(n); return other(n); }
long cpubound_entry(long n) { for (;;) { sink = work(n); lpemu_yield(); } }
/* a kthread: a loop of n without a scheduling point, then cond_resched() */
long spinner_entry(long n) { for (;;) { spin(n); lpemu_yield(); } }
long sleeper_entry(long t) { for (;;) lpemu_sleep(t); }
"""
PATCH = """
extern volatile long sink;
__attribute__((noinline)) long other(long x) { return x + sink + 1; }
__attribute__((noinline)) long work(long n) { return other(n); }
"""


def machine(compile_c, *, preempt, cpus=2, quantum=1000, funcs=("other",)):
    base = compile_c(BASE)
    m = Machine(base, cpus=cpus, quantum=quantum, preempt=preempt, tick=1000, hz=100)
    img = compile_c(PATCH, name="patch", base=m.module_base(), link_against=base, keep=set(funcs))
    m.load(img)
    return m, img


def add_patch(m, img, model, funcs=("other",), **opts):
    mod = make_model(model, m, **opts)
    patch = mod.add(make_patch(m, "p", img, list(funcs)))
    return mod, patch


@pytest.mark.parametrize("preempt", ["none", "voluntary"])
def test_a_task_in_a_long_kernel_loop_on_another_cpu_is_running_at_every_attempt(compile_c, preempt):
    # The looper spins ~5 s of virtual time per system call on CPU 1; CPU 0
    # is free for the transition's work. `other` is nowhere on its stack, so
    # only "running" can keep it from switching.
    m, img = machine(compile_c, preempt=preempt)
    looper = m.add_task("looper", "looper_entry", (120_000,), cpu=1)
    m.add_task("sleeper", "sleeper_entry", (1,), cpu=0)
    mod, patch = add_patch(m, img, "livepatch")
    exits = []
    m.at(m.seconds(0.5), lambda: mod.enable(patch))
    m.run(until=m.seconds(12), stop_when=lambda: exits.append(looper.kernel_entries) or False)
    t = mod.transitions[0]
    assert t.result == "completed"
    how = [(when, h) for when, name, _, h in mod.switches if name == "looper"]
    assert how and how[0][1] == "kernel_exit", how
    # every attempt before its switch found it on its CPU
    assert t.attempts >= 3


@pytest.mark.parametrize("preempt", ["none", "voluntary"])
def test_tasks_are_checked_only_off_their_cpus(compile_c, preempt, monkeypatch):
    """Every stack check livepatch makes is of a task that is not on a CPU
    (asleep, or displaced at a scheduling point by the work itself)."""
    m, img = machine(compile_c, preempt=preempt, cpus=2)
    m.add_task("looper", "looper_entry", (30_000,), cpu=1)
    m.add_task("looper2", "looper_entry", (7_000,), cpu=0)
    m.add_task("sleeper", "sleeper_entry", (3,), cpu=0)
    mod, patch = add_patch(m, img, "livepatch")
    checked = []
    real_needs, real_check = transition.needs_check, transition.check_stack

    def seen(task):
        checked.append((task.name, any(c.current is task for c in m.cpus), task.preempted))

    def needs_spy(lp, task):
        # try_complete checks the stacks of the tasks that need it in one batch
        needed = real_needs(lp, task)
        if needed:
            seen(task)
        return needed

    def check_spy(lp, task):
        seen(task)
        return real_check(lp, task)
    monkeypatch.setattr(transition, "needs_check", needs_spy)
    monkeypatch.setattr(transition, "check_stack", check_spy)
    m.at(m.seconds(0.2), lambda: mod.enable(patch))
    m.run(until=m.seconds(8))
    assert mod.transitions[0].result == "completed"
    assert checked
    # from another CPU: never a task on a CPU, never one stopped between two
    # instructions (cond_resched checks the task's own stack: on its CPU, at a scheduling point)
    assert not [c for c in checked if c[2]], checked


def test_a_cpu_bound_kthread_switches_at_its_cond_resched_with_a_spare_cpu(compile_c):
    m, img = machine(compile_c, preempt="voluntary", funcs=("work",))
    k = m.add_task("cpubound", "cpubound_entry", (3_000,), kind="kthread", cpu=1)
    mod, patch = add_patch(m, img, "livepatch", funcs=("work",), kernel="6.8")   # klp_cond_resched: 6.4 to 6.15
    m.at(m.seconds(0.2), lambda: mod.enable(patch))
    m.run(until=m.seconds(5))
    t = mod.transitions[0]
    assert t.result == "completed"
    assert k.patch_state == PATCHED or t.completed_at is not None
    how = [h for _, name, _, h in mod.switches if name == "cpubound"]
    # always on its CPU, which the work never takes (CPU 0 is spare): it
    # switches itself at cond_resched, outside work()
    assert how == ["cond_resched"]


def test_an_idle_cpus_idle_task_needs_a_second_attempt(compile_c):
    m, img = machine(compile_c, preempt="voluntary", cpus=2)
    m.add_task("sleeper", "sleeper_entry", (10_000,), cpu=0)
    mod, patch = add_patch(m, img, "livepatch")
    m.at(m.seconds(0.2), lambda: mod.enable(patch))
    m.run(until=m.seconds(5))
    t = mod.transitions[0]
    assert t.result == "completed" and t.attempts == 2
    how = {name: h for _, name, _, h in mod.switches}
    # the work ran on CPU 0 (idle: the lowest), so swapper/0 was not running
    # and its stack was checked; swapper/1 was running, and switched in its idle loop
    assert how["swapper/0"] == "stack" and how["swapper/1"] == "idle"
    assert how["sleeper"] == "stack"


def _pause(compile_c, preempt, n):
    m, img = machine(compile_c, preempt=preempt, cpus=2, quantum=500)
    m.add_task("spinner", "spinner_entry", (n,), kind="kthread", cpu=1)
    m.add_task("sleeper", "sleeper_entry", (5,), cpu=0)
    mod, patch = add_patch(m, img, "stop_machine")
    m.at(m.seconds(0.3), lambda: mod.enable(patch))
    m.run(until=m.seconds(20), stop_when=lambda: m.last_stop_machine is not None, every_slice=False)
    requested, stopped, released = m.last_stop_machine
    return stopped - requested


@pytest.mark.parametrize("preempt", ["none", "voluntary"])
def test_stop_machines_pause_grows_with_the_longest_loop_without_a_scheduling_point(compile_c, preempt):
    waits = [_pause(compile_c, preempt, n) for n in (1_000, 10_000, 100_000)]
    assert waits[0] < waits[1] < waits[2], waits
    # an iteration is several instructions: the wait is of the order of the
    # loop (up to one whole loop), not of a slice
    assert 100_000 < waits[2] < 20 * 100_000, waits


def test_with_full_preemption_the_stoppers_do_not_wait_for_the_loop(compile_c):
    waits = [_pause(compile_c, "full", n) for n in (1_000, 100_000)]
    assert waits[1] < 10_000, waits


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2_000, 40_000), cpus=st.integers(1, 3), preempt=st.sampled_from(["none", "voluntary"]),
       at=st.integers(1_000, 200_000), model=st.sampled_from(["livepatch", "kgraft", "stop_machine"]))
def test_no_task_is_switched_by_another_cpus_check_while_on_its_cpu(compile_c, n, cpus, preempt, at, model):
    """Generated: loopers on every CPU, any model. Whenever a model's work
    switches a task by checking its stack, that task is off every CPU."""
    m, img = machine(compile_c, preempt=preempt, cpus=cpus)
    for k in range(cpus):
        m.add_task(f"looper{k}", "looper_entry", (n + 977 * k,), cpu=k)
    mod, patch = add_patch(m, img, model)
    seen = []
    real = m.set_patch_state

    def spy(task, state, route="init"):
        if state == PATCHED and task.patch_state != state and not task.is_idle and m.works.cpu is not None:
            seen.append((task.name, any(c.current is task for c in m.cpus)))
        return real(task, state, route)
    m.set_patch_state = spy
    m.at(at, lambda: mod.enable(patch))
    m.run(until=at + m.seconds(4))
    assert not [s for s in seen if s[1]], seen


KG_BASE = """
volatile long sink;
__attribute__((noinline)) long f(long x) { return x + sink; }
__attribute__((noinline)) long g(long x) { return x * 2 + sink; }
__attribute__((noinline)) void spin(long n) { for (long i = 0; i < n; i++) sink += i; }
long looper_entry(long n) { spin(n); return 0; }
long caller_entry(long n) { long a = f(n); spin(50); return g(a); }
"""
KG_PATCH = """
extern volatile long sink;
__attribute__((noinline)) long f(long x) { return x + sink + 1; }
__attribute__((noinline)) long g(long x) { return x * 2 + sink + 1; }
"""


@pytest.mark.parametrize("preempt", ["none", "full"])
def test_kgraft_tasks_do_not_migrate_before_the_work_has_its_cpu(compile_c, preempt):
    """Regression (generated scenario 157): kGraft's write makes every task
    migrate only after the text is done, even when the work that changes the
    text waits for its CPU; every system call runs in one universe."""
    base = compile_c(KG_BASE)
    m = Machine(base, cpus=2, quantum=1000, preempt=preempt, tick=1000, hz=100)
    img = compile_c(KG_PATCH, name="patch", base=m.module_base(), link_against=base, keep={"f", "g"})
    m.load(img)
    m.add_task("looper", "looper_entry", (4_000,), cpu=0)
    caller = m.add_task("caller", "caller_entry", (3,), cpu=1)
    mod = make_model("kgraft", m)
    patch = mod.add(make_patch(m, "p", img, ["f", "g"]))
    fns = {m.function("f").id: "f", m.function("g").id: "g"}
    for fid in fns:
        m.watch(next(fn for fn in m.functions if fn.id == fid))
    m.at(30_000, lambda: mod.enable(patch))
    m.run(until=m.seconds(8))
    assert mod.transitions[0].result == "completed"
    units, unit = [], []
    for e in m.trace:
        if e.task != caller.tid:
            continue
        if e.kind == core.EV_ENTRY and e.func in fns:
            unit.append(e.version)
        elif e.kind == core.EV_KERNEL_EXIT:
            units.append(unit)
            unit = []
    assert len(units) > 20
    assert [u for u in units if len(set(u)) > 1] == []
    assert units[0] == [0, 0] and units[-1] == [patch.index, patch.index]


def _ticker(period: int):
    """A kernel thread woken by a timer every `period` instructions (a
    delayed work that requeues itself), one step per wake-up."""
    while True:
        yield Delay(period)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(slack=st.integers(0, 400), per_cpu=st.integers(1, 3), cpus=st.integers(2, 3),
       preempt=st.sampled_from(["none", "voluntary", "full"]), sched=st.sampled_from(["c", "python"]))
def test_kernel_work_waking_often_leaves_its_cpu_to_the_tasks_between_its_runs(
        compile_c, slack, per_cpu, cpus, preempt, sched):
    """Generated: a kernel thread waking more often than once a quantum,
    while every CPU has tasks; each run costs it WORK_COST, at most half of
    its CPU's time (virtual time counts every CPU's instructions). When it
    sleeps again, __schedule() (kernel/sched/core.c) picks the CPU's next
    runnable task at once (pick_next_task: the idle class only when nothing
    else is runnable), so the tasks of the CPU it runs on keep running
    between its runs: every task goes on making system calls."""
    period = 2 * WORK_COST * cpus + slack
    base = compile_c(BASE)
    m = Machine(base, cpus=cpus, quantum=1000, preempt=preempt, tick=1000, hz=100, sched=sched)
    tasks = [m.add_task(f"looper{k}", "looper_entry", (120 + 37 * k,), cpu=k % cpus)
             for k in range(cpus * per_cpu)]
    m.run(until=20_000)
    before = [t.kernel_entries for t in tasks]
    m.spawn(_ticker(period))
    m.run(until=m.now + m.seconds(0.6))
    gained = {t.name: t.kernel_entries - b for t, b in zip(tasks, before)}
    assert min(gained.values()) >= 2, gained


@pytest.mark.parametrize("preempt", ["voluntary", "full"])
def test_kgraft_completes_with_checks_more_often_than_a_round_of_slices(compile_c, monkeypatch, preempt):
    """kGraft's check (a delayed work) every 0.005 s, shorter than the other
    CPU's slice: the tasks on the CPU the check runs on still reach their
    kernel exits between two checks, so every task migrates and the
    transition completes (the loop used to give that CPU's every turn to
    the check, and the transition stayed pending)."""
    monkeypatch.setattr(kgraft, "KGR_TIMEOUT", 0.005)
    m, img = machine(compile_c, preempt=preempt, cpus=2)
    for k in range(4):
        m.add_task(f"looper{k}", "looper_entry", (300,), cpu=k % 2)
    mod, patch = add_patch(m, img, "kgraft")
    m.at(20_000, lambda: mod.enable(patch))
    m.run(until=m.seconds(3), stop_when=lambda: mod.transitions and mod.transitions[0].result != "pending")
    t = mod.transitions[0]
    assert t.result == "completed", [x.name for x in m.tasks if x.pending]


@pytest.mark.parametrize("preempt", ["none", "voluntary", "full"])
@pytest.mark.parametrize("kernel,switches", [("6.3", False), ("6.4", True), ("6.15", True), ("6.16", False)])
def test_cond_resched_is_a_switch_point_in_every_preemption_mode_from_6_4_to_6_15(compile_c, preempt, kernel,
                                                                                  switches):
    """include/linux/sched.h (6.4 to 6.15): _cond_resched() calls
    klp_sched_try_switch() whatever the preemption model: before
    __cond_resched() without CONFIG_PREEMPTION, alone with it (where
    cond_resched() schedules nothing), and through the cond_resched static
    call that sched_dynamic_klp_enable() points at klp_cond_resched() with
    PREEMPT_DYNAMIC, in every mode. A CPU-bound kthread on its own CPU (the
    work runs on the spare one, never preempting it) switches itself there;
    before 6.4 and from 6.16 nothing switches it."""
    m, img = machine(compile_c, preempt=preempt, funcs=("work",))
    m.add_task("cpubound", "cpubound_entry", (3_000,), kind="kthread", cpu=1)
    mod, patch = add_patch(m, img, "livepatch", funcs=("work",), kernel=kernel)
    m.at(m.seconds(0.2), lambda: mod.enable(patch))
    m.run(until=m.seconds(3.5))
    t = mod.transitions[0]
    how = [h for _, name, _, h in mod.switches if name == "cpubound"]
    if switches:
        assert t.result == "completed" and how == ["cond_resched"]
    else:
        assert t.result == "pending" and how == []
        assert dict(t.blockers)["cpubound"][-1] == "(running)"
