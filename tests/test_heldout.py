"""Held-out scenarios (tests/data/heldout/), written from the kernel's
semantics before the tool ran them: each scenario's header says what every
model must give and why (kernel/livepatch/transition.c, core.c, shadow.c;
kpatch's kmod/core/core.c; the kGraft series; Ksplice). The tests hold the
emulator to those answers, and the regressions below are the places where it
once gave another."""
import errno
import re

import pytest

from emu.engine import core
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


KS_BASE = """
volatile long zero;
long (*mod_ops)(long);
__attribute__((noinline)) long f(long t) { lpemu_sleep(t); return 1 + zero; }
__attribute__((noinline)) long g(void) { return 1 + zero; }
long sleeper(long t) { lpemu_observe(1, f(t)); return 0; }
long worker(long x) { lpemu_observe(2, g()); if (mod_ops) lpemu_observe(3, mod_ops(x)); lpemu_sleep(1); return 0; }
"""
KS_MOD = """
extern volatile long zero;
__attribute__((noinline)) long mod_fn(long x) { return 10 + zero; }
"""
KS_PATCH = """
extern volatile long zero;
__attribute__((noinline)) long f(long t) { lpemu_sleep(t); return 2 + zero; }
__attribute__((noinline)) long g(void) { return 2 + zero; }
__attribute__((noinline)) long mod_fn(long x) { return 20 + zero; }
"""


def ksplice_world(compile_c, model_name="ksplice", *, sleep=300):
    base = compile_c(KS_BASE)
    m = Machine(base, cpus=2, quantum=400)
    m.add_task("sleeper", "sleeper", (sleep,))
    m.add_task("worker", "worker", (0,))
    mod = compile_c(KS_MOD, name="mod", base=m.module_base(), link_against=base)
    img = compile_c(KS_PATCH, name="p", base=mod.hi + 0x10000 & ~0xfff, link_against=base,
                    keep={"f", "g", "mod_fn"})
    m.load(img)
    return m, make_model(model_name, m), base, mod, img


def test_ksplice_refuses_an_update_for_a_module_not_loaded(compile_c):
    """kmodsrc/ksplice.c apply_update(): a change whose target module is
    not loaded (find_module() finds none) aborts the update with
    TARGET_NOT_LOADED before patch_action (the update is not partial):
    nothing is patched. Applied, the update holds its target
    (ref_module(new_code_mod, target)): the target's rmmod is refused
    until the update is reversed. (kpatch instead delays the object until
    the module loads: kpatch_link_object, kpatch_module_notify.)"""
    from emu.models.refusals import PatchRefused
    m, ks, base, mod, img = ksplice_world(compile_c)
    patch = ks.add(make_patch(m, "p", img, ["g", "mod:mod_fn"]))
    m.run(until=m.seconds(0.1))
    with pytest.raises(PatchRefused, match="target module 'mod' is not loaded") as e:
        ks.enable(patch)
    assert e.value.errno == errno.ENOENT
    assert not ks.transitions and not patch.enabled
    m.run(until=m.seconds(0.5))
    assert set(v for _, v in observed(m, 2)) == {1}             # g was never patched
    ks.load_module(mod)
    m.run(until=m.now + m.seconds(0.1))
    ks.enable(patch)
    m.run(until=m.now + m.seconds(1))
    assert ks.transitions[-1].result == "completed" and patch.object("mod").patched
    with pytest.raises(PatchRefused, match="in use") as e:
        ks.unload_module(mod)
    assert e.value.errno == errno.EWOULDBLOCK
    ks.disable(patch)
    m.run(until=m.now + m.seconds(1))
    assert ks.transitions[-1].result == "completed"
    ks.unload_module(mod)                                       # the reference went with the update


def ks_callbacks(log, fail=0):
    def mk(name):
        def fn(m, patch, obj):
            log.append((name, obj.name, m.now, m.stopped if hasattr(m, "stopped") else None))
            return fail if name == "pre_patch" else 0
        return fn
    return {"vmlinux": {n: mk(n) for n in ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")}}


@pytest.mark.parametrize("model_name", ["ksplice", "stop_machine"])
def test_ksplice_runs_its_pre_hooks_once_before_its_attempts(compile_c, model_name):
    """kmodsrc/ksplice.c patch_action(): the action's pre hooks run once,
    in the writer's context, before the first of its 5 stop_machine
    attempts; after the last attempt found the code busy, the fail hooks
    (here: post_unpatch, which undoes pre_patch). kpatch runs pre_patch
    inside stop_machine, after an activeness check that passed
    (kpatch_apply_patch): five failed checks call nothing."""
    m, model, base, mod, img = ksplice_world(compile_c, model_name, sleep=3000)
    log: list = []
    patch = model.add(make_patch(m, "p", img, ["f", "g"], callbacks=ks_callbacks(log)))
    m.run(until=m.seconds(0.1))
    enabled = m.now
    model.enable(patch)
    m.run(until=m.seconds(14))
    t = model.transitions[0]
    assert t.result == "failed" and t.attempts == 5
    if model_name == "ksplice":
        assert [(n, o) for n, o, _, _ in log] == [("pre_patch", "vmlinux"), ("post_unpatch", "vmlinux")]
        assert log[0][2] < t.pauses[0][0]                        # before the first stop_machine
        assert log[1][2] >= t.pauses[-1][1]                      # after the last
        assert log[0][2] - enabled < m.seconds(0.01)
    else:
        assert log == []


def test_ksplice_a_failing_pre_hook_ends_the_update_before_any_attempt(compile_c):
    """patch_action(): a pre hook that fails is CALL_FAILED at once: no
    stop_machine, the fail hooks run (post_unpatch only where pre_patch
    succeeded: none here), nothing is patched."""
    m, ks, base, mod, img = ksplice_world(compile_c, sleep=1)
    log: list = []
    patch = ks.add(make_patch(m, "p", img, ["g"], callbacks=ks_callbacks(log, fail=-errno.ENODEV)))
    m.run(until=m.seconds(0.1))
    ks.enable(patch)
    m.run(until=m.seconds(1))
    t = ks.transitions[0]
    assert t.result == "failed" and t.attempts == 0 and t.pauses == []
    assert [n for n, *_ in log] == ["pre_patch"]
    assert not patch.enabled and set(v for _, v in observed(m, 2)) == {1}


def test_ksplice_a_reversal_that_stays_busy_runs_its_fail_hooks(compile_c):
    """patch_action(KS_REVERSE): pre_unpatch once before the attempts; a
    task asleep in the new f() for 30 s makes all five busy, the update
    stays applied, and the fail hooks run (here post_patch, which undoes
    what pre_unpatch did)."""
    base = compile_c(KS_BASE.replace("long sleeper(long t) {", "long sleeper(long t) { lpemu_sleep(50);"))
    m = Machine(base, cpus=2, quantum=400)
    m.add_task("sleeper", "sleeper", (3000,))
    m.add_task("worker", "worker", (0,))
    img = compile_c(KS_PATCH, name="p", base=m.module_base(), link_against=base, keep={"f"})
    m.load(img)
    ks = make_model("ksplice", m)
    log: list = []
    patch = ks.add(make_patch(m, "p", img, ["f"], callbacks=ks_callbacks(log)))
    m.run(until=m.seconds(0.1))
    ks.enable(patch)                     # the sleeper sleeps outside f until 0.5 s
    m.run(until=m.seconds(1))
    assert ks.transitions[0].result == "completed"
    ks.disable(patch)                    # it sleeps in the new f now, for 30 s
    m.run(until=m.seconds(9))
    t = ks.transitions[1]
    assert t.result == "failed" and t.attempts == 5 and patch.enabled
    assert [n for n, *_ in log] == ["pre_patch", "post_patch", "pre_unpatch", "post_patch"]
    assert log[2][2] < t.pauses[0][0] and log[3][2] >= t.pauses[-1][1]


def test_ksplice_runs_post_hooks_after_stop_machine(compile_c):
    """patch_action(): post hooks after the successful stop_machine, outside
    it; reversing: pre_unpatch once before the attempts, post_unpatch after."""
    m, ks, base, mod, img = ksplice_world(compile_c, sleep=1)
    log: list = []
    patch = ks.add(make_patch(m, "p", img, ["g"], callbacks=ks_callbacks(log)))
    m.run(until=m.seconds(0.1))
    ks.enable(patch)
    m.run(until=m.seconds(1))
    ks.disable(patch)
    m.run(until=m.seconds(2))
    t1, t2 = ks.transitions
    assert t1.result == t2.result == "completed"
    assert [n for n, *_ in log] == ["pre_patch", "post_patch", "pre_unpatch", "post_unpatch"]
    (pre, _, a, _), (post, _, b, _), (pre_u, _, c, _), (post_u, _, d, _) = log
    assert a <= t1.pauses[0][0] and b >= t1.pauses[0][1]
    assert c <= t2.pauses[0][0] and d >= t2.pauses[0][1]


def test_ksplice_holds_module_mutex_across_the_whole_update():
    """ksplice.c stage_store() holds module_mutex across apply_update():
    a reverse and another update's apply written during the attempts wait
    for the first update to end (here: aborted after 5 busy attempts),
    then go on: the reverse finds nothing applied (-EINVAL), p2 applies."""
    res, log, values, _ = run("ksplice-module-mutex/scenario.toml", "ksplice", seed=0)
    p1, p2 = res.transitions
    assert (p1["patch"], p1["result"], p1["attempts"]) == ("p1", "failed", 5)
    assert (p2["patch"], p2["result"]) == ("p2", "completed")
    aborted = next(t for t, line in enumerate(log) if line.startswith("ksplice: Aborted p1."))
    waited = [line for line in log[aborted:] if line.startswith("lpemu: disable p1")]
    assert waited and "is not enabled (-EINVAL" in waited[0]
    assert p2["requested_at"] > p1["requested_at"] + 5 * 100_000       # after the abort, not at +1.5 s
    assert [e["action"] for e in res.errors] == ["disable p1"]


@pytest.mark.parametrize("model", ["immediate", "livepatch"])
def test_a_disable_written_while_the_enable_changes_the_sites_waits(model):
    """The writer of the disable blocks on klp_mutex while the enable
    changes the sites (core.c enabled_store): under immediate it then
    unpatches (it was refused with -EBUSY); under livepatch it reverses
    the transition the enable started."""
    res, log, values, _ = run("write-during-text-change/scenario.toml", model)
    assert not res.errors and res.outcome == "completed"
    if model == "immediate":
        assert [(t["target"], t["result"]) for t in res.transitions] == [("patched", "completed"),
                                                                         ("unpatched", "completed")]
    else:
        assert [(t["target"], t["result"]) for t in res.transitions] == [("patched", "reversed"),
                                                                         ("unpatched", "completed")]
        assert any("reversing transition from patching to unpatching" in line for line in log)
    assert values[("worker", 2)][-1] == 1


def observed(m, key):
    return [(e.task, e.value) for e in m.trace if e.kind == core.EV_OBSERVE and e.key == key]


# ---- the held-out scenarios, per model -------------------------------------------------

import functools                                   # noqa: E402
from dataclasses import replace                    # noqa: E402
from pathlib import Path                           # noqa: E402

from emu.engine import core                        # noqa: E402
from emu.models import MODEL_NAMES                 # noqa: E402

# Ksplice refuses an update whose target module is not loaded (kmodsrc/ksplice.c
# apply_update: TARGET_NOT_LOADED) and patches no module that loads later:
# tests/test_heldout.py::test_ksplice_refuses_an_update_for_a_module_not_loaded
MODULE_PATCH_MODELS = [n for n in MODEL_NAMES if n != "ksplice"]
from emu.runs import scenario                      # noqa: E402
from emu.runs.fuzz import Runner                   # noqa: E402
from emu.machine.task import RunState               # noqa: E402

HELD = Path(__file__).resolve().parent / "data" / "heldout"


@functools.cache
def runner(rel: str, kernel: str | None = None, cpus: int | None = None, entry: str | None = None) -> Runner:
    scn = scenario.load(HELD / rel)
    if kernel:
        scn.machine["kernel"] = kernel
    if cpus:
        scn.machine["cpus"] = cpus
    if entry:
        scn.tasks = [replace(t, entry=entry) for t in scn.tasks]
    return Runner(scenario.build(scn))


def run(rel: str, model: str, seed: int = 0, *, preempt=None, **variant):
    """One run: (result, log lines, {(task, key): values in order}, status)."""
    r = runner(rel, **variant)
    spec = r.plan(model, seed)
    if preempt:
        spec = replace(spec, preempt=preempt)
    res, m, mod = r.execute(spec, keep=True)
    try:
        values: dict = {}
        for clock, kind, task, key, value, _ in m.trace.records():
            if kind == core.EV_OBSERVE:
                values.setdefault((m.tasks[task].name, key), []).append(value)
        return res, [line for _, line in m.log], values, mod.status()
    finally:
        m.engine.close()


def collapse(seq):
    out = []
    for v in seq:
        if not out or out[-1] != v:
            out.append(v)
    return out


def kernel_safe(res) -> bool:
    """Safe as the kernel's semantics define it: no unit mixed versions, no
    assertion broke (value handovers are judged separately below)."""
    return res.inconsistent_units == 0 and res.violation_count == 0


def sound(res) -> None:
    assert res.promise_breaches == 0, res.promise
    assert not res.warnings, res.warnings


OUTSIDE = {"immediate": "completed", "stop_machine": "completed", "ksplice": "completed",
           "kgraft": "stalled", "livepatch": "completed"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_cond_resched_outside_patched_code(model):
    res, *_ = run("cond-resched-outside/scenario.toml", model)
    assert res.outcome == OUTSIDE[model] and kernel_safe(res)
    sound(res)


@pytest.mark.parametrize("kernel,outcome", [("4.18", "stalled"), ("5.14", "stalled"), ("6.4", "completed"),
                                            ("6.15", "completed"), ("6.16", "stalled"), ("6.19", "stalled")])
def test_cond_resched_outside_per_kernel_version(kernel, outcome):
    res, log, _, _ = run("cond-resched-outside/scenario.toml", "livepatch", kernel=kernel)
    assert res.outcome == outcome and kernel_safe(res)
    sound(res)
    if outcome == "stalled":      # the kthread is on its CPU at every check
        assert res.transitions[0]["blockers"][0]["stack"][-1] == "(running)"


@pytest.mark.parametrize("kernel", ["4.18", "6.19"])
def test_cond_resched_outside_on_one_cpu_the_kworker_takes_the_cpu_at_cond_resched(kernel):
    """With one CPU the kworker runs only when the kthread schedules out at
    cond_resched(): then it is not task_curr() and crunch() is off its
    stack, so the periodic check switches it on every kernel version."""
    res, *_ = run("cond-resched-outside/scenario.toml", "livepatch", kernel=kernel, cpus=1)
    assert res.outcome == "completed" and kernel_safe(res)
    sound(res)


@pytest.mark.parametrize("kernel", ["4.18", "6.8", "6.19"])
def test_a_kthread_that_sleeps_freezably_switches_on_every_kernel(kernel):
    """Asleep between crunches, the kthread is not task_curr() when the
    periodic check finds it there (every version); from 6.16 it also tries
    its own switch in __schedule() as it goes to the freezable sleep."""
    res, *_ = run("cond-resched-outside/scenario.toml", "livepatch", kernel=kernel, entry="kthread_freezable")
    assert res.outcome == "completed" and kernel_safe(res)
    sound(res)


INSIDE = {"immediate": "completed", "stop_machine": "failed", "ksplice": "failed",
          "kgraft": "stalled", "livepatch": "stalled"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_cond_resched_inside_patched_code(model):
    res, log, values, _ = run("cond-resched-inside/scenario.toml", model)
    assert res.outcome == INSIDE[model] and kernel_safe(res)
    sound(res)
    # the kthread never re-enters work_loop(): it runs the old one forever
    assert collapse(values[("looper", 1)]) == [0]


@pytest.mark.parametrize("kernel", ["4.18", "6.8"])
def test_cond_resched_inside_stalls_livepatch_on_every_kernel(kernel):
    res, *_ = run("cond-resched-inside/scenario.toml", "livepatch", kernel=kernel)
    assert res.outcome == "stalled"
    sound(res)


@pytest.mark.parametrize("model", ["kgraft", "livepatch"])
def test_force_completes_what_cond_resched_inside_stalled(model):
    res, log, values, _ = run("cond-resched-inside/scenario-force.toml", model)
    assert res.outcome == "completed" and kernel_safe(res)
    sound(res)
    assert collapse(values[("looper", 1)]) == [0]
    if model == "livepatch":
        assert any("forcing remaining tasks" in line for line in log)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_shadow_variables_present_and_missing(model):
    res, _, values, _ = run("shadow-present-missing/scenario.toml", model)
    assert res.outcome == "completed" and res.fault is None and res.violation_count == 0
    sound(res)
    seen = {v for (t, k), vs in values.items() if k == 1 for v in vs}
    assert -1 not in seen and any(v > 1000 for v in seen)       # the patch ran, NULL was handled
    if model in ("kgraft", "livepatch"):
        assert kernel_safe(res)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_missing_shadow_variable_dereferenced_faults_under_every_model(model):
    res, *_ = run("shadow-unchecked/scenario.toml", model)
    assert res.outcome == "fault" and "conn_account" in res.fault and "0x0" in res.fault


MANY = {"immediate": False, "stop_machine": True, "ksplice": True, "kgraft": True, "livepatch": True}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_64_tasks_on_4_cpus(model):
    res, *_ = run("many-tasks/scenario.toml", model)
    assert res.outcome == "completed"
    assert kernel_safe(res) == MANY[model]
    sound(res)


SLEEP_USER = {"immediate": "completed", "stop_machine": "failed", "ksplice": "failed",
              "kgraft": "completed", "livepatch": "completed"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_user_task_asleep_in_a_patched_function(model):
    res, log, *_ = run("sleep-in-patched/scenario-user.toml", model)
    assert res.outcome == SLEEP_USER[model] and kernel_safe(res)
    sound(res)
    if model == "livepatch":     # switched after the fake signal of the 15th retry
        assert any("signaling remaining tasks" in line for line in log)
        assert res.latency > 14 * 100_000
    if model == "kgraft":        # the fake signal of the first check (2 s), finalized by the second
        assert log.count("kgr: still in progress after timeout, will keep trying every 2 seconds") == 1
        assert res.transitions[0]["attempts"] == 2
        assert 4 * 100_000 <= res.latency < 4.5 * 100_000


SLEEP_KTHREAD = {"immediate": "completed", "stop_machine": "failed", "ksplice": "failed",
                 "kgraft": "completed", "livepatch": "completed"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_kthread_that_never_leaves_a_patched_function_needs_force(model):
    res, log, values, _ = run("sleep-in-patched/scenario-kthread.toml", model)
    assert res.outcome == SLEEP_KTHREAD[model] and kernel_safe(res)
    sound(res)
    if model == "livepatch":
        assert 24 * 100_000 < res.latency < 26 * 100_000          # completed by the force at 25 s
    if model == "kgraft":
        # woken at every check (kgr_send_fake_signal), it goes on in poll_loop();
        # the forced unmark at 25 s, then the next check, every KGR_TIMEOUT = 2 s
        # from the code change: the 13th, 26 s after the enable
        assert res.transitions[0]["attempts"] == 13
        assert 26 * 100_000 <= res.latency < 26.5 * 100_000
    assert collapse(values[("poller", 2)]) == [0]                # it never left the old loop


@pytest.mark.parametrize("model,attempts", [("stop_machine", 3), ("ksplice", 4), ("livepatch", None),
                                            ("kgraft", None), ("immediate", None)])
def test_stop_machine_refuses_while_flush_is_on_a_stack_and_retries(model, attempts):
    res, log, values, _ = run("stop-machine-retry/scenario.toml", model)
    assert res.outcome == "completed" and kernel_safe(res)
    sound(res)
    if attempts:
        assert res.transitions[0]["attempts"] == attempts
    if model == "stop_machine":
        assert any("activeness safety check failed for flush" in line for line in log)
    if model == "kgraft":       # the sleeper finished its system call in the old universe
        assert collapse(values[("flusher", 1)]) == [0, 1]


@pytest.mark.parametrize("model,seed,safe", [("immediate", 0, False), ("stop_machine", 2, False),
                                             ("ksplice", 2, False), ("livepatch", 2, False),
                                             ("kgraft", 0, True), ("kgraft", 2, True)])
def test_a_lock_protocol_change_without_its_caller(model, seed, safe):
    res, *_ = run("lock-protocol/scenario.toml", model, seed)
    assert kernel_safe(res) == safe
    sound(res)


@pytest.mark.parametrize("model,seed,safe", [("immediate", 0, False), ("stop_machine", 2, True),
                                             ("ksplice", 2, True), ("livepatch", 2, True), ("kgraft", 2, True)])
def test_a_lock_protocol_change_with_its_caller(model, seed, safe):
    res, *_ = run("lock-protocol/scenario-caller.toml", model, seed)
    assert kernel_safe(res) == safe
    sound(res)


def test_disable_mid_transition_reverses_under_livepatch():
    res, log, values, status = run("disable-mid-transition/scenario.toml", "livepatch")
    assert [(t["target"], t["result"]) for t in res.transitions] == [("patched", "reversed"),
                                                                     ("unpatched", "completed")]
    assert "livepatch: 'fix': reversing transition from patching to unpatching" in log
    assert "livepatch: 'fix': unpatching complete" in log
    assert {vs[-1] for vs in values.values()} == {0}
    assert all(t["patch_state"] == -1 for t in status["tasks"])
    sound(res)


@pytest.mark.parametrize("model,final", [("kgraft", 1), ("stop_machine", 0), ("ksplice", 0), ("immediate", 0)])
def test_disable_mid_transition_elsewhere(model, final):
    """kGraft and kpatch refuse a second operation while one is in progress
    (kGraft: -EAGAIN, "another patching not yet finalized"; kpatch:
    -EBUSY); kpatch's enable then fails its five attempts; immediate has
    no transition to be in."""
    res, _, values, _ = run("disable-mid-transition/scenario.toml", model)
    assert {vs[-1] for vs in values.values()} == {final}
    assert bool(res.errors) == (model != "immediate")
    if model == "kgraft":
        assert "another patching not yet finalized" in res.errors[0]["error"]
        assert "-EAGAIN" in res.errors[0]["error"]
    sound(res)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_stacked_patches_then_disable_the_newest(model):
    res, _, values, _ = run("stacked-disable/scenario.toml", model)
    assert res.outcome == "completed" and res.violation_count == 0
    sound(res)
    for i in range(3):
        assert collapse(values[(f"user{i}", 1)]) == [0, 1, 2, 1]
        assert collapse(values[(f"user{i}", 2)]) == [0, 2, 0]


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_atomic_replace_then_disable_leaves_every_task_on_the_original(model):
    res, _, values, status = run("replace-then-disable/scenario.toml", model)
    assert res.outcome == "completed"
    sound(res)
    for i in range(3):
        assert collapse(values[(f"user{i}", 1)]) == [0, 1, 0]
        assert collapse(values[(f"user{i}", 2)]) == [0, 1, 2, 0]
    assert not any(p["enabled"] for p in status["patches"])


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_stacked_patches_then_disable_the_older(model):
    """kGraft refuses to revert p1 while p2, applied after it, holds a
    reference to it (kgr_modify_kernel: patch->refs, -EBUSY); the first
    livepatch (immediate) while p2, registered after it, is enabled
    (__klp_disable_patch: "enforce stacking", -EBUSY); f() stays p2's
    under every model."""
    res, _, values, _ = run("stacked-disable-older/scenario.toml", model)
    if model in ("kgraft", "immediate"):
        assert [e["action"] for e in res.errors] == ["disable p1"]
        assert ("this patch is still referenced" if model == "kgraft" else
                "only the last enabled patch can be disabled ('p2' is enabled)") in res.errors[0]["error"]
        assert "-EBUSY" in res.errors[0]["error"]
    else:
        assert res.outcome == "completed" and not res.errors
    sound(res)
    for i in range(3):
        assert collapse(values[(f"user{i}", 1)]) == [0, 1, 2]


@pytest.mark.parametrize("model,result", [("stop_machine", "failed"), ("ksplice", "completed"),
                                          ("livepatch", "completed")])
def test_disabling_an_older_patch_checks_what_runs_now(model, result):
    """kpatch_backtrace_address_verify() checks the active version of each
    function of the patch being removed (kpatch_get_func: the newest, p2's
    f()), where the tasks sleep: every attempt fails. livepatch and Ksplice
    check p1's own f(), where nobody is. f() stays p2's throughout."""
    res, log, values, _ = run("kpatch-unpatch-under-newer/scenario.toml", model)
    sound(res)
    assert [t["result"] for t in res.transitions] == ["completed", "completed", result]
    if model == "stop_machine":
        assert res.transitions[2]["attempts"] == 5
        assert "kpatch: activeness safety check failed for f" in log
        blocker = res.transitions[2]["attempt_log"][0]["blockers"][0]
        assert blocker["stack"][0].startswith("f+0x")
    for i in range(3):
        assert collapse(values[(f"user{i}", 1)]) == [0, 1, 2]


@pytest.mark.parametrize("model", ["kgraft", "livepatch"])
def test_kgraft_wakes_every_kthread_when_it_starts(model):
    """kgr_wakeup_kthreads() wakes every kthread: the napper's 30 s sleep
    ends early and it migrates at the safe point after it, well within the
    horizon. livepatch switches it asleep by the stack check and lets it
    sleep (no fake signal before the 15th retry)."""
    res, _, values, _ = run("kgraft-kthread-wakeup/scenario.toml", model)
    sound(res)
    assert res.outcome == "completed"
    left = values.get(("napper", 2), [])
    if model == "kgraft":
        assert left and left[0] > 0             # woken with most of its sleep left
        assert values[("napper", 1)][-1] == 1    # the next scan() is the new one
    else:
        assert not left or left[0] == 0


@pytest.mark.parametrize("kernel,refused", [("4.18", True), ("5.0", True), ("5.1", False), ("6.8", False)])
def test_disabling_the_older_stacked_patch_per_kernel_version(kernel, refused):
    """Before 5.1 "enforce stacking: only the last enabled patch can be
    disabled" (-EBUSY); from 5.1 the older patch goes and f() stays p2's."""
    res, _, values, status = run("stacked-disable-older/scenario.toml", "livepatch", kernel=kernel)
    sound(res)
    assert [e["action"] for e in res.errors] == (["disable p1"] if refused else [])
    assert [p["name"] for p in status["patches"]] == (["p1", "p2"] if refused else ["p2"])
    for i in range(3):
        assert collapse(values[(f"user{i}", 1)]) == [0, 1, 2]


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("seed", range(4))
def test_atomic_replace_while_a_task_sleeps_in_a_function_it_drops(model, seed):
    """The nop of f() checks p1's f() (the previous entry of its func_stack),
    where the sleeper sleeps; kpatch's replace checks p1's functions too."""
    res, _, values, _ = run("replace-nop-asleep/scenario.toml", model, seed)
    sound(res)
    if model != "immediate":
        assert kernel_safe(res) and not res.handovers
    if model in ("kgraft", "livepatch"):
        assert res.outcome == "completed"
    for task in ("busy0", "busy1", "busy2"):
        assert collapse(values[(task, 1)]) in ([7, 1007, 7], [7, 1007], [7])


@pytest.mark.parametrize("model", ["stop_machine", "livepatch", "kgraft", "immediate"])
@pytest.mark.parametrize("seed", range(2))
def test_kpatch_replace_skips_the_force_functions_of_the_patches_it_replaces(model, seed):
    """kpatch_backtrace_address_verify(): in the replace case it checks
    every KPATCH_OP_UNPATCH func of the hash that is not force; p1's f()
    is force, so the sleeper inside it does not block p2, which completes
    at its first attempt (it failed 5 attempts when the replaced functions
    were checked without their force flag)."""
    res, log, _, _ = run("kpatch-replace-force/scenario.toml", model, seed)
    sound(res)
    if model == "kgraft":
        # p1 is finalized by its second check, 4 s after its code change
        # (KGR_TIMEOUT = 2 s; the first one signalled the sleeper): p2's
        # enable at 4 s finds it in progress and is refused with -EAGAIN
        assert [t["result"] for t in res.transitions] == ["completed"]
        assert any("kgr: can't patch, another patching not yet finalized ('p1' in progress)" in line
                   for line in log)
        assert log.index("kgr: patching succeeded") > next(
            i for i, line in enumerate(log) if "can't patch" in line)
        return
    assert [t["result"] for t in res.transitions] == ["completed", "completed"]
    if model == "stop_machine":
        assert [t["attempts"] for t in res.transitions] == [1, 1]
        assert [line for line in log if line.startswith("kpatch: ")] == [
            "kpatch: loaded patch module 'p1'", "kpatch: unloaded patch module 'p1'",
            "kpatch: loaded patch module 'p2'"]


def test_kpatch_replace_takes_the_replaced_functions_out_of_ftrace():
    """kpatch_register(), replace: after the stop every replaced func leaves
    the hash and the ftrace filter (kpatch_ftrace_remove_func): f(), which
    only p1 patched, has a NOP site again; k() keeps p2's call."""
    r = runner("kpatch-replace-force/scenario.toml")
    res, m, mod = r.execute(r.plan("stop_machine", 0), keep=True)
    try:
        assert res.outcome == "completed"
        assert mod.ftrace.site_bytes(m.function("f")) == bytes.fromhex("0f1f440000")
        assert mod.ftrace.site_bytes(m.function("k"))[:1] == b"\xe8"
    finally:
        m.engine.close()


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_task_asleep_63_entries_deep_fills_kpatchs_trace(model):
    """save_stack_trace_tsk() appends x86's ULONG_MAX end marker while there
    is room: 63 addresses fill kpatch's 64 entries, and a full trace fails
    every attempt ("more than 64 trace entries!"); kpatch passed until 64.
    No other model limits the depth this way."""
    res, log, _, _ = run("kpatch-deep-stack/scenario.toml", model)
    sound(res)
    if model == "stop_machine":
        assert res.transitions[0]["result"] == "failed" and res.transitions[0]["attempts"] == 5
        assert log.count("kpatch: more than 64 trace entries!") == 5
    elif model != "kgraft":         # kGraft: the sleeper crosses no boundary (see the scenario)
        assert res.outcome == "completed"


def test_a_task_asleep_62_entries_deep_passes_kpatchs_check():
    res, log, _, _ = run("kpatch-deep-stack/scenario.toml", "stop_machine", entry="shallow_entry")
    sound(res)
    assert res.transitions[0]["result"] == "completed" and res.transitions[0]["attempts"] == 1


def test_ksplice_sleeps_after_its_last_attempt_and_prints_every_conflict_once():
    """patch_action(): a 1 s sleep after each busy attempt, the 5th too,
    then print_conflicts() of the last attempt (check_each_task() records
    every task that fails) and the abort."""
    r = runner("ksplice-gives-up/scenario.toml")
    res, m, mod = r.execute(r.plan("ksplice", 0), keep=True)
    try:
        sound(res)
        t = mod.transitions[0]
        assert t.result == "failed" and t.attempts == 5
        assert all([name for name, _ in a.blockers] == ["sleeper0", "sleeper1"] for a in t.history)
        lines = [(clock, text) for clock, text in m.log if text.startswith("ksplice: ")]
        assert len(lines) == 3
        for (_, text), tid in zip(lines, range(2)):
            found = re.fullmatch(rf"ksplice: stack check: pid {tid} \(sleeper{tid}\): ([0-9a-f]+) \[<-CONFLICT\]", text)
            assert found and m.symbolize(int(found[1], 16)).startswith("f+")
        assert lines[2][1] == "ksplice: Aborted gfix.  stack check: to-be-replaced code is busy."
        last = t.history[-1].clock
        assert m.seconds(1) <= lines[-1][0] - last < m.seconds(1.01)
    finally:
        m.engine.close()


def test_kpatch_names_the_first_task_that_fails_with_its_trace():
    """kpatch_verify_activeness_safety() stops at the first task that fails
    and prints it as 'PID: %d Comm: %.20s' with its saved trace, one
    '  [<%pK>] %pB' line per address; the tool gives up right after the 5th
    attempt."""
    res, log, _, _ = run("ksplice-gives-up/scenario.toml", "stop_machine")
    sound(res)
    t = res.transitions[0]
    assert t["result"] == "failed" and t["attempts"] == 5
    assert all([b["task"] for b in a["blockers"]] == ["sleeper0"] for a in t["attempt_log"])
    i = log.index("kpatch: activeness safety check failed for f")
    assert log[i + 1] == "kpatch: PID: 0 Comm: sleeper0"
    assert re.fullmatch(r"kpatch:   \[<[0-9a-f]{16}>\] f\+0x[0-9a-f]+/0x[0-9a-f]+", log[i + 2])
    assert re.fullmatch(r"kpatch:   \[<[0-9a-f]{16}>\] user_entry\+0x[0-9a-f]+/0x[0-9a-f]+", log[i + 3])


def test_atomic_replace_is_refused_before_5_1():
    res, _, _, status = run("replace-nop-asleep/scenario.toml", "livepatch", kernel="5.0")
    sound(res)
    assert [e["action"] for e in res.errors] == ["enable p2"]
    assert "no atomic replace" in res.errors[0]["error"]
    assert [p["name"] for p in status["patches"]] == ["p1"]


@pytest.mark.parametrize("model,final,outcome", [
    ("livepatch", [0, 1, 0], "completed"), ("kgraft", [0, 1, 0], "completed"),
    ("immediate", [0, 1, 0], "completed"), ("stop_machine", [0], "failed"), ("ksplice", [0], "failed")])
def test_unpatching_while_a_task_sleeps_in_the_new_function(model, final, outcome):
    """Unpatching checks this patch's new function (func->new_func): the
    sleeper, back asleep in the new f() since 2 s, holds the disable until
    its kernel exit at 4 s. kpatch never gets f() off the sleeper's stack."""
    res, _, values, status = run("unpatch-asleep/scenario.toml", model)
    sound(res)
    assert kernel_safe(res) and res.outcome == outcome
    assert collapse(values[("sleeper", 1)]) == final
    if model in ("livepatch", "kgraft"):
        unpatch = res.transitions[1]
        assert unpatch["target"] == "unpatched" and unpatch["latency"] > 70_000    # held past 4 s


def test_an_atomic_replace_reversed_mid_transition_falls_back_to_the_replaced_patch():
    """Reversed, p2's nop and g() stay on top of the func_stacks in
    transition: an UNPATCHED task takes the next entry, p1's, never the
    original; p1 was never replaced and stays enabled."""
    res, log, values, status = run("replace-reversed/scenario.toml", "livepatch")
    sound(res)
    assert kernel_safe(res) and res.outcome == "completed"
    assert "livepatch: 'p2': reversing transition from patching to unpatching" in log
    for task in ("busy0", "busy1"):
        assert collapse(values[(task, 1)]) == [0, 1, 0, 1]
        assert collapse(values[(task, 2)]) == [0, 1, 2, 1]
    assert collapse(values[("sleeper", 2)]) == [0, 1]
    assert [(p["name"], p["enabled"]) for p in status["patches"]] == [("p1", True)]


@pytest.mark.parametrize("model,f,g", [("kgraft", 0, 2), ("immediate", 0, 0), ("stop_machine", None, None),
                                       ("ksplice", None, None)])
def test_an_atomic_replace_reversed_mid_transition_elsewhere(model, f, g):
    """kGraft refuses the disable while p2 is not finalized, and p2 ends
    replacing p1; immediate replaces and then removes at once; kpatch and
    Ksplice refuse the disable during the attempts: never a mixed unit."""
    res, _, values, _ = run("replace-reversed/scenario.toml", model)
    sound(res)
    assert kernel_safe(res)
    if f is not None:
        assert {values[(t, 1)][-1] for t in ("busy0", "busy1")} == {f}
        assert {values[(t, 2)][-1] for t in ("busy0", "busy1")} == {g}


MODULE_LOG = {
    "livepatch": ["livepatch: applying patch 'fix' to loading module 'codec'",
                  "livepatch: reverting patch 'fix' on unloading module 'codec'",
                  "livepatch: applying patch 'fix' to loading module 'codec'"],
    "stop_machine": ["kpatch: delaying patch of unloaded module 'codec'",
                     "kpatch: loaded patch module 'fix'",
                     "kpatch: patching newly loaded module 'codec'"],
}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_patch_for_a_module_loaded_later_unloaded_and_loaded_again(model):
    """kpatch holds a reference on the module it links (kpatch_link_object's
    try_module_get): its rmmod fails, the module stays patched, and the
    second insmod finds it loaded. Every other model lets it go and come.
    Ksplice refuses the update itself: its target module is not loaded
    (apply_update's TARGET_NOT_LOADED), and it patches no module later."""
    res, log, values, _ = run("module-after-patch/scenario.toml", model)
    sound(res)
    kpatch = model == "stop_machine"
    if model == "ksplice":
        assert [e["action"] for e in res.errors] == ["enable fix"]
        assert "target module 'codec' is not loaded" in res.errors[0]["error"]
        assert not res.transitions and res.outcome == "failed"
        for i in range(3):
            assert set(values[(f"client{i}", 3)]) == {0}        # only the old encoder
            assert collapse([v >= 0 for v in values[(f"client{i}", 1)]]) == [False, True, False, True]
        return
    assert kernel_safe(res)
    for i in range(3):
        assert set(values[(f"client{i}", 3)]) == {1}            # never the old encoder
        assert collapse([v >= 0 for v in values[(f"client{i}", 1)]]) == \
            ([False, True] if kpatch else [False, True, False, True])
    if kpatch:
        assert res.outcome == "failed"
        assert [(e["action"], e["error"].split(" (")[-1]) for e in res.errors] == \
            [("unload codec", "-EAGAIN: Resource temporarily unavailable)"), ("load codec", "-EEXIST: File exists)")]
        assert res.errors[0]["error"].startswith("Module codec is in use")
    else:
        assert res.outcome == "completed" and not res.errors
    if model in MODULE_LOG:
        assert [line for line in log if "module" in line and not line.startswith("lpemu")] == MODULE_LOG[model]


KG = {"immediate": "completed", "stop_machine": "completed", "ksplice": "completed",
      "kgraft": "stalled", "livepatch": "completed"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_kthreads_with_and_without_safe_points(model):
    res, _, values, _ = run("kgraft-safepoints/scenario.toml", model)
    assert res.outcome == KG[model] and kernel_safe(res)
    sound(res)
    if model == "kgraft":
        assert [b["task"] for b in res.transitions[0]["blockers"]] == ["plain"]
        assert collapse(values[("plain", 1)]) == [0]
        assert values[("safe", 1)][-1] == values[("freezer", 1)][-1] == 1


@pytest.mark.parametrize("model", ["kgraft", "livepatch"])
def test_kthreads_with_safe_points_only(model):
    res, *_ = run("kgraft-safepoints/scenario-safe.toml", model)
    assert res.outcome == "completed" and kernel_safe(res)
    sound(res)


@pytest.mark.parametrize("preempt", ["none", "voluntary", "full"])
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_preemption_modes(model, preempt):
    res, *_ = run("preempt-modes/scenario.toml", model, preempt=preempt)
    assert kernel_safe(res)
    sound(res)
    if model == "kgraft":
        assert res.outcome == "stalled"
    elif preempt != "full":
        assert res.outcome == "completed"
        if model == "livepatch":
            assert res.transitions[0]["attempts"] == 1
    else:
        assert res.outcome in ("completed", "failed", "stalled")


@pytest.mark.parametrize("rel", ["cond-resched-outside/scenario.toml", "preempt-modes/scenario.toml"])
def test_no_handover_where_no_value_crosses(rel):
    """A regression: crunch(long n) takes one argument, always the same
    constant; the sum the old version returned sits in r8 (a register
    it does not take) when the new one is called, and counts as a handover in
    its '5th argument'. Only the registers a function's code takes count
    now (emu/images/argregs.py)."""
    res, *_ = run(rel, "livepatch")
    assert res.handover_count == 0, res.handovers[:1]


# ---- a module loaded mid-transition (driven from Python: see its README) ----------------

def module_run(model_name: str):
    """(model, patch, machine, values per (task, key) with times, load time)."""
    from emu.images.build import build_c
    d = HELD / "module-mid-transition"
    base = build_c([d / "base.c"], base=0x400000, name="vmlinux")
    m = Machine(base, cpus=2, quantum=300)
    for i in range(3):
        m.add_task(f"fast{i}", "fast_user", (100 + i,))
    m.add_task("waiter", "waiter", (50,))                     # 0.5 s asleep in slow()
    model = make_model(model_name, m)
    mod = build_c([d / "mod.c"], name="mod", base=m.module_base(), link_against=base)
    img = build_c([d / "patch.c"], name="fix", base=mod.hi + 0x10000 & ~0xfff, link_against=base,
                  keep={"mod_fn", "slow"})
    m.load(img)
    patch = model.add(make_patch(m, "fix", img, ["slow", "mod:mod_fn"]))
    m.watch(m.function("slow"))     # an observing op from the start, as lpemu's runs have

    def init():      # module_init: register mod_fn into the base's ops pointer
        m.engine.view(base.symbols["mod_ops"], 8)[:] = mod.functions["mod_fn"].start.to_bytes(8, "little")
    m.run(until=m.seconds(0.1) + 3000)                          # the waiter is asleep in slow()
    model.enable(patch)
    m.run(until=m.now + m.seconds(0.2))
    loaded = m.now
    model.load_module(mod, init=init)
    m.run(until=m.now + m.seconds(14))
    values: dict = {}
    for clock, kind, task, key, value, _ in m.trace.records():
        if kind == core.EV_OBSERVE:
            values.setdefault((m.tasks[task].name, key), []).append((clock, value))
    return model, patch, m, values, loaded


@pytest.mark.parametrize("model_name", MODULE_PATCH_MODELS)
def test_a_module_loaded_mid_transition(model_name):
    from emu.runs import oracle
    from emu.runs.verdicts import verdicts
    model, patch, m, values, loaded = module_run(model_name)
    try:
        t = model.transitions[0]
        if model_name != "immediate":
            assert t.requested_at < loaded and (t.completed_at is None or t.completed_at > loaded), \
                "the load is meant to come mid-transition"
        # the waiter's first call through the module after the load, and the
        # version of slow() it woke up in
        first = next(v for c, v in values[("waiter", 2)] if c > loaded)
        if model_name in ("livepatch", "kgraft"):
            # its own (old) universe: kGraft too (kgr_patch_code_delayed
            # takes the slow stub while the patch is in progress)
            assert first == 1010
            fast = [v for c, v in values[("fast0", 1)] if loaded < c < loaded + m.seconds(0.1)]
            assert fast and set(fast) == {1015}                   # switched tasks: the new mod_fn
        elif model_name == "immediate":
            assert first == 1015                                  # the mix the model allows
        checked = verdicts(m, [patch], spec_model=model_name)
        assert checked.breaches == 0, checked.promise
        bad = oracle.check(m, [patch], model.transitions, unit="syscall", stats={})
        assert (len(bad) > 0) == (model_name == "immediate")
        if t.result == "completed":
            late = [v for (task, key), vs in values.items() if key in (1, 2)
                    for c, v in vs if c > t.completed_at + m.seconds(1)]
            assert late and all(v % 10 == 5 for v in late)        # every call: the patched mod_fn
            assert patch.object("mod").patched
        else:
            assert model_name in ("stop_machine", "ksplice") and t.result == "failed"
            assert not patch.object("mod").patched
        # the module's function is traced: its entries are in the trace
        fid = m.by_name["mod:mod_fn"].id
        assert any(k == core.EV_ENTRY and a == fid for _, k, _, a, _, _ in m.trace.records())
    finally:
        m.engine.close()


# ---- the robustness contract on held-out scenarios ----------------------------------------

import json                                        # noqa: E402
import shutil                                      # noqa: E402

from emu.app import cli                            # noqa: E402


def copy(tmp_path, rel: str) -> Path:
    src = HELD / rel
    for f in src.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / src.name


@pytest.mark.parametrize("change,needle", [
    (("cpus = 2", "cpus = 2\nturbo = 1"), "machine.turbo: unknown key"),
    (('sources = ["patch.c"]', 'sources = ["gone.c"]'), "patch[0].sources: no such file: gone.c"),
    (('name = "flush_fix"', 'name = "vmlinux"'), "patch[0].name: 'vmlinux' is already the name of the program"),
    (('horizon = 12.0', 'horizon = "long"'), "fuzz.horizon"),
])
def test_hostile_variants_exit_2_with_one_message(tmp_path, capsys, change, needle):
    path = copy(tmp_path, "stop-machine-retry/scenario.toml")
    path.write_text(path.read_text().replace(*change, 1))
    assert cli.main(["run", str(path), "--model", "livepatch"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("lpemu: error: ") and "scenario.toml" in err and needle in err


RANDOM_FLUSH = """#include "lpemu.h"
volatile long zero;
long calls;
__attribute__((noinline)) long flush(long first)
{
	unsigned long lo, hi, r;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	__asm__ volatile("rdrand %0" : "=r"(r));
	lpemu_observe(1, (long)((hi << 32 | lo) ^ r) + zero);
	return 0;
}
long user_entry(long n) { flush(calls++ == 0); lpemu_sleep(2); return 0; }
"""


def test_rdtsc_and_rdrand_in_guest_code_replay_to_the_same_hash(tmp_path, capsys):
    path = copy(tmp_path, "stop-machine-retry/scenario.toml")
    (tmp_path / "base.c").write_text(RANDOM_FLUSH)
    hashes = []
    for cmd in ("run", "replay", "replay"):
        rc = cli.main([cmd, str(path), "--model", "kgraft", "--seed", "3", "--json"])
        out = json.loads(capsys.readouterr().out)
        assert rc == 0 and out["outcome"] == "completed"
        hashes.append(out["trace_hash"])
    assert len(set(hashes)) == 1


def test_a_fault_is_a_finding(capsys):
    rc = cli.main(["run", str(HELD / "shadow-unchecked/scenario.toml"), "--model", "kgraft", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["outcome"] == "fault" and "conn_account" in out["fault"]


def test_a_probe_of_a_cpu_bound_kthread_sees_it_at_its_cond_resched(capsys):
    """A CPU-bound kthread is on its CPU whenever the probe looks, and passes
    a cond_resched() alone on it: the probe sees it there (it saw no state,
    and its line said so). Its cycle is a second (no kernel exit, no safe
    point), so the probe stops at its bound: the line says nothing new came
    after the first state (it said 'a new state still appeared at t=20000:
    raise [fuzz] probe'). stop_machine's stopper takes the kthread's CPU at
    that cond_resched() and meets it there; immediate's transition never
    does, and the line says why it may not."""
    cli.main(["fuzz", str(HELD / "cond-resched-outside/scenario.toml"), "--model", "immediate",
              "--model", "stop_machine", "--runs", "1", "--jobs", "1", "--quiet"])
    out = capsys.readouterr().out
    assert "probe: stopped at its bound t=1020000, no new state after t=20154\n" in out, out
    assert "raise [fuzz] probe" not in out and "still appeared" not in out
    assert "immediate: coverage 0/1 states (cruncher 0/1)\n  never met: cruncher: stopped: kthread_entry " \
        "(seen only passing cond_resched)" in out, out
    assert "stop_machine: coverage 1/1 states (cruncher 1/1)" in out, out


# ---- fake signals: a user task and a kthread asleep in patched code ------------------------

SIGNALS = {"immediate": "completed", "stop_machine": "failed", "ksplice": "failed",
           "kgraft": "completed", "livepatch": "completed"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_fake_signals_wake_a_user_task_and_a_kthread(model):
    res, log, values, _ = run("fake-signals/scenario.toml", model)
    assert res.outcome == SIGNALS[model] and kernel_safe(res)
    sound(res)
    if model == "livepatch":
        # klp_send_signals at the 16th attempt (klp_signals_cnt == 15), said once;
        # the kthread, woken (wake_up_state), is switched by the 17th attempt's check
        assert log.count("livepatch: signaling remaining tasks") == 1
        assert res.transitions[0]["attempts"] == 17
        assert 15 * 100_000 < res.latency < 17 * 100_000
        assert values[("sleeper", 3)][0] > 3000 and values[("poller", 4)][0] > 3000    # woken early
    if model == "kgraft":
        # the kthread woken at the start (kgr_wakeup_kthreads), the user task by
        # the fake signal of the first check, 2 s after the code change; the
        # second check finalizes
        assert log.count("kgr: still in progress after timeout, will keep trying every 2 seconds") == 1
        assert res.transitions[0]["attempts"] == 2
        assert 4 * 100_000 <= res.latency < 4.5 * 100_000
        assert 4600 < values[("sleeper", 3)][0] < 4800 and values[("poller", 4)][0] > 4900


@pytest.mark.parametrize("kernel,outcome", [("4.18", "stalled"), ("5.0", "stalled"), ("5.1", "completed"),
                                            ("6.8", "completed"), ("6.19", "completed")])
def test_fake_signals_per_kernel_version(kernel, outcome):
    """Before 5.1 only the administrator's write of `signal` sends them."""
    res, log, values, _ = run("fake-signals/scenario.toml", "livepatch", kernel=kernel)
    assert res.outcome == outcome and kernel_safe(res)
    sound(res)
    assert ("livepatch: signaling remaining tasks" in log) == (outcome == "completed")
    if outcome == "stalled":
        assert {b["task"] for b in res.transitions[0]["blockers"]} == {"sleeper", "poller"}


# ---- the shadow-variable API from guest code, with and without a patch ---------------------

@pytest.mark.parametrize("model", MODEL_NAMES)
def test_the_shadow_variable_api_from_guest_code(model):
    res, log, values, _ = run("shadow-api/scenario.toml", model)
    assert res.outcome == "completed" and res.fault is None and res.violation_count == 0
    sound(res)
    for task in ("user0", "user1", "user2"):
        for key in range(1, 6):                       # every answer the kernel's, once patched
            assert collapse(values[(task, key)]) == [2, 1], (task, key)
        counts = values[(task, 6)]                    # base code's counter: no gap, no restart
        assert counts == list(range(1, len(counts) + 1))
    patched_calls = sum(values[(t, 1)].count(1) for t in ("user0", "user1", "user2"))
    assert sum(line.startswith("Duplicate shadow variable <") for line in log) == patched_calls


@pytest.mark.parametrize("model", ["livepatch", "stop_machine"])
def test_shadow_variables_in_base_code_before_any_model(model, capsys):
    """klp_shadow_* is vmlinux's API: the probe and the prefix a campaign's
    runs share (no model yet) call it too. It was registered by the first
    model made, so they faulted with 'unknown hypercall 8'."""
    rc = cli.main(["fuzz", str(HELD / "shadow-api/scenario.toml"), "--model", model, "--runs", "3",
                   "--jobs", "1", "--strategy", "exhaustive", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    (summary,) = out["models"]
    assert summary["fault"] == 0 and summary["completed"] == 3 and summary["coverage"]["complete"]


def test_a_pooled_run_restores_the_shadow_variables_of_its_prefix():
    """A pooled machine goes back to the end of the prefix before each run:
    the shadow variables (the base's counters, allocated in the prefix)
    with the heap's memory; the run is the same run as on a fresh machine."""
    r = Runner(scenario.build(scenario.load(HELD / "shadow-api/scenario.toml")))
    spec = replace(r.plan("livepatch", 1, strategy="exhaustive"), schedule="rr")
    fresh, m, _ = r.execute(spec, keep=True)
    m.engine.close()
    pooled = [r.execute(spec) for _ in range(3)]
    assert r.pooled == 1
    assert {p.trace_hash for p in pooled} == {fresh.trace_hash}
    assert fresh.outcome == "completed" and fresh.fault is None


@pytest.mark.parametrize("kernel,outcome", [("4.18", "stalled"), ("6.4", "completed"), ("6.15", "completed"),
                                            ("6.16", "stalled"), ("6.19", "stalled")])
def test_cond_resched_switches_a_user_task_that_never_leaves_the_kernel_too(kernel, outcome):
    """klp_cond_resched() (6.4 .. 6.15) is every task's switch point, not a
    kthread's only; a fake signal cannot help a task that never reaches its
    kernel exit."""
    res, log, *_ = run("cond-resched-outside/scenario-user.toml", "livepatch", kernel=kernel)
    assert res.outcome == outcome and kernel_safe(res)
    sound(res)
    if outcome == "stalled":
        assert res.transitions[0]["blockers"][0]["stack"][-1] == "(running)"


# ---- kGraft's completion work: a check every KGR_TIMEOUT, a fake signal at each failed one ----

KGR_SIGNAL = {"immediate": "completed", "stop_machine": "failed", "ksplice": "failed",
              "kgraft": "completed", "livepatch": "completed"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_user_task_asleep_10_s_in_a_patched_function(model):
    """kgr_modify_kernel() queues the first check KGR_TIMEOUT = 2 s after
    the code is changed; kgr_work_fn() finds the sleeper in progress, says
    so once, and kgr_send_fake_signal() wakes it: it migrates at its kernel
    exit, and the second check finalizes. livepatch waits for the sleep to
    end (10 s, before its fake signals of the 15th retry)."""
    res, log, values, _ = run("kgraft-fake-signal/scenario.toml", model)
    assert res.outcome == KGR_SIGNAL[model]
    naps, tallies = values[("sleeper", 1)], values[("sleeper", 2)]
    if model == "immediate":           # woken in the old nap(), it calls the new tally()
        assert not kernel_safe(res)
        assert (naps[0], tallies[0]) == (0, 1)
        return
    assert kernel_safe(res)
    sound(res)
    assert naps == tallies[:len(naps)]                  # one version per system call
    if model == "kgraft":
        assert log.count("kgr: still in progress after timeout, will keep trying every 2 seconds") == 1
        assert log.count("kgr: patching succeeded") == 1
        assert res.transitions[0]["attempts"] == 2
        assert 4 * 100_000 <= res.latency < 4.5 * 100_000
        assert values[("sleeper", 3)][0] > 700          # woken with about 8 s of its 10 s left
        assert collapse(naps) == [0, 1]                 # the next nap() is the new one
    elif model == "livepatch":
        assert not any("signaling remaining tasks" in line for line in log)
        assert 9.5 * 100_000 < res.latency < 11.5 * 100_000
        assert values[("sleeper", 3)][0] == 0           # it slept the whole 10 s
        assert collapse(naps) == [0, 1]


# ---- tasks that exit during a transition --------------------------------------------------

EXIT_ATTEMPTS = {"stop_machine": 3, "ksplice": 4, "kgraft": 2, "livepatch": 4}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_tasks_that_exit_inside_a_patched_function_no_longer_block(model):
    """A dead task is not checked: release_task() takes it off the thread
    list every model walks, and a zombie's stack is "reliably empty"
    (stack_trace_save_tsk_reliable(), kernel/stacktrace.c; kpatch's
    unwind finds nothing either; Ksplice's check_task() skips TASK_DEAD),
    even when it died with the patched nap() on its stack."""
    res, log, values, status = run("exit-mid-transition/scenario.toml", model)
    assert res.outcome == "completed" and kernel_safe(res)
    sound(res)
    assert collapse(values[("busy", 1)]) == [0, 1]
    if model == "immediate":
        return
    t = res.transitions[0]
    assert t["attempts"] == EXIT_ATTEMPTS[model]
    # until the quitters exit (2.5 s, or a fake signal), every failed attempt
    # finds them asleep in nap()
    for attempt in t["attempt_log"]:
        assert {b["task"] for b in attempt["blockers"]} - {"swapper/1"} <= {"quitter", "kquitter"}
    if model == "livepatch":
        # no fake signal: they slept their whole 2.5 s, and the first retry
        # after they exit completes
        assert not any("signaling remaining tasks" in line for line in log)
        assert values[("quitter", 2)] == [0] and values[("kquitter", 2)] == [0]
        assert 2.5 * 100_000 < t["completed_at"] < 3.5 * 100_000
    if model == "kgraft":
        # the kthread woken when the code changed, the user task by the
        # first check's fake signal (2 s later): both exit early
        assert values[("kquitter", 2)][0] > 200 and 0 < values[("quitter", 2)][0] < 50
    assert {x["name"]: x["pending"] for x in status["tasks"]}.get("quitter") in (None, False)


# ---- a reversal that finds one task switched and one not ---------------------------------------

def test_a_reversal_waits_only_for_the_tasks_that_switched():
    """klp_reverse_transition() clears every TIF_PATCH_PENDING and
    klp_start_transition() sets it again only where patch_state differs
    from the new target: the task that never switched (late, asleep in the
    original nap()) is done at once; the one that switched (early) must
    leave the new nap(), the checked range when unpatching
    (klp_check_stack_func)."""
    res, log, values, _ = run("reverse-half-switched/scenario.toml", "livepatch")
    assert kernel_safe(res)
    sound(res)
    assert [(t["target"], t["result"]) for t in res.transitions] == [("patched", "reversed"),
                                                                     ("unpatched", "completed")]
    unpatching = res.transitions[1]
    assert [[b["task"] for b in a["blockers"]] for a in unpatching["attempt_log"]] == [["early"]]
    assert unpatching["completed_at"] < 5 * 100_000            # before late wakes
    assert collapse(values[("early", 1)]) == [0, 1, 0]
    assert "livepatch: 'nap_fix': reversing transition from patching to unpatching" in log
    assert log[log.index("livepatch: 'nap_fix': reversing transition from patching to unpatching") + 1] == \
        "livepatch: 'nap_fix': starting unpatching transition"
    assert log[-1] == "livepatch: 'nap_fix': unpatching complete"


def test_a_transition_reversed_twice_waits_for_the_other_task():
    """enabled_store() reverses a transition in progress as often as it is
    written: the second reversal makes early (PATCHED) done and late
    (UNPATCHED, asleep in the original nap() until 5 s) pending again; it
    switches at its kernel exit, before any fake signal."""
    res, log, values, _ = run("reverse-half-switched/scenario-twice.toml", "livepatch")
    assert kernel_safe(res)
    sound(res)
    assert [(t["target"], t["result"]) for t in res.transitions] == [
        ("patched", "reversed"), ("unpatched", "reversed"), ("patched", "completed")]
    last = res.transitions[2]
    assert all([b["task"] for b in a["blockers"]] == ["late"] for a in last["attempt_log"])
    assert 5 * 100_000 < last["completed_at"] < 6.5 * 100_000
    reversals = [line for line in log if "reversing transition" in line]
    assert reversals == ["livepatch: 'nap_fix': reversing transition from patching to unpatching",
                         "livepatch: 'nap_fix': reversing transition from unpatching to patching"]
    assert log[-1] == "livepatch: 'nap_fix': patching complete"
    assert not any("signaling remaining tasks" in line for line in log)
    assert collapse(values[("early", 1)]) == [0, 1] and values[("late", 1)][0] == 0


@pytest.mark.parametrize("model", [m for m in MODEL_NAMES if m != "livepatch"])
@pytest.mark.parametrize("rel", ["reverse-half-switched/scenario.toml", "reverse-half-switched/scenario-twice.toml"])
def test_writes_during_a_transition_elsewhere_never_mix(model, rel):
    res, log, values, _ = run(rel, model)
    assert kernel_safe(res)
    sound(res)
    final = 1 if model == "kgraft" or (model == "immediate" and "twice" in rel) else 0
    assert values[("early", 1)][-1] == final


# ---- what counts as "on the stack": a patched function's address in a local -----------------

CALLBACK = {"immediate": ("completed", 1), "stop_machine": ("completed", 1), "ksplice": ("failed", 0),
            "kgraft": ("completed", 0), "livepatch": ("completed", 1)}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_patched_functions_address_on_a_sleeping_stack(model):
    """Ksplice's check_stack() compares every word from the saved SP up
    with the replaced code; kpatch and livepatch compare the return
    addresses of an unwind. A callback pointer to handler() kept in a
    sleeping task's frame blocks Ksplice only."""
    res, log, values, _ = run("callback-on-stack/scenario.toml", model)
    outcome, version = CALLBACK[model]
    assert res.outcome == outcome and kernel_safe(res)
    sound(res)
    assert values[("waiter", 1)] == [version]         # the call after the 10 s sleep
    t = res.transitions[0]
    if model == "ksplice":
        assert t["attempts"] == 5
        assert re.fullmatch(r"ksplice: stack check: pid 0 \(waiter\): [0-9a-f]+ \[<-CONFLICT\]", log[0])
    if model == "stop_machine":
        assert t["attempts"] == 1
    if model == "livepatch":                          # switched by the first attempt's check
        assert not any(b["task"] == "waiter" for a in t["attempt_log"] for b in a["blockers"])


# ---- no consistency: old code returns into new, and new into old -------------------------------

@pytest.mark.parametrize("model", MODEL_NAMES)
def test_an_enable_and_a_disable_while_a_task_sleeps_in_a_patched_function(model):
    """Without a consistency model a task asleep in the old nap() comes back
    to a caller that calls the new tally(), and one asleep in the new nap()
    to one that calls the old tally(); livepatch keeps each system call on
    one version, kGraft refuses the disable until its patching is
    finalized, kpatch and Ksplice never find nap() off the sleeper's stack."""
    res, log, values, _ = run("immediate-both-ways/scenario.toml", model)
    units = list(zip(values[("sleeper", 1)], values[("sleeper", 2)]))
    sound(res)
    if model == "immediate":
        # woken in the old nap(), it calls the new tally(); woken in the new
        # nap(), the old tally()
        assert not kernel_safe(res)
        assert units[:3] == [(0, 1), (1, 0), (0, 0)]
        return
    assert kernel_safe(res) and all(a == b for a, b in units)
    if model == "livepatch":
        assert [u[0] for u in units] == [0, 1, 0, 0, 0][:len(units)]
        assert [(t["target"], t["result"]) for t in res.transitions] == [("patched", "completed"),
                                                                         ("unpatched", "completed")]
    if model == "kgraft":
        assert [e["action"] for e in res.errors] == ["disable nap_fix"] and units[-1] == (1, 1)


# ---- kGraft: a kthread's safe point inside a patched function -----------------------------------

SAFEPOINT_INSIDE = {"immediate": "completed", "stop_machine": "failed", "ksplice": "failed",
                    "kgraft": "completed", "livepatch": "stalled"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_kthread_safe_point_inside_a_patched_function(model):
    """kGraft checks no stack: the kthread migrates at the safe point it
    passes inside the old work(), which then calls the new part_b(). Its
    units run from one safe point to the next, so kGraft keeps its promise
    and no such unit mixes; one work() activation does (scenario-work.toml),
    as under immediate. livepatch never finds work() off the kthread's
    stack."""
    res, log, values, _ = run("kgraft-safepoint-inside/scenario.toml", model)
    assert res.outcome == SAFEPOINT_INSIDE[model] and kernel_safe(res)
    sound(res)
    work, _, _, _ = run("kgraft-safepoint-inside/scenario-work.toml", model)
    sound(work)
    assert (work.inconsistent_units > 0) == (model in ("kgraft", "immediate"))
    if model == "kgraft":
        # the first work() after the enable: the old one's tail (key 3 = 0)
        # calls the new part_b() (key 2 = 1)
        tails, parts = values[("kworker", 3)], values[("kworker", 2)]
        first_new = parts.index(1)
        assert tails[first_new] == 0
        assert res.transitions[0]["attempts"] == 1
    if model == "livepatch":
        assert res.transitions[0]["blockers"][0]["stack"][-1] == "(sleeping on function work)"
        assert collapse(values[("kworker", 2)]) == [0]


# ---- two patches of one module function, the module loaded after both ------------------

TWO_MODULE_PATCHES = {"immediate": 2, "stop_machine": 1, "ksplice": 0, "kgraft": 2, "livepatch": 2}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_two_patches_for_a_module_that_loads_after_both(model):
    """kpatch_module_notify_coming() (kmod/core/core.c) links the first
    patch in kpmod_list with an unlinked object for the coming module and
    stops there (goto done): p1's codec_encode runs, p2's object is never
    linked. klp_module_coming() applies every patch (the newest, p2, on
    top); kGraft's and the first live patching's module hooks do too.
    Ksplice refuses both updates (TARGET_NOT_LOADED)."""
    res, log, values, _ = run("kpatch-two-patches-module/scenario.toml", model)
    sound(res)
    assert kernel_safe(res)
    for i in range(2):
        assert set(values[(f"client{i}", 3)]) == {TWO_MODULE_PATCHES[model]}
        assert collapse([v >= 0 for v in values[(f"client{i}", 1)]]) == [False, True]
    if model == "stop_machine":
        assert log.count("kpatch: patching newly loaded module 'codec'") == 1
    if model == "livepatch":
        assert [line for line in log if "loading module" in line] == [
            "livepatch: applying patch 'p1' to loading module 'codec'",
            "livepatch: applying patch 'p2' to loading module 'codec'"]


# ---- a module loaded while its patch is being removed ----------------------------------

@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_module_loaded_during_the_unpatching_transition(model):
    """klp_module_coming() applies the patch in its unpatching transition
    with func->transition set: the clients, switched to UNPATCHED, never
    run the new drv_fn. kpatch's unregister attempts leave the patch in
    kpmod_list between them, so the coming module is linked and runs the
    new drv_fn until the attempt that passes (kpatch_module_notify_coming,
    kpatch_unregister). kGraft and immediate: the old drv_fn only. Ksplice
    refused the update (drv not loaded)."""
    res, log, values, _ = run("module-mid-unpatch/scenario.toml", model)
    sound(res)
    assert kernel_safe(res)
    for i in range(2):
        assert collapse(values[(f"client{i}", 2)]) == ([1, 0] if model == "stop_machine" else [0])
    assert collapse(values[("waiter", 3)]) == ([0] if model == "ksplice" else [0, 1, 0])
    if model == "ksplice":
        assert [e["action"] for e in res.errors] == ["enable fix", "disable fix"]
        return
    assert res.outcome == "completed" and not res.errors
    if model == "livepatch":
        assert log.index("livepatch: applying patch 'fix' to loading module 'drv'") < \
            log.index("livepatch: 'fix': completing unpatching transition")
    if model == "stop_machine":
        assert log.index("kpatch: patching newly loaded module 'drv'") < log.index("kpatch: unloaded patch module 'fix'")


# ---- an atomic replace whose transition a module of the replaced patch comes into --------

REPLACE_MODULE = {"immediate": [0], "stop_machine": [1, 0], "ksplice": [0], "kgraft": [0], "livepatch": [0]}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_module_of_the_replaced_patch_loaded_during_an_atomic_replace(model):
    """klp_module_coming() applies the replaced p1 and then the replace
    p2's nop (klp_add_nops made a dynamic object for drv) with
    func->transition set: the switched clients take the nop, the original
    drv_fn, never p1's; completion unpatches p1 and discards the nop.
    kpatch links p1's drv between p2's attempts (p1 is in kpmod_list),
    and the replace's switch takes every function of the hash out.
    kGraft's kgr_patch_code_delayed() puts p1's drv_fn, which the
    replace_all p2 does not carry, to KGR_PATCH_REVERT_SLOW with loc_old =
    loc_name: the migrated clients run the original (they ran p1's v1
    until p2 was finalized: a regression)."""
    res, log, values, _ = run("replace-module-mid-transition/scenario.toml", model)
    sound(res)
    assert kernel_safe(res)
    for i in range(2):
        assert collapse(values[(f"client{i}", 2)]) == REPLACE_MODULE[model]
    assert collapse(values[("waiter", 3)])[-1] == 2
    if model == "livepatch":
        assert [line for line in log if "loading module" in line] == [
            "livepatch: applying patch 'p1' to loading module 'drv'",
            "livepatch: applying patch 'p2' to loading module 'drv'"]
        assert res.transitions[1]["completed_at"] > 660000


# ---- an atomic replace written during another patch's transition ------------------------

REPLACE_DURING = {"immediate": (None, 2), "stop_machine": ("-EBUSY", 1), "ksplice": (None, 2),
                  "kgraft": ("-EAGAIN", 1), "livepatch": ("-EBUSY", 1)}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_an_atomic_replace_written_during_another_transition(model):
    """__klp_enable_patch() refuses with -EBUSY while klp_transition_patch
    is set; kgr_modify_kernel() with -EAGAIN while a patching is not
    finalized; Ksplice's stage write waits for module_mutex (stage_store)
    and applies the replace after p1's update; immediate has no transition
    to wait for."""
    res, log, values, _ = run("replace-during-transition/scenario.toml", model)
    sound(res)
    assert kernel_safe(res)
    errno_name, final = REPLACE_DURING[model]
    if errno_name is None:
        assert not res.errors
    else:
        assert [e["action"] for e in res.errors] == ["enable p2"] and errno_name in res.errors[0]["error"]
    assert collapse(values[("waiter", 3)]) == [0, final]
    if model == "ksplice":
        assert [line for line in log if "successfully" in line] == [
            "ksplice: Update p1 applied successfully", "ksplice: Update p1 reversed successfully",
            "ksplice: Update p2 applied successfully"]


GOING_ERRORS = {"immediate": [], "livepatch": [], "kgraft": [],
                "stop_machine": [("unload drv", "-EAGAIN"), ("load drv", "-EEXIST")],
                "ksplice": [("enable p1", "-ENOENT"), ("unload drv", "-EBUSY"), ("load drv", "-EEXIST")]}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_module_of_the_replaced_patch_going_and_coming_during_an_atomic_replace(model):
    """klp_module_going() reverts p1 and p2's nop from drv, the second
    klp_module_coming() applies both again; kGraft's going module takes
    the stubs of every patch off, the one in progress included
    (__kgr_handle_going_module), and the second kgr_module_init() reverts
    p1's drv_fn for the migrated tasks again (a regression: the replace's
    stale stub for the first drv made the second run p1's v1). kpatch's
    link holds drv: the rmmod and the second insmod are refused."""
    res, log, values, _ = run("replace-module-mid-transition/scenario-going.toml", model)
    sound(res)
    assert kernel_safe(res)
    assert [(e["action"], e["error"].split("(")[-1].split(":")[0].rstrip(")")) for e in res.errors] == \
        GOING_ERRORS[model]
    for i in range(2):
        assert collapse(values[(f"client{i}", 2)]) == REPLACE_MODULE[model]
        loaded = [v >= 0 for v in values[(f"client{i}", 1)]]
        assert collapse(loaded) == ([False, True, False, True] if model in ("immediate", "livepatch", "kgraft")
                                    else [False, True])


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_module_of_the_replaced_patch_loaded_after_an_atomic_replace(model):
    """Once the replace is over the replaced patch is gone under every
    model (klp_free_replaced_patches_async and klp_discard_nops; kpatch's
    kpmod_list; kgr_finalize): drv loads unpatched and nothing holds it."""
    res, log, values, _ = run("replace-module-mid-transition/scenario-after.toml", model)
    sound(res)
    assert kernel_safe(res)
    for i in range(2):
        assert collapse(values[(f"client{i}", 2)]) == [0]
    assert not any("loading module" in line or "newly loaded" in line for line in log)
    assert [e["action"] for e in res.errors] == (["enable p1"] if model == "ksplice" else [])


TWO_REPLACED = {"immediate": [0], "stop_machine": [1, 0], "ksplice": [0], "kgraft": [0], "livepatch": [0]}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_module_of_two_replaced_patches_loaded_during_an_atomic_replace(model):
    """Two finalized patches of drv_fn, drv loaded during a replace that
    leaves it out: livepatch's nop goes on top of both; kGraft reverts the
    last finalized one for the migrated tasks (a regression: p1b's v3,
    pushed after the nop made for p1's, ran until the replace was
    finalized); kpatch links the first patch only (p1's v1)."""
    res, log, values, _ = run("replace-module-mid-transition/scenario-two.toml", model)
    sound(res)
    assert kernel_safe(res)
    for i in range(2):
        assert collapse(values[(f"client{i}", 2)]) == TWO_REPLACED[model]
    if model == "livepatch":
        assert [line for line in log if "loading module" in line] == [
            f"livepatch: applying patch '{p}' to loading module 'drv'" for p in ("p1", "p1b", "p2")]


# ---- kGraft's patch references ------------------------------------------------------------

REFS_ERRORS = {"kgraft": [("disable p1", "-EBUSY"), ("disable p1", "-EBUSY"), ("disable p2", "-EINVAL")],
               "livepatch": [("disable p1", "-EBUSY"), ("disable p1", "-EINVAL"), ("disable p2", "-EINVAL")],
               "immediate": [("disable p1", "-EBUSY"), ("disable p1", "-EINVAL"), ("disable p2", "-EINVAL")]}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_kgraft_references_from_the_write_and_kept_by_replaced_patches(model):
    """kgr_modify_kernel(): kgr_refs_inc() at the write of a patch that is
    not replace_all, so p1 is referenced while p2 is still in progress
    (-EBUSY before -EAGAIN); kgr_remove_patches_fast() takes replaced
    patches off kgr_patches with their references: p1 -EBUSY, p2 -EINVAL.
    (The model refused with -EAGAIN, then -EINVAL: a regression.)"""
    res, log, values, _ = run("kgraft-refs/scenario.toml", model)
    sound(res)
    assert kernel_safe(res)
    want = REFS_ERRORS.get(model, [("disable p1", "-EINVAL"), ("disable p2", "-EINVAL")])
    assert [(e["action"], e["error"].split("(")[-1].split(":")[0]) for e in res.errors] == want
    if model == "kgraft":
        assert all("this patch is still referenced" in e["error"] for e in res.errors[:2])
    for i in range(3):
        assert collapse(values[(f"user{i}", 1)]) == [0, 1, 2, 0]
        assert collapse(values[(f"user{i}", 2)]) == [0, 2, 0]


# ---- a module loaded while a second patch of its function is in transition --------------

STACKED_MODULE = {"immediate": [2], "stop_machine": [1, 2], "ksplice": [0], "kgraft": [2], "livepatch": [2]}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_module_loaded_while_a_second_patch_of_its_function_is_in_transition(model):
    """klp_module_coming() applies the finalized p1, then p2 in transition
    on top (the switched clients run v2); kgr_patch_code_delayed() gives
    p2 the slow stub over p1's version; kpatch links p1's object at the
    load (p2 is between its attempts) and p2's next attempt links its own."""
    res, log, values, _ = run("stacked-module-mid-transition/scenario.toml", model)
    sound(res)
    assert kernel_safe(res)
    for i in range(2):
        assert collapse(values[(f"client{i}", 2)]) == STACKED_MODULE[model]
    assert collapse(values[("waiter", 3)]) == ([0] if model == "ksplice" else [0, 1, 2])
    if model == "stop_machine":
        assert log.index("kpatch: patching newly loaded module 'drv'") < log.index("kpatch: loaded patch module 'p2'")


# ---- a force, then a patch of the same function ----------------------------------------

@pytest.mark.parametrize("rel,safe", [("nop-over-forced/scenario.toml", False),
                                      ("nop-over-forced/scenario-stacked.toml", True)])
def test_a_patch_checks_only_the_version_just_below_it_after_a_force(rel, safe):
    """klp_check_stack_func() checks, patching, the next entry of the
    func_stack (prev->new_func) or the original: after p2 was forced over a
    task asleep in p1's f(), p3 (a nop of f(), or a plain stacked f())
    switches that task at once. The promise oracle held livepatch to every
    older version of f() and reported that switch as the model's breach."""
    res, log, values, _ = run(rel, "livepatch")
    assert res.outcome == "completed" and kernel_safe(res) == safe
    sound(res)
    assert [t["result"] for t in res.transitions] == ["completed"] * 3
    assert res.transitions[2]["completed_at"] < 900_000           # long before the sleeper wakes (31 s)
    assert values[("sleeper", 1)][:1] == [1]                      # it woke in p1's f()


def test_the_promise_twins_agree_on_a_switch_with_an_older_forced_version_on_the_stack():
    from emu.runs import promise
    r = runner("nop-over-forced/scenario.toml")
    res, m, mod = r.execute(r.plan("livepatch", 0), keep=True)
    try:
        assert promise.check(m, mod.patches, "livepatch") == promise.check(m, mod.patches, "livepatch",
                                                                             fast=False) == []
    finally:
        m.engine.close()


# ---- the eighth sweep ------------------------------------------------------------------

def timed(rel: str, model: str, key: int, **variant):
    """One run (seed 0): (result, log lines, {task: [(seconds, to 0.01 s; value), ...]} of key)."""
    r = runner(rel, **variant)
    res, m, _ = r.execute(r.plan(model, 0), keep=True)
    try:
        out: dict = {}
        for clock, kind, task, k, value, _ in m.trace.records():
            if kind == core.EV_OBSERVE and k == key:
                out.setdefault(m.tasks[task].name, []).append((round(clock / m.seconds(1), 2), value))
        return res, [line for _, line in m.log], out
    finally:
        m.engine.close()


BYSTANDER = {"immediate": "completed", "stop_machine": "failed", "ksplice": "failed", "kgraft": "completed",
             "livepatch": "completed"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_fake_signals_go_only_to_the_tasks_still_pending(model):
    """klp_send_signals() skips a task without TIF_PATCH_PENDING: the
    bystander, switched by its stack at the first attempt, sleeps its whole
    25 s while the blocker is woken at the 16th attempt. kGraft has no
    stack check: both are in progress at its 2 s check and both are
    signalled. The stop_machine models and immediate signal nobody."""
    res, log, woke = timed("signal-bystander/scenario.toml", model, 3)
    _, _, bystander = timed("signal-bystander/scenario.toml", model, 5)
    assert res.outcome == BYSTANDER[model] and kernel_safe(res)
    sound(res)
    (t_block, left_block), = woke["blocker"][:1]
    (t_by, left_by), = bystander["bystander"][:1]
    if model == "livepatch":
        assert 15 < t_block < 16 and left_block > 0 and (t_by, left_by) == (25.0, 0)
        assert log.count("livepatch: signaling remaining tasks") == 1
        assert 15 < res.latency / 100_000 < 17
    elif model == "kgraft":
        assert 2 < t_block < 2.5 and 2 < t_by < 2.5 and left_block > 2000 and left_by > 2000
    else:
        assert (t_block, left_block) == (t_by, left_by) == (25.0, 0)


def test_before_5_1_no_task_is_signalled_and_the_blocker_sleeps_it_out():
    res, log, woke = timed("signal-bystander/scenario.toml", "livepatch", 3, kernel="4.18")
    assert res.outcome == "completed" and woke["blocker"][0] == (25.0, 0)
    assert not any("signaling" in line for line in log)
    sound(res)


CADENCE = {"immediate": "completed", "stop_machine": "failed", "ksplice": "failed", "kgraft": "completed",
           "livepatch": "completed"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_fake_signals_come_every_15_attempts(model):
    """klp_signals_cnt counts the attempts that left tasks behind; the
    signals go out at 15, 30 and 45 (SIGNALS_TIMEOUT) and "signaling
    remaining tasks" is printed at the first only. kGraft wakes a kthread
    in progress at the code change and at each 2 s check."""
    res, log, woke = timed("signal-cadence/scenario.toml", model, 2)
    assert res.outcome == CADENCE[model] and kernel_safe(res)
    sound(res)
    times = [round(t, 1) for t, _ in woke.get("poller", [])]
    assert all(v == 0 for _, v in woke.get("poller", []))     # it never re-entered poll_loop()
    if model == "livepatch":
        assert times == [15.0, 30.0, 45.0]
        assert log.count("livepatch: signaling remaining tasks") == 1
        assert "livepatch: forcing remaining tasks to the patched state" in log
    elif model == "kgraft":
        assert times[0] == 0.2 and 48 < times[-1] < 50.2 and all(1.9 < b - a < 2.1 for a, b in zip(times, times[1:]))
    else:
        assert times == []


def test_before_5_1_the_kthread_is_never_woken_and_force_completes():
    res, log, woke = timed("signal-cadence/scenario.toml", "livepatch", 2, kernel="4.18")
    assert res.outcome == "completed" and "poller" not in woke
    sound(res)


def test_a_reversed_atomic_replace_holds_a_task_in_the_original_function_of_a_nop():
    """klp_init_object_loaded() sets a nop's new_func to old_func, and an
    unpatching check looks at func->new_func: reversing p2 holds the walker
    while it sleeps in the original f() (reached through the nop), until
    12.2 s, not at the first retry after the disable (10 s)."""
    res, log, values, _ = run("replace-nop-reverse/scenario.toml", "livepatch")
    assert res.outcome == "completed" and kernel_safe(res)
    sound(res)
    assert [(t["patch"], t["target"], t["result"]) for t in res.transitions] == [
        ("p1", "patched", "completed"), ("p2", "patched", "reversed"), ("p2", "unpatched", "completed")]
    assert 12.2 <= res.transitions[2]["completed_at"] / 100_000 < 13.1
    assert [b["task"] for b in res.transitions[2]["attempt_log"][0]["blockers"]] == ["walker"]
    assert values[("walker", 1)][:3] == [0, 1, 0]
    assert collapse(values[("holder", 2)]) == [0]


def test_a_patch_whose_state_an_unpatching_patch_carries_higher_is_refused_before_busy():
    """klp_enable_patch() checks klp_is_patch_compatible() (-EINVAL) before
    __klp_enable_patch() sees the transition (-EBUSY), and klp_patches
    holds the patch being removed until its unpatching completes."""
    res, log, values, _ = run("states-unpatching/scenario.toml", "livepatch")
    sound(res)
    assert kernel_safe(res) and res.outcome == "failed"
    assert [t["result"] for t in res.transitions] == ["completed"] * 3
    assert [(e["action"], e["error"].split("(")[-1].split(":")[0]) for e in res.errors] == [
        ("enable p2", "-EINVAL"), ("enable p3", "-EBUSY")]
    assert log.count("livepatch: Livepatch patch (p2) is not compatible with the already installed livepatches.") == 1
    assert res.transitions[2]["patch"] == "p2" and res.transitions[2]["requested_at"] == 800_000


STALE = {"immediate": "completed", "stop_machine": "completed", "ksplice": "failed", "kgraft": "completed",
         "livepatch": "completed"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_stale_return_address_in_a_sleeping_frame_blocks_ksplice_alone(model):
    """Ksplice scans every word of the stack, so the return address into
    g() that leaf() left under nap()'s unwritten pad[] is a conflict; the
    unwinders of kpatch and livepatch never see it."""
    res, log, values, _ = run("ksplice-stale-word/scenario.toml", model)
    assert res.outcome == STALE[model] and kernel_safe(res)
    sound(res)
    if model == "ksplice":
        word = next(line for line in log if "stack check: pid" in line).split(": ")[-1].split()[0]
        m = runner("ksplice-stale-word/scenario.toml").program.base
        assert m.function_at(int(word, 16)).name == "g"
        assert "ksplice: Aborted g_fix.  stack check: to-be-replaced code is busy." in log


SHADOW = HELD / "shadow-replace"


def shadow_machine(model_name: str, p2_pre_patch=None):
    """shadow-replace/README: four tasks, p1 and p2 (replace) counting in
    shadow variables, each freeing them all in its post_unpatch. Returns
    (machine, model, p1, p2, callbacks that ran as (patch, callback))."""
    from emu.images.build import build_c
    from emu.kernel.patch import VMLINUX
    base = build_c([SHADOW / "base.c"], name="base", base=0x400000)
    m = Machine(base, cpus=2, quantum=300)
    for i in range(4):
        m.add_task(f"user{i}", "user_entry", (i,))
    model = make_model(model_name, m)
    ran = []

    def callbacks(name, pre=None):
        def post_unpatch(machine, p, obj):
            ran.append((name, "post_unpatch"))
            model.shadow.free_all(0x1234)

        def note(what, ret=None):
            return lambda machine, p, obj: ran.append((name, what)) or ret

        return {VMLINUX: {"pre_patch": note("pre_patch", pre), "post_patch": note("post_patch"),
                          "pre_unpatch": note("pre_unpatch"), "post_unpatch": post_unpatch}}

    patches = []
    for name, replace_all, pre in (("p1", False, None), ("p2", True, p2_pre_patch)):
        img = build_c([SHADOW / f"{name}.c"], name=name, base=m.module_base(), link_against=base,
                      keep={"account"})
        m.load(img)
        patches.append(model.add(make_patch(m, name, img, ["account"], replace=replace_all,
                                            callbacks=callbacks(name, pre))))
    return m, model, patches[0], patches[1], ran


def counts(m, task: str, key: int) -> list[int]:
    return [e.value for e in m.trace if e.kind == core.EV_OBSERVE and e.key == key and m.tasks[e.task].name == task]


@pytest.mark.parametrize("model_name", ["livepatch", "stop_machine", "kgraft"])
def test_shadow_variables_outlive_an_atomic_replace_whose_replaced_patch_would_free_them(model_name):
    """klp_complete_transition() takes the replaced p1 off with no callback,
    and kpatch_register() unloads it without them: p1's post_unpatch never
    frees the counts, p2 goes on counting; p2's own post_unpatch frees
    them at its disable. kGraft has no callbacks: they outlive p2 too."""
    m, model, p1, p2, ran = shadow_machine(model_name)
    try:
        m.at(m.seconds(0.1), lambda: model.enable(p1))
        m.at(m.seconds(3), lambda: model.enable(p2))
        m.run(until=m.seconds(6))
        assert [t.result for t in model.transitions] == ["completed", "completed"]
        assert len(model.shadow.vars) == 4
        m.at(m.seconds(6.1), lambda: model.disable(p2))
        m.run(until=m.seconds(9))
        assert [t.result for t in model.transitions][-1] == "completed"
        for i in range(4):
            assert collapse(counts(m, f"user{i}", 1)) == [0, 1, 2, 0]
            n = counts(m, f"user{i}", 2)
            assert n == list(range(1, len(n) + 1)) and len(n) > 50
        assert ("p1", "post_unpatch") not in ran and ("p1", "pre_unpatch") not in ran
        if model_name == "kgraft":
            assert ran == [] and len(model.shadow.vars) == 4
        else:
            assert ran[-1] == ("p2", "post_unpatch") and model.shadow.vars == {}
    finally:
        m.engine.close()


@pytest.mark.parametrize("model_name", ["livepatch", "stop_machine"])
def test_an_atomic_replace_refused_by_its_pre_patch_leaves_the_older_patch_running(model_name):
    """__klp_enable_patch(): the pre_patch failure cancels the transition
    ("canceling patching transition, going to unpatch") before anything of
    p1 is touched; kpatch_apply_patch() fails inside stop_machine and
    kpatch_register() resets the replaced funcs' op. p1 keeps running with
    its counts, no callback of p1 runs, and no post_unpatch of p2 (its
    pre_patch did not pass)."""
    m, model, p1, p2, ran = shadow_machine(model_name, p2_pre_patch=-errno.ENODEV)
    refused = []

    def enable_p2():
        try:
            model.enable(p2)
        except Exception as exc:          # livepatch refuses the write itself
            refused.append(exc)
    try:
        m.at(m.seconds(0.1), lambda: model.enable(p1))
        m.at(m.seconds(3), enable_p2)
        m.run(until=m.seconds(6))
        log = [line for _, line in m.log]
        assert ran == [("p1", "pre_patch"), ("p1", "post_patch"), ("p2", "pre_patch")]
        assert model.transitions[0].result == "completed" and p1.enabled
        for i in range(4):
            assert collapse(counts(m, f"user{i}", 1)) == [0, 1]
            n = counts(m, f"user{i}", 2)
            assert n == list(range(1, len(n) + 1))
        assert len(model.shadow.vars) == 4
        if model_name == "livepatch":
            assert len(refused) == 1 and "-ENODEV" in str(refused[0])
            assert log[-5:] == ["livepatch: pre-patch callback failed for object 'vmlinux'",
                                "livepatch: failed to enable patch 'p2'",
                                "livepatch: 'p2': canceling patching transition, going to unpatch",
                                "livepatch: 'p2': completing unpatching transition",
                                "livepatch: 'p2': unpatching complete"]
        else:
            assert model.transitions[1].result == "failed" and "kpatch: pre-patch callback failed!" in log
            assert "kpatch: unloaded patch module 'p1'" not in log
    finally:
        m.engine.close()


@pytest.mark.parametrize("model", ["stop_machine", "livepatch"])
def test_kpatch_checks_the_active_version_after_a_forced_function(model):
    """kpatch_backtrace_address_verify() checks the active func's new code
    (kpatch_get_func) once a function is patched: p2's check looks at p1's
    f(), not at the original f() that p1's force left the sleeper in, and
    p2 loads at once. The promise oracle held kpatch to every version but
    p2's and reported that load as the model's breach."""
    from emu.runs import promise
    r = runner("kpatch-force-stacked/scenario.toml")
    res, m, mod = r.execute(r.plan(model, 0), keep=True)
    try:
        log = [line for _, line in m.log]
        sound(res)
        assert kernel_safe(res)
        assert promise.check(m, mod.patches, model, fast=False) == []
        if model == "stop_machine":
            assert res.outcome == "completed" and [t["attempts"] for t in res.transitions] == [1, 1]
            assert log == ["kpatch: loaded patch module 'p1'", "kpatch: loaded patch module 'p2'"]
        else:
            assert res.outcome == "failed" and [e["action"] for e in res.errors] == ["enable p2"]
    finally:
        m.engine.close()


@pytest.mark.parametrize("model", ["stop_machine", "livepatch"])
def test_kpatch_disabling_an_older_patch_checks_its_own_version_too(model):
    """kpatch_unregister() marks p1's funcs KPATCH_OP_UNPATCH before its
    check; kpatch_backtrace_address_verify() checks the active f() (p2's,
    where nobody is) and, in its walk of the hash, p1's own f(), where the
    sleeper sleeps since p2's force let it stay: each of the 5 attempts
    fails. The model checked the active version alone and removed p1 under
    the sleeper (which the promise oracle reported as its breach).
    livepatch's p2 waits for the sleeper, so the disable finds it busy."""
    res, log, _, _ = run("kpatch-disable-under-forced/scenario.toml", model)
    sound(res)
    if model == "stop_machine":
        assert [(t["patch"], t["result"], t["attempts"]) for t in res.transitions] == [
            ("p1", "completed", 1), ("p2", "completed", 1), ("p1", "failed", 5)]
        assert log.count("kpatch: activeness safety check failed for f") == 5
        assert "kpatch: unloaded patch module 'p1'" not in log
        assert res.transitions[2]["attempt_log"][0]["blockers"][0]["stack"][0].startswith("f+0x")
    else:
        assert [e["action"] for e in res.errors] == ["disable p1"] and "-EBUSY" in res.errors[0]["error"]


FORCE_FUNCTION = {"immediate": ("completed", False), "stop_machine": ("completed", False),
                  "ksplice": ("failed", True), "kgraft": ("completed", True), "livepatch": ("completed", True)}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_function_marked_force_is_skipped_by_kpatch_alone(model):
    """kpatch_backtrace_address_verify() skips a func marked force; Ksplice's
    check_address() compares every word with every safety record of the
    update, with no exception (lpemu's Ksplice skipped the function too and
    applied the update at once); livepatch and kGraft have no such flag."""
    res, log, values, _ = run("force-function/scenario.toml", model)
    outcome, safe = FORCE_FUNCTION[model]
    assert res.outcome == outcome and kernel_safe(res) == safe
    sound(res)
    if model == "ksplice":
        assert res.transitions[0]["attempts"] == 5
        assert log[-1] == "ksplice: Aborted fix.  stack check: to-be-replaced code is busy."
    if model == "stop_machine":
        assert res.transitions[0]["attempts"] == 1 and values[("sleeper", 2)][0] == 1


def test_ksplice_says_an_update_was_applied_and_reversed_as_ksplice_does():
    """apply_update(): "ksplice: Update %s applied successfully";
    reverse_update(): "ksplice: Update %s reversed successfully" (it said
    kpatch's "loaded patch module" and "unloaded patch module")."""
    res, log, _, _ = run("stacked-disable/scenario.toml", "ksplice")
    assert [line for line in log if "successfully" in line or "patch module" in line] == [
        "ksplice: Update p1 applied successfully", "ksplice: Update p2 applied successfully",
        "ksplice: Update p2 reversed successfully"]


# ---- a task asleep in a function reached by a tail call ----------------------------------

TAIL_CALL = {"immediate": ("completed", False), "stop_machine": ("completed", False),
             "ksplice": ("completed", False), "kgraft": ("completed", True), "livepatch": ("completed", False)}
NO_SIBLING = {"immediate": ("completed", False), "stop_machine": ("failed", True),
              "ksplice": ("failed", True), "kgraft": ("completed", True), "livepatch": ("completed", True)}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_function_that_tail_called_its_way_off_the_stack_is_not_on_it(model):
    """gcc -O2 ends foo() with `jmp nap`: asleep in nap(), the sleeper holds
    no return address inside foo(), so every stack check passes (kpatch,
    Ksplice at their first attempt, livepatch by its check) and the old
    foo()'s value reaches the new tally(); kGraft keeps the whole system
    call in one universe. Compiled without sibling calls, foo() stays on
    the stack and the checking models wait or fail instead."""
    res, log, values, _ = run("tail-call-asleep/scenario.toml", model)
    outcome, safe = TAIL_CALL[model]
    assert res.outcome == outcome and kernel_safe(res) == safe
    sound(res)
    if not safe:
        assert [h["text"].split(" at t=")[0] for h in res.handovers] == [
            "tally v1 received 10 in its 1st argument, returned by foo v0"]
    if model in ("stop_machine", "ksplice"):
        assert res.transitions[0]["attempts"] == 1
    if model == "livepatch":
        assert res.latency < 1.5 * 100_000                      # long before the sleeper wakes (3 s)
    assert collapse(values[("sleeper", 2)]) == [10, 1010]
    res, log, values, _ = run("tail-call-asleep/scenario-nosibling.toml", model)
    outcome, safe = NO_SIBLING[model]
    assert res.outcome == outcome and kernel_safe(res) == safe
    sound(res)
    if model == "livepatch":                                    # it switched at its kernel exit after 3 s
        assert 2.5 * 100_000 < res.latency < 4 * 100_000


# ---- the stacking order of the first livepatch ------------------------------------------

STACKING_OLD = ([0, 1, 2, 1, 0, 1, 2], [("disable p1", "-EBUSY"), ("enable p2", "-EBUSY")])
STACKING = {"immediate": STACKING_OLD,
            "stop_machine": ([0, 1, 2, 0, 2, 1], [("disable p1", "-EINVAL"), ("enable p2", "-EINVAL")]),
            "ksplice": ([0, 1, 2, 0, 2, 1], [("disable p1", "-EINVAL"), ("enable p2", "-EINVAL")]),
            "kgraft": ([0, 1, 2, 1, 0, 2, 1], [("disable p1", "-EBUSY"), ("enable p2", "-EEXIST")]),
            "livepatch": ([0, 1, 2, 0, 2, 1], [("disable p1", "-EINVAL"), ("enable p2", "-EINVAL")])}


@pytest.mark.parametrize("model,kernel", [(m, None) for m in MODEL_NAMES] + [("livepatch", "4.18")])
def test_the_stacking_order_of_two_patches_of_one_function(model, kernel):
    """Livepatch 4.0 to 5.0 "enforce stacking" both ways over every
    registered patch (only the last enabled can be disabled, only the first
    disabled enabled: -EBUSY), and so does the immediate model, the first
    livepatch (4.0 to 4.11): it let both writes through. kpatch, Ksplice
    and livepatch from 5.1 keep no order; kGraft's references refuse the
    older patch's revert alone."""
    res, log, values, _ = run("stacking-order/scenario.toml", model, kernel=kernel)
    sound(res)
    assert kernel_safe(res)
    f, errors = STACKING_OLD if kernel == "4.18" else STACKING[model]
    assert [(e["action"], e["error"].split("(")[-1].split(":")[0]) for e in res.errors] == errors
    if model == "immediate":
        assert "only the first disabled patch can be enabled ('p1' is disabled)" in res.errors[1]["error"]
    for i in range(3):
        assert collapse(values[(f"user{i}", 1)]) == f


def test_the_first_livepatch_enforces_its_stacking_order(compile_c):
    """__klp_disable_patch() and __klp_enable_patch() of 4.0 to 4.11 refuse
    with -EBUSY what the order forbids, before anything changes; the
    immediate model disabled the older of two stacked patches and enabled
    a patch whose predecessor was disabled. A replaced patch leaves the
    order (it cannot come back as anything but a new registration)."""
    from emu.errors import Busy
    base = compile_c(STACKING_BASE)
    m = Machine(base, cpus=1)
    m.add_task("user", "user_entry", (1,))
    imgs = []
    for i in (1, 2, 3):
        at = imgs[-1].hi + 0x10000 & ~0xfff if imgs else m.module_base()
        imgs.append(compile_c(STACKING_PATCH % i, name=f"p{i}", base=at, link_against=base, keep={"f"}))
        m.load(imgs[-1])
    im = make_model("immediate", m)
    p1, p2, p3 = (im.add(make_patch(m, f"p{i}", img, ["f"], replace=i == 3)) for i, img in zip((1, 2, 3), imgs))

    def settle():
        m.run(until=m.now + m.seconds(0.2))
    im.enable(p1)
    settle()
    im.enable(p2)
    settle()
    with pytest.raises(Busy, match="only the last enabled patch can be disabled"):
        im.disable(p1)
    assert p1.enabled and p2.enabled and len(im.transitions) == 2
    im.disable(p2)
    settle()
    im.disable(p1)
    settle()
    with pytest.raises(Busy, match=r"only the first disabled patch can be enabled \('p1' is disabled\)"):
        im.enable(p2)
    im.enable(p1)
    settle()
    im.enable(p3)                            # a replace overrides even disabled patches
    settle()
    assert im.registered == [p2, p3] and not p1.enabled
    assert observed(m, 1)[-1][1] == 3


STACKING_BASE = """
volatile long zero;
__attribute__((noinline)) long f(void) { lpemu_observe(1, 0 + zero); return 0; }
long user_entry(long t) { f(); lpemu_sleep(t); return 0; }
"""
STACKING_PATCH = """
extern volatile long zero;
__attribute__((noinline)) long f(void) { lpemu_observe(1, %d + zero); return 0; }
"""


# ---- a task forked during a transition --------------------------------------------------

FORK = {"immediate": ("completed", False, [1]), "stop_machine": ("failed", True, [0]),
        "ksplice": ("failed", True, [0]), "kgraft": ("completed", True, [1]),
        "livepatch": ("completed", True, [1])}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_task_forked_during_a_transition(model):
    """klp_copy_process() gives the module's loader its parent's state and
    pending flag, and it passes the kernel exits of fork and exec before
    init_module(): it runs the patched probe() while the sleeper still holds
    the transition; kGraft's child migrates at the same exits. kpatch has
    nothing per task (the loader runs what the sites say between attempts);
    Ksplice's load waits for module_mutex until the update aborts."""
    res, log, values, _ = run("fork-mid-transition/scenario.toml", model)
    outcome, safe, init = FORK[model]
    assert res.outcome == outcome and kernel_safe(res) == safe
    sound(res)
    assert values[("insmod-drv", 1)] == init
    assert collapse(values[("sleeper", 1)])[:1] == ([1] if model == "immediate" else [0])
    if model == "livepatch":
        assert 9 * 100_000 < res.latency < 11 * 100_000            # the sleeper woke at 10 s
    if model == "ksplice":
        aborted = next(t for t, line in enumerate(log) if line.startswith("ksplice: Aborted fix."))
        assert res.transitions[0]["attempts"] == 5 and aborted == len(log) - 1


FORK_UNPATCH = {"immediate": ("completed", False), "stop_machine": ("failed", True),
                "ksplice": ("failed", True), "kgraft": ("completed", True), "livepatch": ("completed", True)}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_task_forked_during_an_unpatching_transition(model):
    """Forked while the sleeper holds the unpatching transition asleep in
    the new nap(), the loader passes its kernel exits into the target
    state (UNPATCHED; kGraft: the old universe) and runs the original
    probe(); under every model init runs the original."""
    res, log, values, _ = run("fork-mid-transition/scenario-unpatch.toml", model)
    outcome, safe = FORK_UNPATCH[model]
    assert res.outcome == outcome and kernel_safe(res) == safe
    sound(res)
    assert values[("insmod-drv", 1)] == [0]
    if model in ("livepatch", "kgraft"):
        assert [t["result"] for t in res.transitions] == ["completed", "completed"]
        assert collapse(values[("sleeper", 1)]) == [0, 1, 0]       # the new probe() after the new nap()
    else:
        assert [e["action"] for e in res.errors] == (["disable fix"] if model != "immediate" else [])
    if model == "livepatch":                                      # the sleeper left the new nap() at 6 s
        assert res.transitions[1]["completed_at"] > 6 * 100_000


def test_a_run_goes_on_two_cycles_after_an_action_that_waited_for_a_mutex():
    """A load written while Ksplice's update holds module_mutex runs when
    the update aborts (5.3 s), three seconds after its time: the run ended
    two cycles after the action's time and the transition's, so the
    module's init never ran (until = "transitions", the default)."""
    scn = scenario.load(HELD / "fork-mid-transition/scenario.toml")
    scn.fuzz = replace(scn.fuzz, until="transitions", horizon=20.0)
    r = Runner(scenario.build(scn))
    res, m, _ = r.execute(r.plan("ksplice", 0), keep=True)
    try:
        assert res.outcome == "failed"
        loader = next(t for t in m.tasks if t.name == "insmod-drv")
        ran = [e.value for e in m.trace if e.kind == core.EV_OBSERVE and e.task == loader.tid]
        assert ran == [0] and loader.state is RunState.EXITED
    finally:
        m.engine.close()


# ---- fake signals against uninterruptible sleeps ----------------------------------------

UNINTERRUPTIBLE = {"immediate": "completed", "stop_machine": "failed", "ksplice": "failed",
                   "kgraft": "stalled", "livepatch": "stalled"}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_fake_signals_leave_an_uninterruptible_sleeper_asleep(model):
    """klp_send_signals(): wake_up_state(TASK_INTERRUPTIBLE) for a kthread,
    set_notify_signal() for a user task: neither ends a TASK_UNINTERRUPTIBLE
    sleep, and the transition stalls where fake-signals completes. kGraft
    wakes its kthreads with wake_up_process(), which does (the poller
    migrates at its safe point); its user task's fake signal does not."""
    res, log, values, _ = run("signal-uninterruptible/scenario.toml", model)
    assert res.outcome == UNINTERRUPTIBLE[model] and kernel_safe(res)
    sound(res)
    assert ("sleeper", 3) not in values                         # no sleep of it ended within 30 s
    if model == "livepatch":
        assert "livepatch: signaling remaining tasks" in log
        assert [b["task"] for b in res.transitions[0]["blockers"]] == ["sleeper", "poller"]
    if model == "kgraft":
        assert values[("poller", 4)][0] > 4900                  # woken at once, 49 s left
        assert [b["task"] for b in res.transitions[0]["blockers"]] == ["sleeper"]
    elif model != "immediate":
        assert ("poller", 4) not in values


# ---- a pre_patch callback that refuses, under every model --------------------------------

PRE_PATCH_REFUSED = {"livepatch": (1, 0), "stop_machine": (1, 1), "ksplice": (1, 0)}


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_a_pre_patch_callback_that_refuses(compile_c, model_name):
    """pre_patch -ENODEV on a patch of g(), the worker calling g() all the
    time, the sleeper asleep outside it. livepatch (__klp_enable_patch):
    "pre-patch callback failed", klp_cancel_transition() ("canceling
    patching transition, going to unpatch"), the write fails with -ENODEV,
    nothing patched, no post_unpatch (post_unpatch_enabled stays false).
    kpatch (kpatch_apply_patch): the check passes, pre_patch refuses inside
    stop_machine, the load fails with -ENODEV; the kpatch tool retries only
    a busy load (-EBUSY), so there is no second attempt. Ksplice: the pre
    hook fails before any stop_machine. kGraft and immediate have no
    callbacks: the patch applies. Every model: post_unpatch never runs."""
    from emu.models.refusals import PatchRefused
    m, model, base, mod, img = ksplice_world(compile_c, model_name, sleep=1)
    log: list = []
    patch = model.add(make_patch(m, "p", img, ["g"], callbacks=ks_callbacks(log, fail=-errno.ENODEV)))
    m.run(until=m.seconds(0.1))
    refused = []
    try:
        model.enable(patch)
    except PatchRefused as exc:
        refused.append(exc)
    m.run(until=m.seconds(6))
    lines = [line for _, line in m.log]
    if model_name in ("kgraft", "immediate"):
        assert not refused and log == [] and patch.enabled
        assert model.transitions[0].result == "completed"
        assert observed(m, 2)[-1][1] == 2
        return
    pre_calls, attempts = PRE_PATCH_REFUSED[model_name]
    assert [n for n, *_ in log] == ["pre_patch"] * pre_calls
    assert not patch.enabled and set(v for _, v in observed(m, 2)) == {1}
    if model_name == "livepatch":
        assert len(refused) == 1 and refused[0].errno == errno.ENODEV
        assert lines[-5:] == ["livepatch: pre-patch callback failed for object 'vmlinux'",
                              "livepatch: failed to enable patch 'p'",
                              "livepatch: 'p': canceling patching transition, going to unpatch",
                              "livepatch: 'p': completing unpatching transition",
                              "livepatch: 'p': unpatching complete"]
    else:
        t = model.transitions[0]
        assert t.result == "failed" and t.attempts == attempts


# ---- every CPU busy ----------------------------------------------------------------------

ALL_BUSY = {"immediate": "completed", "stop_machine": "completed", "ksplice": "completed",
            "kgraft": "stalled", "livepatch": "stalled"}


@pytest.mark.parametrize("model,kernel", [(m, None) for m in MODEL_NAMES] + [("livepatch", "4.18"),
                                                                             ("livepatch", "6.8")])
def test_every_cpu_busy_with_a_cpu_bound_kthread(model, kernel):
    """The kworker borrows a CPU at its cruncher's cond_resched() and
    switches that one by its stack; its retries are queued on the same CPU,
    where the other cruncher is never off its CPU ("is running") ->
    stalls, except where cond_resched() is a switch point (6.4 to 6.15).
    The stoppers take both CPUs at cond_resched(): kpatch and Ksplice
    complete at once; kGraft has no safe point to migrate them."""
    res, log, values, _ = run("all-cpus-busy/scenario.toml", model, kernel=kernel)
    outcome = "completed" if kernel == "6.8" else ALL_BUSY[model]
    assert res.outcome == outcome and kernel_safe(res)
    sound(res)
    if model == "livepatch" and outcome == "stalled":
        t = res.transitions[0]
        assert {tuple(b["task"] for b in a["blockers"]) for a in t["attempt_log"]} == {("cruncher1",)}
        assert t["blockers"][0]["stack"][-1] == "(running)"
        assert collapse(values[("cruncher0", 1)]) == [0, 1] and collapse(values[("cruncher1", 1)]) == [0]
    if model in ("stop_machine", "ksplice"):
        assert res.transitions[0]["attempts"] == 1
