"""The scheduler loop in C and its Python twin give the same runs, on the
models' scenarios and on hostile task mixes; snapshots restore a machine to
the same run."""
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from emu.app import demo
from emu.runs import scenario
from emu.errors import GuestFault
from emu.runs.fuzz import Runner, RunSpec
from emu.machine.machine import Machine
from emu.machine.works import Delay, Release, StopMachine, Sync
from emu.machine.policy import make_policy
from emu.machine.task import RunState

# Each task follows a script drawn from its seed: sleeps of every length
# (negative: until woken), interruptible or not, yields, busy loops without a scheduling point,
# safe points, observations, a rare exit; sometimes a fault.
HOSTILE = """
volatile long sink;
static unsigned long next(unsigned long *s) { *s = *s * 6364136223846793005UL + 1442695040888963407UL; return *s >> 33; }
__attribute__((noinline)) void spin(long n) { for (long i = 0; i < n; i++) sink += i; }
__attribute__((noinline)) long step(unsigned long *s, long faults)
{
    unsigned long r = next(s);
    switch (r % 8) {
    case 0: return (r >> 12) & 1 ? lpemu_sleep_uninterruptible((long)(r >> 4) % 6 - 1)
                             : lpemu_sleep((long)(r >> 4) % 6 - 1);
    case 1: lpemu_yield(); return 0;
    case 2: spin((long)(r >> 4) % 400); return 0;
    case 3: lpemu_safe_point(); return 0;
    case 4: lpemu_observe(1, (long)r); return 0;
    case 5: if ((r >> 4) % 64 == 0) lpemu_exit((long)(r >> 10) % 5); return 0;
    case 6: if (faults && (r >> 4) % 97 == 0) return *(volatile long *)8; return 0;
    default: spin(3); return 0;
    }
}
long user_entry(long seed, long faults)
{
    static unsigned long state[64];
    unsigned long *s = &state[seed & 63];
    if (!*s) *s = (unsigned long)seed * 2654435761UL + 1;
    for (int i = (int)(next(s) % 4); i >= 0; i--)
        step(s, faults);
    return 0;
}
long kthread_entry(long seed, long faults)
{
    unsigned long s = (unsigned long)seed * 40503UL + 7;
    for (;;)
        step(&s, faults);
}
"""


class Watcher:
    """A model-like listener: hooks only for pending tasks, and it clears a
    pending flag now and then (as a task switches)."""
    pending_only = True

    def __init__(self, m, log):
        self.m, self.log = m, log
        self.hooks_inert = False       # a "quiet" timer flips it: its hooks then do nothing

    def _hook(self, what, task):
        if self.hooks_inert:
            return
        self.log.append((self.m.now, what, task.tid))
        if (self.m.now + task.tid) % 3 == 0:
            task.pending = False

    def on_kernel_exit(self, task):
        self._hook("exit", task)

    def on_safe_point(self, task):
        self._hook("safe", task)

    def on_cond_resched(self, task):
        self._hook("resched", task)

    def on_idle(self, cpu, idle):
        self._hook("idle", idle)


class Everything(Watcher):
    """A listener that wants every switch point."""
    pending_only = False


class Yields(Watcher):
    """A listener that wants every task's cond_resched() (the probe's
    Passes) and the pending tasks' other switch points."""
    every_cond_resched = True


def hostile_work(m, log, plan):
    """Kernel work with waits drawn by hypothesis; each step records the CPU
    it occupies and what every CPU runs, and checks the rules of where
    kernel work runs (works.py): the CPUs it holds run no task, and without
    full preemption no task off its CPU was stopped between two
    instructions."""
    for wait in plan:
        held = [c for c in m.cpus if m.works.occupies(c.index)]
        log.append((m.now, "work", m.works.cpu, tuple(-1 if c.current is None else c.current.tid for c in m.cpus)))
        assert held and all(c.current is None for c in held), "kernel work shares its CPU with a task"
        if m.preempt != "full":
            assert not [t for t in m.tasks if t.preempted and all(c.current is not t for c in m.cpus)], \
                "a task was preempted in kernel code without full preemption"
        if wait == "sync":
            yield Sync()
        elif wait == "stop":
            yield StopMachine()
            log.append((m.now, "stopped", tuple(-1 if c.current is None else c.current.tid for c in m.cpus)))
            yield Delay(30)
            yield Release()
        else:
            yield Delay(wait)


def run_mix(image, sched, *, tasks, cpus, quantum, tick, preempt, policy, seed, watcher, timers, until,
            stop_every, works=(), jitter=None):
    m, log = mix_machine(image, sched, tasks=tasks, cpus=cpus, quantum=quantum, tick=tick, preempt=preempt,
                         policy=policy, seed=seed, watcher=watcher, timers=timers, works=works, jitter=jitter)
    out = None
    try:
        if stop_every == "watch":
            # the fuzz observer's way: come back when a watched task (here
            # every task but the last, from the first timer on) leaves its CPU
            looks = []
            m.run(until=until, stop_when=lambda: looks.append(m.now) and False,
                  watch=lambda: [t.tid for t in m.tasks[:-1]] if m.now >= (timers[0][0] if timers else 0) else ())
            log.append(("looks", len(looks)))
        elif stop_every:
            left = [stop_every]
            while m.now < until and any(t.state is not RunState.EXITED for t in m.tasks):
                before = m.now

                def enough():
                    left[0] -= 1
                    return left[0] <= 0
                left[0] = stop_every
                m.run(until=until, stop_when=enough)
                if m.now == before and left[0] > 0:
                    break
        else:
            m.run(until=until)
    except GuestFault as exc:
        out = str(exc)
    m.drain()
    result = (m.trace.raw(), m.log, log, out, m.now, m.preemptions,
              [(t.state, t.wake_at, t.kernel_entries, t.exit_code, t.preempted, t.need_resched)
               for t in m.tasks], [(c.slices, c.current and c.current.tid) for c in m.cpus])
    m.engine.close()
    return result


def mix_machine(image, sched, *, tasks, cpus, quantum, tick, preempt, policy, seed, watcher, timers,
                works=(), jitter=None):
    """A machine of a hostile mix, its timers and works set, and the log they write."""
    m = Machine(image, cpus=cpus, quantum=quantum, tick=tick, preempt=preempt, sched=sched,
                lockup_ticks=50, policy=make_policy(policy, seed, len(tasks)))
    for k, (kind, tseed) in enumerate(tasks):
        m.add_task(f"t{k}", f"{kind}_entry", [tseed, seed & 1], kind=kind)
    log = []
    if jitter is not None:          # seeded slice lengths (Machine.vary_slices) from the first timer on
        m.at(0, lambda: m.vary_slices(jitter))
    if watcher:
        m.listeners.append({"all": Everything, "yields": Yields}.get(watcher, Watcher)(m, log))
    for when, k, what in timers:
        task = m.tasks[k % len(m.tasks)]

        def fire(task=task, what=what):
            log.append((m.now, "timer", what, task.tid))
            if what == "pend":
                task.pending = True
            elif what == "idle":
                m.cpus[task.tid % cpus].idle.pending = True
            elif what == "signal":
                m.signal(task)
            elif what == "quiet":
                for lst in m.listeners:
                    lst.hooks_inert = not lst.hooks_inert
        m.at(when, fire)
    for k, (when, plan) in enumerate(works):
        if k:       # stop_machine is one at a time (the kernel's callers queue; Works refuses nesting)
            plan = ["sync" if w == "stop" else w for w in plan]
        m.at(when, lambda plan=plan: m.spawn(hostile_work(m, log, plan)))
    return m, log


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    from emu.images.build import build_c
    src = tmp_path_factory.mktemp("hostile") / "hostile.c"
    src.write_text('#include "lpemu.h"\n' + HOSTILE)
    return build_c([src], base=0x400000, name="hostile")


mixes = st.fixed_dictionaries({
    "tasks": st.lists(st.tuples(st.sampled_from(["user", "kthread"]), st.integers(0, 2**31)),
                      min_size=1, max_size=6),
    "cpus": st.integers(1, 3),
    "quantum": st.sampled_from([1, 7, 50, 333, 1000]),
    "tick": st.sampled_from([1, 100, 1000]),
    "preempt": st.sampled_from(["none", "voluntary", "full"]),
    "policy": st.sampled_from(["rr", "random", "pct"]),
    "seed": st.integers(0, 2**16),
    "watcher": st.sampled_from([None, "pending", "all", "yields"]),
    "timers": st.lists(st.tuples(st.integers(0, 60_000), st.integers(0, 5),
                                 st.sampled_from(["pend", "idle", "signal", "quiet"])), max_size=6),
    "until": st.integers(1, 80_000),
    "stop_every": st.sampled_from([0, 0, 3, "watch"]),
    "works": st.lists(st.tuples(st.integers(0, 60_000),
                                st.lists(st.sampled_from([0, 1, 700, 5_000, "sync", "stop"]), max_size=4)),
                      max_size=3),
    "jitter": st.one_of(st.none(), st.integers(0, 2**64)),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mix=mixes)
def test_c_scheduler_and_python_twin_agree_on_hostile_mixes(hostile, mix):
    c = run_mix(hostile, "c", **mix)
    py = run_mix(hostile, "python", **mix)
    assert c[0] == py[0]          # every event, packed
    assert c[1:] == py[1:]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mix=mixes, start=st.integers(0, 40_000), sched=st.sampled_from(["c", "python"]))
def test_watching_who_leaves_a_cpu_meets_each_task_where_every_slice_does(hostile, mix, start, sched):
    """The fuzz observer's cadence (Machine.run's watch): from `start` on,
    each task is met the first time it is seen off its CPU, and it is
    watched until then. Coming back only when a watched task left its CPU
    meets every task in the same place (its stack) as looking after every
    slice, and the run is the same run."""
    mix = {k: v for k, v in mix.items() if k not in ("until", "stop_every")}
    out = {}
    for how in ("every slice", "watch"):
        m, log = mix_machine(hostile, sched, **mix)
        met: dict[int, tuple] = {}
        started = []
        # it starts at a timer, as a transition starts in a step of kernel
        # work: Python is there to meet the tasks off their CPUs then
        m.at(start, lambda: started.append(m.now))

        def look():
            if started:
                on = {c.current.tid for c in m.cpus if c.current is not None}
                for t in m.tasks:
                    if t.tid not in met and t.tid not in on:
                        met[t.tid] = (t.state, m.stack(t))
            return False

        def unmet():
            return [t.tid for t in m.tasks if t.tid not in met] if started else ()
        fault = None
        try:
            if how == "watch":
                m.run(until=start + 40_000, stop_when=look, watch=unmet)
            else:
                m.run(until=start + 40_000, stop_when=look, every_slice=True)
        except GuestFault as exc:
            fault = str(exc)
        m.drain()
        out[how] = (met, m.trace.raw(), log, fault)
        m.engine.close()
    assert out["watch"] == out["every slice"]


class Inert(Watcher):
    """A listener whose hooks do nothing (kGraft's while its code changes),
    saying so (hooks_inert) or not."""

    def _hook(self, what, task):
        pass


# A hook's return at a cond_resched whose slice (quantum 1) had no budget
# left, with a sleeper due at that instruction: Python woke it before the
# slice ended, where a run straight through ends the slice first.
ENDS_FIRST = {"tasks": [("kthread", 0), ("user", 0), ("kthread", 0)], "cpus": 1, "quantum": 1, "tick": 100,
              "preempt": "full", "policy": "rr", "seed": 0, "watcher": None, "timers": [], "until": 1,
              "stop_every": 0, "works": [], "jitter": None}

# A hook's return at a yield that spends the slice's budget, at the clock a
# work's Delay ends: the work asked for a CPU while the yielding task still
# held CPU 0, and got CPU 1; a run straight through ends the slice first,
# and the work gets CPU 0, idle by then.
DELAY_ENDS = {"works": [(16384, [700, 5000, 5000]), (309, [5000, "sync", 700, 0]), (160, [700, 5000, 5000])],
              "tasks": [("kthread", 1_304_609_206), ("user", 1), ("kthread", 458104), ("kthread", 11451),
                        ("kthread", 8815303), ("kthread", 17346452)],
              "preempt": "full", "timers": [(186, 0, "pend")], "jitter": 3220728, "quantum": 7, "seed": 28,
              "policy": "random", "tick": 100, "cpus": 2, "watcher": None, "until": 1, "stop_every": 0}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mix=mixes, sched=st.sampled_from(["c", "python"]))
@example(mix=ENDS_FIRST, sched="c")
@example(mix=ENDS_FIRST, sched="python")
@example(mix=DELAY_ENDS, sched="c")
@example(mix=DELAY_ENDS, sched="python")
def test_coming_back_to_python_does_not_change_the_run(hostile, mix, sched):
    """Machine.run: stopping and running on gives the run of running
    straight through. So must coming back to Python after every slice, when
    a watched task leaves its CPU, or for the hooks of a listener that does
    nothing, even where a timer falls due at the instruction a sleeper wakes
    (the wakes come first, wherever the loop is), or where the slice in
    progress ends before anything else (then the wakes and timers due come
    after its end)."""
    from emu.engine.core import EV_OBSERVE, EV_SLEEP
    mix = {k: v for k, v in mix.items() if k not in ("until", "stop_every", "watcher")}
    until = 40_000
    m, _ = mix_machine(hostile, sched, watcher=None, **mix)
    try:
        m.run(until=until)
    except GuestFault:
        pass
    m.drain()
    wakes = sorted({ev[3] for ev in m.trace.of_kind(EV_SLEEP) if 0 <= ev[3] < until})[:6]
    m.engine.close()
    runs = {}
    for how in ("straight", "every slice", "watch", "hooks called", "hooks inert"):
        m, log = mix_machine(hostile, sched, watcher=None, **mix)
        if how.startswith("hooks"):
            lst = Inert(m, log)
            lst.hooks_inert = how == "hooks inert"
            m.listeners.append(lst)
            for t in m.tasks:
                m.at(0, lambda t=t: setattr(t, "pending", True))
        for w in wakes:
            m.at(w, lambda w=w: m.emit(EV_OBSERVE, -1, w))
        fault = None
        try:
            if how == "every slice":
                m.run(until=until, stop_when=lambda: False, every_slice=True)
            elif how == "watch":
                m.run(until=until, stop_when=lambda: False, watch=lambda: [t.tid for t in m.tasks])
            else:
                m.run(until=until)
        except GuestFault as exc:
            fault = str(exc)
        m.drain()
        runs[how] = (m.trace.raw(), fault, m.now)
        m.engine.close()
    assert runs["every slice"] == runs["straight"]
    assert runs["watch"] == runs["straight"]
    assert runs["hooks inert"] == runs["hooks called"]


@pytest.mark.parametrize("model", demo.DEMO_MODELS)
@pytest.mark.parametrize("strategy", ["exhaustive", "random", "pct"])
def test_twins_agree_on_the_seed_under_every_model(model, strategy):
    prog = scenario.build(scenario.load(demo.VARIANTS["bar+baz"]))
    runs = {}
    for sched in ("c", "python"):
        runner = Runner(prog, sched=sched)
        runs[sched] = [runner.execute(runner.plan(model, seed, strategy=strategy)).to_json()
                       for seed in range(3)]
        runner.close()
    assert runs["c"] == runs["python"]


@pytest.mark.parametrize("model", ["kgraft", "livepatch"])
def test_twins_agree_on_uninterruptible_sleeps(model):
    """The sleep hypercall's second argument makes the sleep
    uninterruptible, in C and in the twin: fake signals leave it, kGraft's
    wake_up_process() of a kthread ends it (tests/data/heldout/signal-uninterruptible)."""
    from pathlib import Path
    prog = scenario.build(scenario.load(Path(__file__).parent / "data/heldout/signal-uninterruptible/scenario.toml"))
    runs = {}
    for sched in ("c", "python"):
        runner = Runner(prog, sched=sched)
        runs[sched] = runner.execute(runner.plan(model, 0)).to_json()
        runner.close()
    assert runs["c"] == runs["python"] and runs["c"]["outcome"] == "stalled"


def test_pooled_runs_equal_fresh_runs():
    """A run from a restored snapshot is the run a fresh machine makes."""
    prog = scenario.build(scenario.load(demo.VARIANTS["bar+baz"]))
    pooled = Runner(prog)
    specs = [pooled.plan(model, seed, strategy=strategy) for model in demo.DEMO_MODELS
             for seed in range(4) for strategy in ("exhaustive", "pct")]
    specs.append(RunSpec("livepatch", 9, "exhaustive", pooled.first_at + 7, tasks=("user0", "kthread")))
    for spec in specs + specs[::-1]:
        res, m, _ = Runner(prog).execute(spec, keep=True)
        m.engine.close()
        assert pooled.execute(spec).to_json() == res.to_json(), spec
    assert 1 <= pooled.pooled <= 4
    pooled.close()


def test_restore_puts_memory_contexts_and_sites_back(compile_c):
    img = compile_c("""
        long counter;
        __attribute__((noinline)) long bar(void) { return ++counter; }
        __attribute__((noinline)) long other(void) { return counter += 2; }
        long user_entry(long x) { bar(); other(); lpemu_sleep(1); return 0; }
    """)
    m = Machine(img, cpus=2, quantum=100)
    for k in range(3):
        m.add_task(f"t{k}", "user_entry", [k])
    m.watch(m.function("bar"))
    m.run(until=5_000)
    snap = m.snapshot()
    m.run(until=20_000)
    first = (m.trace.raw(), m.now)
    m.restore(snap)
    m.watch(m.function("other"))          # a site added after the snapshot ...
    m.run(until=20_000)
    assert m.trace.raw() != first[0]      # ... reports entries
    m.restore(snap)                       # and is gone after a restore
    m.run(until=20_000)
    assert (m.trace.raw(), m.now) == first
    m.load(compile_c("long f(void) { return 1; }", name="mod", base=0x1000000))
    with pytest.raises(RuntimeError, match="images were loaded"):
        m.restore(snap)
    m.engine.close()


def test_snapshot_refuses_a_machine_with_a_model_or_the_python_scheduler(compile_c):
    img = compile_c("long user_entry(long x) { lpemu_sleep(1); return 0; }")
    m = Machine(img, sched="python")
    m.add_task("t", "user_entry")
    m.run(until=1000)
    with pytest.raises(RuntimeError):
        m.snapshot()
    m.engine.close()


def test_a_scenario_that_loads_a_module_runs_on_fresh_machines(tmp_path):
    """A module load maps memory: such runs are not pooled, and a pooled
    runner gives the same results as fresh machines."""
    (tmp_path / "base.c").write_text('#include "lpemu.h"\nvolatile long zero;\n'
                                     '__attribute__((noinline)) long bar(void) { return 5 + zero; }\n'
                                     'long user_entry(long i) { lpemu_observe(1, bar()); lpemu_sleep(1); return 0; }\n')
    (tmp_path / "mod.c").write_text('#include "lpemu.h"\nlong helper(long x) { return x + 1; }\n')
    (tmp_path / "patch.c").write_text('#include "lpemu.h"\nextern volatile long zero;\n'
                                      '__attribute__((noinline)) long bar(void) { return 5000 + zero; }\n')
    (tmp_path / "scenario.toml").write_text('''
[program]
sources = ["base.c"]
[machine]
cpus = 2
[[task]]
name = "user"
entry = "user_entry"
count = 2
[[module]]
name = "mod"
sources = ["mod.c"]
loaded = false
[[patch]]
name = "p"
sources = ["patch.c"]
[[action]]
at = 5000
do = "load"
module = "mod"
[[action]]
at = 6000
do = "enable"
patch = "p"
''')
    prog = scenario.build(scenario.load(tmp_path / "scenario.toml"))
    with Runner(prog) as pooled:
        for model in demo.DEMO_MODELS:
            for seed in range(2):
                spec = pooled.plan(model, seed, strategy="exhaustive")
                res, m, _ = Runner(prog).execute(spec, keep=True)
                assert "mod" in {img.name for img in m.images}
                m.engine.close()
                assert pooled.execute(spec).to_json() == res.to_json()
        assert not pooled.pooled


def _sched_machine(compile_c, cpus=2):
    img = compile_c("long user_entry(long x) { lpemu_sleep(1); return 0; }")
    m = Machine(img, cpus=cpus)
    m.add_task("t", "user_entry")
    m.run(until=1000)
    return m


# (record, field, value) that C must refuse: an index out of range, a state or
# kind that does not exist, a CPU the machine does not have, a flag not 0/1.
BAD_FIELDS = [
    ("g", "rr", 2), ("g", "rr", -1), ("g", "pick", 1), ("g", "pick", -2), ("g", "tick", 0),
    ("g", "quantum", 0), ("g", "preempt", 3), ("g", "live", 2), ("g", "live", -1), ("g", "stask", 1),
    ("g", "stask", -1), ("g", "next_wake", -2), ("g", "sm", 2), ("g", "rtask", 1), ("g", "rcpu", 2),
    ("g", "slice_left", -1), ("g", "lockup", -1), ("g", "each_slice", -1), ("g", "inslice", 1 << 40),
    ("t0", "state", 3), ("t0", "state", -1), ("t0", "kind", 2), ("t0", "cpu", 2), ("t0", "cpu", -1),
    ("t0", "wake_at", -5), ("t0", "notify", 2), ("t0", "since", -1), ("t0", "exit_code", 1 << 70),
    ("t2", "kind", 7), ("c0", "current", 1), ("c0", "current", -2), ("c1", "slices", -1),
    ("c0", "queue", [1]), ("c0", "queue", [-1]), ("c0", "queue", [0, 0]), ("c1", "queue", [0, 0, 0]),
    ("g", "quantum", "many"), ("c0", "work", 2), ("c1", "work", -1),
    ("t1", "watch", 2), ("t0", "watch", -1), ("c0", "goal", -1), ("g", "watch_hit", 2), ("g", "quiet", -1),
    ("g", "notify_yield", 2), ("g", "notify_yield", -1),
]


def _record(st, which):
    return {"g": st, "t": None, "c": None}.get(which) or (
        st.tasks[int(which[1:])] if which[0] == "t" else st.cpus[int(which[1:])])


@pytest.mark.parametrize("which,field,value", BAD_FIELDS)
def test_c_refuses_every_field_set_out_of_range(compile_c, which, field, value):
    from emu.errors import CoreError
    m = _sched_machine(compile_c)
    rec = _record(m.sched_state, which)
    before = getattr(rec, field)
    with pytest.raises(CoreError, match="scheduler"):
        setattr(rec, field, value)
    assert getattr(rec, field) == before
    m.run(until=5000)
    assert m.now == 5000
    m.engine.close()


def test_fixed_fields_of_the_scheduler_state_are_read_only(compile_c):
    m = _sched_machine(compile_c)
    st = m.sched_state
    for rec, field in ((st, "ntasks"), (st, "ncpus"), (st.cpus[0], "rqlen")):
        with pytest.raises(AttributeError):
            setattr(rec, field, 1)
    assert (st.ntasks, st.ncpus, st.cpus[0].rqlen + st.cpus[1].rqlen) == (1, 2, 1)


_GLOBALS = ("quantum", "preempt", "tick", "lockup", "policy_rr", "notify_all", "each_slice", "sm", "rr",
            "round_ran", "slice_left", "inslice", "stask", "remain", "pick", "next_wake", "check_sm", "after",
            "preemptions", "rtask", "rcpu", "live", "jitter", "jstate", "watch_hit", "quiet", "notify_yield")
_TASK_FIELDS = ("state", "kind", "cpu", "wake_at", "interruptible", "preempted", "need_resched", "notify",
                "kernel_entries", "since", "exit_code", "exited", "watch")
_int64 = st.one_of(st.integers(-3, 5), st.integers(-(1 << 63), (1 << 63) - 1), st.integers(1 << 63, 1 << 80))
_writes = st.lists(st.one_of(
    st.tuples(st.just("g"), st.sampled_from(_GLOBALS), _int64),
    st.tuples(st.sampled_from(["t0", "t1", "t2", "t3"]), st.sampled_from(_TASK_FIELDS), _int64),
    st.tuples(st.sampled_from(["c0", "c1"]), st.sampled_from(["current", "slices", "work", "goal"]), _int64),
    st.tuples(st.sampled_from(["c0", "c1"]), st.just("queue"), st.lists(st.integers(-2, 3), max_size=4))),
    max_size=12)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=_writes)
def test_whatever_python_writes_the_c_loop_never_leaves_its_state(compile_c, writes):
    """Hostile writes: each is taken or refused with CoreError, and running
    on afterwards ends in a run or an EmuError, never in a crash (make asan
    runs this)."""
    from emu.errors import CoreError, EmuError
    img = compile_c("long user_entry(long x) { lpemu_sleep(1); lpemu_yield(); return 0; }")
    m = Machine(img, cpus=2)
    m.add_task("a", "user_entry")
    m.add_task("b", "user_entry")
    m.run(until=500)
    st_ = m.sched_state
    for which, field, value in writes:
        try:
            setattr(_record(st_, which), field, value)
        except CoreError:
            pass
    try:
        m.run(until=m.now + 3000)
    except EmuError:
        pass
    m.engine.close()


def test_a_stop_machine_flag_nobody_holds_is_an_error_not_a_hang(compile_c):
    """sm set by hand, with no stop_machine in progress (found by the
    hostile writes above): the C loop hands stop_machine to the twin, which
    runs only while one is in progress, so the run used to loop forever."""
    from emu.errors import CoreError
    img = compile_c("long user_entry(long x) { lpemu_sleep(1); lpemu_yield(); return 0; }")
    m = Machine(img, cpus=2)
    m.add_task("a", "user_entry")
    m.run(until=500)
    m.sched_state.sm = 1
    with pytest.raises(CoreError, match="no stop_machine"):
        m.run(until=m.now + 3000)
    m.engine.close()


def test_a_stop_machine_section_waits_out_its_delay_while_another_work_waits_for_a_cpu(hostile):
    """Regression: during stop_machine no CPU goes to a waiting work, so an
    idle machine must still move time to the section's own Delay."""
    mix = dict(tasks=[("user", 5)], cpus=2, quantum=50, tick=100, preempt="none", policy="rr", seed=1,
               watcher=None, timers=[], until=20_000, stop_every=0, works=[(1000, ["stop"]), (1000, [1, 1])])
    c, py = run_mix(hostile, "c", **mix), run_mix(hostile, "python", **mix)
    assert c == py
    steps = [e for e in c[2] if e[1] == "work"]
    assert len(steps) == 3


def test_restore_puts_back_every_byte_written_since(compile_c):
    """A restore checks a page the snapshot holds as zeros (most of the
    heap) against a zero page and the others against the snapshot's copy:
    whatever guest code or the host wrote since, on pages of either kind,
    is put back byte for byte, and the runs after it are the same."""
    from emu.machine.layout import HEAP_BASE, HEAP_SIZE, STACK_SIZE, stack_of
    img = compile_c("""
        static unsigned long s;
        long user_entry(long base, long seed)
        {
            s = s * 6364136223846793005UL + 1442695040888963407UL + (unsigned long)seed;
            *(volatile unsigned char *)(base + (long)((s >> 33) % 0x100000)) = (unsigned char)((s >> 20) | 1);
            lpemu_sleep(1);
            return 0;
        }
    """)
    m = Machine(img, cpus=2, quantum=100)
    for k in range(3):
        m.add_task(f"t{k}", "user_entry", [HEAP_BASE, k])
    m.heap[0x3000:0x3010] = bytes(range(1, 17))          # pages the snapshot holds as data ...
    m.heap[HEAP_SIZE - 1] = 0xff                          # ... its last byte too
    m.run(until=3_000)
    snap = m.snapshot()
    data = [(seg.addr, len(seg.data)) for seg in img.segments if seg.prot & 2]
    stacks = [stack_of(t.tid) for t in m.tasks]

    def memory():
        return (bytes(m.heap), [bytes(m.engine.view(a, n)) for a, n in data],
                [bytes(m.engine.view(lo, STACK_SIZE)) for lo, _ in stacks])
    before = memory()
    m.run(until=40_000)
    after = (m.trace.raw(), m.now, memory())
    m.restore(snap)
    assert memory() == before

    @settings(max_examples=40, deadline=None)
    @given(writes=st.lists(st.tuples(st.integers(0, HEAP_SIZE - 1), st.integers(0, 255)), max_size=12),
           length=st.integers(0, 40_000))
    def check(writes, length):
        for off, value in writes:
            m.heap[off] = value
        m.run(until=3_000 + length)
        m.restore(snap)
        assert memory() == before
    check()
    m.run(until=40_000)
    assert (m.trace.raw(), m.now, memory()) == after
    m.engine.close()


@pytest.fixture(scope="module")
def sleepers_image(tmp_path_factory):
    from emu.images.build import build_c
    src = tmp_path_factory.mktemp("wakes") / "wakes.c"
    src.write_text('#include "lpemu.h"\nlong user_entry(long n) { lpemu_sleep(n); return n; }\n')
    return build_c([src], base=0x400000, name="base")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tasks=st.lists(st.tuples(st.sampled_from(["runnable", "sleeping", "exited"]), st.integers(-1, 400)),
                      min_size=1, max_size=9),
       ahead=st.integers(-50, 400), next_wake=st.integers(-1, 500))
def test_wakes_in_c_are_the_twins_wakes(sleepers_image, tasks, ahead, next_wake):
    """Scheduling.run wakes the sleepers due before it fires its timers: in
    C (emu_sched_fire_wakes) with the C scheduler, by the twin's fire_wakes
    otherwise. On any mix of task states, wake times and next_wake (a stale
    one too), both wake the same tasks with the same events and registers
    and leave the same next_wake."""
    from unicorn.x86_const import UC_X86_REG_RAX
    from emu.engine.core import TaskState
    codes = {"runnable": TaskState.RUNNABLE, "sleeping": TaskState.SLEEPING, "exited": TaskState.EXITED}
    m = Machine(sleepers_image, cpus=2, quantum=50)
    for k in range(len(tasks)):
        m.add_task(f"t{k}", "user_entry", [k + 1])
    m.run(until=200)
    m.drain()
    st_ = m.sched_state
    base = m.now
    for tid, (state, wake) in enumerate(tasks):
        st_.tasks[tid].state = int(codes[state])
        st_.tasks[tid].wake_at = -1 if wake < 0 else base + wake
    st_.next_wake = -1 if next_wake < 0 else base + next_wake
    m.engine.clock = max(0, base + ahead)
    snap = m.snapshot()

    def outcome(fire):
        m.restore(snap)
        fire()
        m.drain()
        regs = []
        for t in m.tasks:
            m.engine.switch(t.tid)
            regs.append(m.engine.uc.reg_read(UC_X86_REG_RAX))
        return (m.trace.raw(), st_.next_wake, [(r.state, r.wake_at) for r in st_.tasks[:len(tasks)]], regs)
    in_c = outcome(lambda: m.engine.sched_fire_wakes())
    twin = outcome(lambda: m.scheduling.twin.fire_wakes())
    assert in_c == twin
    m.engine.close()


def test_an_event_ring_without_room_for_a_round_is_refused():
    """The loop keeps room in the ring for a round of every task: a ring
    smaller than that would be full before anything ran, and the loop would
    come back for ever. It is refused when the scheduler state is made."""
    from emu.engine import core
    small = core.Engine(event_capacity=64)
    with pytest.raises(core.CoreError, match="no room for a round of 2 tasks"):
        small.sched_init(2, 1)
    small.close()
    fits = core.Engine(event_capacity=1024)
    fits.sched_init(1024 - 4 - 128, 4)
    fits.close()
    tight = core.Engine(event_capacity=1024)
    with pytest.raises(core.CoreError, match="it needs more than 1024"):
        tight.sched_init(1024 - 4 - 127, 4)
    tight.close()
