"""immediate, stop_machine (kpatch), ksplice and kgraft on the two cases
that tell them apart: a task sleeping inside a patched function, and one
that is not (upstream livepatch has its own selftests: test_livepatch.py)."""
import errno
import re

import pytest

from emu.engine import core
from emu.errors import Busy
from emu.models.refusals import NothingToForce, PatchRefused
from emu.machine.machine import Machine
from emu.models import MODEL_NAMES, make_model
from emu.kernel.patch import make_patch

BASE = """
volatile long zero;
__attribute__((noinline)) long busy(long t) { lpemu_sleep(t); return 1 + zero; }
__attribute__((noinline)) long quick(void) { return 10 + zero; }
__attribute__((noinline)) void nap(long t) { lpemu_sleep(t); }
long sleeper_entry(long t) { long v = busy(t); lpemu_observe(1, v); return v; }
long napper_entry(long t) { nap(t); lpemu_observe(2, quick()); return 0; }
long worker_entry(long x) { lpemu_observe(3, quick()); lpemu_yield(); return 0; }
"""
PATCH = """
extern volatile long zero;
__attribute__((noinline)) long busy(long t) { lpemu_sleep(t); return 2 + zero; }
__attribute__((noinline)) long quick(void) { return 20 + zero; }
"""


def setup(compile_c, model, entry="sleeper_entry", sleep=3000, **opts):
    base = compile_c(BASE)
    m = Machine(base, cpus=2, quantum=400)
    m.add_task("sleeper", entry, (sleep,))
    for i in range(3):
        m.add_task(f"worker{i}", "worker_entry", (i,))
    img = compile_c(PATCH, name="patch", base=m.module_base(), link_against=base, keep={"busy", "quick"})
    m.load(img)
    model = make_model(model, m, **opts)
    patch = make_patch(m, "p1", img, ["busy", "quick"])
    model.add(patch)
    return m, model, patch


def enable_at(m, model, patch, when):
    m.at(when, lambda: model.enable(patch))


def observed(m, key):
    return [e.value for e in m.trace if e.kind == core.EV_OBSERVE and e.key == key]


def test_immediate_switches_every_task_at_once(compile_c):
    m, model, patch = setup(compile_c, "immediate", sleep=1000)
    enable_at(m, model, patch, 5_000)
    m.run(until=m.seconds(40))
    t = model.transitions[0]
    assert t.result == "completed" and t.latency < m.seconds(0.1)
    # the sleeper was inside the old busy(), woke in it, and went on into the new code after
    assert observed(m, 1)[0] == 1 and observed(m, 1)[-1] == 2
    assert observed(m, 3)[-1] == 20


def test_stop_machine_fails_with_ebusy_after_its_retries_and_names_the_task(compile_c):
    m, model, patch = setup(compile_c, "stop_machine", sleep=100_000)
    enable_at(m, model, patch, 5_000)
    m.run(until=m.seconds(30))
    t = model.transitions[0]
    assert t.result == "failed" and t.error == "-EBUSY" and t.attempts == 5
    log = [text for _, text in m.log]
    assert log.count("kpatch: activeness safety check failed for busy") == 5
    assert "kpatch: PID: 0 Comm: sleeper" in log      # kpatch_verify_activeness_safety()
    assert any(line.startswith("kpatch:   [<") and "] busy+0x" in line for line in log)
    assert t.blockers[0][0] == "sleeper"
    assert len(t.pauses) == 5 and all(end > start for start, end in t.pauses)
    # 4 waits of 2 s between the 5 attempts
    assert t.pauses[-1][0] - t.pauses[0][0] >= m.seconds(8)
    assert observed(m, 3)[-1] == 10          # nothing was switched
    assert model.ftrace.site_bytes(patch.objects[0].funcs[0].old) == bytes.fromhex("0f1f440000")


def test_stop_machine_leaves_the_sites_nops_between_its_attempts(compile_c):
    """Each attempt is a new insmod by the kpatch tool: kpatch_register()
    registers the ftrace ops, and a failed stop_machine unregisters them
    again (kpatch_ftrace_remove_func), so between two attempts the
    functions' sites are NOPs, and every attempt changes them twice."""
    m, model, patch = setup(compile_c, "stop_machine", sleep=100_000)
    enable_at(m, model, patch, 5_000)
    sites = [f.old for f in patch.objects[0].funcs]
    for attempts in (1, 2, 3):
        m.run(until=m.seconds(1 + 2 * (attempts - 1)))
        t = model.transitions[0]
        assert t.attempts == attempts and t.result == "pending"
        assert all(model.ftrace.site_bytes(fn) == bytes.fromhex("0f1f440000") for fn in sites)
        assert model.ftrace.pokes == 2 * len(sites) * attempts


def test_stop_machine_switches_when_no_task_is_inside(compile_c):
    m, model, patch = setup(compile_c, "stop_machine", entry="napper_entry", sleep=100_000)
    enable_at(m, model, patch, 5_000)
    m.run(until=m.seconds(5))
    t = model.transitions[0]
    assert t.result == "completed" and t.attempts == 1
    assert ("kpatch: loaded patch module 'p1'") in [x for _, x in m.log]
    start, end = t.pauses[0]
    assert end - start >= model.cost_per_task * 4   # the check cost, with every CPU stopped
    assert observed(m, 3)[-1] == 20


def test_ksplice_scan_also_refuses_a_sleeper_inside(compile_c):
    m, model, patch = setup(compile_c, "ksplice", sleep=100_000)
    enable_at(m, model, patch, 5_000)
    m.run(until=m.seconds(10))
    t = model.transitions[0]
    assert t.result == "failed" and t.attempts == 5
    # patch_action() prints the conflicts once, as it gives up
    log = [x for _, x in m.log]
    assert log[-1] == f"ksplice: Aborted {patch.name}.  stack check: to-be-replaced code is busy."
    assert sum(line.startswith("ksplice: stack check: pid ") for line in log) == 1


def test_kgraft_signals_the_sleeper_at_its_first_check_and_completes_at_the_next(compile_c):
    """kgr_work_fn(), KGR_TIMEOUT = 2 s after the code change: the sleeper
    is in progress, so kgr_send_fake_signal() wakes it; it migrates at its
    kernel exit and the check 2 s later finalizes. Without the signal it
    would sleep its whole 15 s in the old universe."""
    m, model, patch = setup(compile_c, "kgraft", sleep=1500)      # 15 s
    enable_at(m, model, patch, 5_000)
    m.run(until=m.seconds(40))
    t = model.transitions[0]
    assert t.result == "completed" and t.attempts == 2
    assert m.seconds(4) <= t.latency < m.seconds(4.1)
    assert [line for _, line in m.log].count(
        "kgr: still in progress after timeout, will keep trying every 2 seconds") == 1
    # the sleeper ran one whole old system call, then the new code
    assert observed(m, 1)[:1] == [1] and observed(m, 1)[-1] == 2


def kgraft_spinning_kthread(compile_c):
    """A kthread that loops on quick() and never reaches a safe point, and
    kGraft enabling a patch of quick() at 2,000: (machine, model, patch)."""
    base = compile_c(BASE + "long kt_entry(long x) { for (;;) { lpemu_observe(4, quick()); lpemu_yield(); } }")
    m = Machine(base, cpus=1)
    m.add_task("kt", "kt_entry", (0,), kind="kthread")
    img = compile_c(PATCH, name="patch", base=m.module_base(), link_against=base, keep={"quick"})
    m.load(img)
    model = make_model("kgraft", m)
    patch = model.add(make_patch(m, "p1", img, ["quick"]))
    enable_at(m, model, patch, 2_000)
    return m, model, patch


def test_kgraft_says_it_is_still_in_progress_once_per_transition(compile_c):
    """kgr_work_fn()'s message is printed at the first failed check of a
    transition only (its `printed` is reset by kgr_finalize()): a kthread
    that never reaches a safe point fails every check, one message; the
    next transition says it again."""
    m, model, patch = kgraft_spinning_kthread(compile_c)
    m.at(m.seconds(9), lambda: model.force())
    m.at(m.seconds(12), lambda: model.disable(patch))
    m.run(until=m.seconds(21))
    msg = "kgr: still in progress after timeout, will keep trying every 2 seconds"
    log = [line for _, line in m.log]
    assert log == ["kgr: applying patch 'p1'", msg, "kgr: patching succeeded",
                   "kgr: reverting patch 'p1'", msg]
    first, second = model.transitions
    assert first.result == "completed" and first.attempts == 5       # checks at 2, 4, 6, 8, 10 s
    assert second.result == "pending" and second.attempts == 4       # 14, 16, 18, 20 s


def test_kgraft_stalls_on_a_kthread_that_never_reaches_a_safe_point(compile_c):
    m, model, patch = kgraft_spinning_kthread(compile_c)
    m.run(until=m.seconds(20))
    t = model.transitions[0]
    assert t.result == "pending" and t.blockers[0][0] == "kt"
    assert set(observed(m, 4)) == {10}        # it keeps running the old universe
    assert model.status()["tasks"][0]["pending"] is True


@pytest.mark.parametrize("name,err", [("kgraft", errno.EAGAIN), ("stop_machine", errno.EBUSY)])
def test_one_transition_at_a_time(compile_c, name, err):
    """kgr_modify_kernel(): "kgr: can't patch, another patching not yet
    finalized", -EAGAIN; kpatch and livepatch say -EBUSY."""
    m, model, patch = setup(compile_c, name, sleep=100_000)
    model.enable(patch)
    with pytest.raises((Busy, PatchRefused)) as e:
        model.disable(patch)
    assert e.value.errno == err


def test_kgraft_reverts_only_the_newest_applied_patch(compile_c):
    """kgr_refs_inc(): applying p2 gives every applied patch (p1) a
    reference; kgr_modify_kernel() refuses to revert a referenced patch
    (-EBUSY, "this patch is still referenced") until p2's revert is
    finalized and kgr_refs_dec() took the reference back."""
    m, model, p1 = setup(compile_c, "kgraft", sleep=10)
    img = compile_c(PATCH.replace("2 + zero", "3 + zero"), name="patch2", base=m.module_base(),
                    link_against=m.base, keep={"busy"})
    m.load(img)
    p2 = model.add(make_patch(m, "p2", img, ["busy"]))
    model.enable(p1)
    m.run(until=m.seconds(5))
    model.enable(p2)
    m.run(until=m.seconds(10))
    assert [t.result for t in model.transitions] == ["completed", "completed"]
    with pytest.raises(Busy, match="this patch is still referenced"):
        model.disable(p1)
    assert p1.enabled and len(model.transitions) == 2      # refused before anything changed
    model.disable(p2)
    m.run(until=m.seconds(15))
    model.disable(p1)
    m.run(until=m.seconds(20))
    assert [t.result for t in model.transitions] == ["completed"] * 4
    assert observed(m, 1)[-1] == 1


def test_livepatch_stays_pending_while_the_sleeper_is_inside_and_force_finishes_it(compile_c):
    m, model, patch = setup(compile_c, "livepatch", sleep=100_000)
    enable_at(m, model, patch, 5_000)
    m.run(until=m.seconds(12))      # before the fake signals (from the 15th attempt)
    t = model.transitions[0]
    assert t.result == "pending" and [name for name, _ in t.blockers] == ["sleeper"]
    assert any(line.startswith("busy+0x") for line in t.blockers[0][1])
    assert observed(m, 3)[-1] == 20           # the workers switched at their kernel exits
    model.force(patch)
    m.run(until=m.seconds(13))
    assert t.result == "completed"
    log = [text for _, text in m.log]
    assert "livepatch: 'p1': patching complete" in log


def test_livepatch_completes_once_the_sleeper_leaves_the_function(compile_c):
    m, model, patch = setup(compile_c, "livepatch", sleep=1500)     # 15 s in busy()
    enable_at(m, model, patch, 5_000)
    m.run(until=m.seconds(40))
    t = model.transitions[0]
    assert t.result == "completed" and t.completed_at > m.seconds(15)


HAMMER = """
volatile long zero;
__attribute__((noinline)) long hot(void) { return 1 + zero; }
long hammer(long x) { long s = 0; for (int i = 0; i < 50; i++) s += hot(); lpemu_observe(1, s); return s; }
"""
HOT_PATCH = """
extern volatile long zero;
__attribute__((noinline)) long hot(void) { return 2 + zero; }
"""


def hammered(compile_c, protocol, seed):
    from emu.kernel.ftrace import Ftrace
    base = compile_c(HAMMER)
    m = Machine(base, cpus=4, quantum=7 + seed)
    for i in range(4):
        m.add_task(f"h{i}", "hammer", (i,))
    img = compile_c(HOT_PATCH, name="patch", base=m.module_base(), link_against=base, keep={"hot"})
    m.load(img)
    model = make_model("immediate", m, ftrace=Ftrace(m, protocol=protocol))
    patch = model.add(make_patch(m, "p1", img, ["hot"]))
    enable_at(m, model, patch, 3_000 + 13 * seed)
    fault = None
    try:
        m.run(until=60_000)
    except Exception as e:      # a torn call lands anywhere
        fault = e
    torn = [e for e in m.trace if e.kind == core.EV_TORN]
    return m, torn, fault


@pytest.mark.parametrize("seed", range(6))
def test_text_poke_bp_never_lets_a_cpu_run_a_torn_instruction(compile_c, seed):
    m, torn, fault = hammered(compile_c, "text_poke_bp", seed)
    assert fault is None and torn == []
    assert observed(m, 1)[-1] == 100          # and every CPU ends up in the new hot()


def test_bytewise_writes_let_a_cpu_run_a_torn_instruction(compile_c):
    from emu.errors import GuestFault
    for seed in range(3):
        m, torn, fault = hammered(compile_c, "bytewise", seed)
        # a CPU met the site half written: the torn call jumps into nowhere
        assert len(torn) == 1 and isinstance(fault, GuestFault)


# ---- a task preempted inside the patched function (full preemption) -------------------------

SPIN = """
volatile long sink;
__attribute__((noinline)) long crunch(long n)
{
	long s = 0;
	for (;;) {
		for (long i = 0; i < n; i++)
			s += i ^ sink;
		sink = s;
	}
}
/* crunch() never returns: the call is kthread_entry's last instruction */
long kthread_entry(long n) { return crunch(n); }
long sleeper_entry(long t) { for (;;) lpemu_sleep(t); }
"""
SPIN_PATCH = """
extern volatile long sink;
__attribute__((noinline)) long crunch(long n)
{
	long s = 1;
	for (;;) {
		for (long i = 0; i < n; i++)
			s += i ^ sink;
		sink = s;
	}
}
"""
PREEMPTED = {"stop_machine": "failed", "ksplice": "failed", "livepatch": "pending", "kgraft": "pending"}


@pytest.mark.parametrize("cpus", [1, 2])
@pytest.mark.parametrize("unwinder", ["orc", "fp"])
@pytest.mark.parametrize("model_name", sorted(PREEMPTED))
def test_a_task_preempted_inside_the_patched_function(compile_c, model_name, unwinder, cpus):
    """Full preemption, a kthread that never leaves crunch() (no call, no
    scheduling point in it), alone on the last CPU: the work (kworker,
    stopper) preempts it there, on its own CPU or, with two, on the CPU
    stop_machine stops while another one runs the check (livepatch's
    kworker takes the spare CPU, and the cruncher stays running). Its
    interrupted IP is on its stack:
    - kpatch (stack_trace_save_tsk: the unwinders report regs->ip when they
      cross the interrupt frame, ORC and frame pointers alike) -> -EBUSY at
      each of its 5 attempts; Ksplice checks the saved IP first -> fails;
    - livepatch (arch_stack_walk_reliable): ORC finds crunch() on the stack
      ("sleeping on function"); with frame pointers, kernel-mode registers
      on the stack make the trace unreliable; either way it stays pending
      (a preempted kthread is no interruptible sleeper to wake);
    - kGraft: no safe point -> pending."""
    base = compile_c(SPIN)
    m = Machine(base, cpus=cpus, quantum=500, preempt="full", unwinder=unwinder)
    img = compile_c(SPIN_PATCH, name="p", base=m.module_base(), link_against=base, keep={"crunch"})
    m.load(img)
    m.add_task("cruncher", "kthread_entry", (100,), kind="kthread", cpu=cpus - 1)
    m.add_task("sleeper", "sleeper_entry", (10,), cpu=0)
    model = make_model(model_name, m)
    patch = model.add(make_patch(m, "p", img, ["crunch"]))
    m.at(m.seconds(0.2), lambda: model.enable(patch))
    m.run(until=m.seconds(11))
    t = model.transitions[0]
    assert t.result == PREEMPTED[model_name]
    blockers = dict(t.blockers)
    assert "cruncher" in blockers
    stack = blockers["cruncher"]
    if model_name == "livepatch" and cpus == 2:
        # the kworker runs on the other CPU and never takes the cruncher's:
        # it is task_curr() at every attempt (-EBUSY, "is running")
        assert stack == ["(running)"]
        return
    assert stack[0].startswith("crunch+")
    if model_name == "livepatch":
        why = "sleeping on function crunch" if unwinder == "orc" else "unreliable stack: preempted task"
        assert stack[-1].startswith(f"({why}")
    if model_name == "stop_machine":
        assert t.attempts == 5
        lines = [line for _, line in m.log]
        i = lines.index("kpatch: activeness safety check failed for crunch")
        assert lines[i + 1] == "kpatch: PID: 0 Comm: cruncher"
        # %pB names a return address after the symbol of the byte before it:
        # the call of the noreturn crunch() ends kthread_entry, and its
        # return address, just past the end, is kthread_entry's; the size is
        # kallsyms's, up to the next symbol (sleeper_entry), padding included
        entry, after = m.function("kthread_entry"), m.function("sleeper_entry")
        assert lines[i + 3].endswith(f"] kthread_entry+{entry.end - entry.start:#x}/{after.start - entry.start:#x}")
        crunch = m.function("crunch")
        assert lines[i + 2].endswith(f"/{entry.start - crunch.start:#x}") and "] crunch+" in lines[i + 2]


@pytest.mark.parametrize("name", ["stop_machine", "ksplice"])
def test_a_force_between_transitions_does_not_reach_the_next_enable(compile_c, name):
    """kpatch has no force at run time (a function's KPATCH_FORCE_UNSAFE is
    fixed when the patch is built), Ksplice none at all: lpemu's force skips
    the check of the transition in progress only. One written while nothing
    is in transition is refused and leaves the next enable's activeness
    check as it is: the sleeper inside busy() fails every attempt."""
    m, model, patch = setup(compile_c, name, sleep=100_000)
    m.run(until=2_000)
    with pytest.raises(NothingToForce):
        model.force()
    enable_at(m, model, patch, 5_000)
    m.run(until=m.seconds(20))
    t = model.transitions[0]
    assert t.result == "failed" and t.attempts == model.retries
    assert observed(m, 1) == []             # the sleeper never left the old busy()


def test_a_force_ends_with_its_transition(compile_c):
    """A force written during kpatch's last attempt, after its check found
    the sleeper (inside the stop_machine pause), comes too late for it; the
    transition fails and the force ends with it: the next enable checks
    again."""
    def run(force_at=None):
        m, model, patch = setup(compile_c, "stop_machine", sleep=100_000, retries=1)
        enable_at(m, model, patch, 5_000)
        if force_at is not None:
            m.at(force_at, lambda: model.force())
            m.at(force_at + m.seconds(0.5), lambda: model.enable(patch))
        m.run(until=m.seconds(3))
        return model
    (stopped, resumed), = run().transitions[0].pauses
    model = run(force_at=resumed - 1)
    assert [t.result for t in model.transitions] == ["failed", "failed"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_force_with_no_transition_in_progress_is_refused_under_every_model(compile_c, name):
    """The kernel's force_store answers -EINVAL unless the patch is the one
    in transition (kernel/livepatch/core.c), and changes nothing: every
    model's force does the same, before the enable, after its transition
    ended, and for a patch that is not the one in transition; during the
    transition it is taken."""
    m, model, patch = setup(compile_c, name, sleep=100_000)
    m.run(until=2_000)
    for call in (lambda: model.force(), lambda: model.force(patch)):
        with pytest.raises(NothingToForce) as e:
            call()
        assert e.value.errno == errno.EINVAL and "in transition (-EINVAL: Invalid argument)" in str(e.value)
    events, log = len(m.trace), list(m.log)
    m.drain()
    assert len(m.trace) == events and m.log == log and model.transitions == []
    model.enable(patch)
    other = model.add(make_patch(m, "p2", m.images[-1], ["quick"]))
    with pytest.raises(NothingToForce, match="patch 'p2' is not in transition"):
        model.force(other)
    m.run(until=m.now + m.seconds(0.5))
    if model.transition is not None:            # (immediate's is over by now)
        model.force(patch)                      # the patch in transition: taken
    m.run(until=m.seconds(30))
    assert model.transitions[-1].result != "pending"
    with pytest.raises(NothingToForce, match=r"no patch is in transition \(-EINVAL: Invalid argument\)"):
        model.force()


def test_a_scenario_force_with_nothing_to_force_is_said_and_fails_no_run():
    """Scenarios run under every model: the busy example's force comes two
    seconds after the enable, when immediate's transition is long over. The
    write changes nothing (-EINVAL); the run says so in its kernel log and
    is no refused action: the transition completed, the outcome too."""
    from pathlib import Path
    from emu.runs import scenario
    from emu.runs.fuzz import Runner
    path = Path(__file__).resolve().parent.parent / "examples" / "busy" / "scenario-force.toml"
    with Runner(scenario.build(scenario.load(path))) as r:
        res, m, _ = r.execute(r.plan("immediate", 0), keep=True)
        log = [text for _, text in m.log]
        m.engine.close()
    assert res.outcome == "completed" and res.errors == []
    assert "lpemu: force: no patch is in transition (-EINVAL: Invalid argument): nothing to force" in log
