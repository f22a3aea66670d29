"""The example scenarios under examples/ do what their header comments say.

Every test runs the real scenario (compiled C in the emulator) and checks the
behaviour the example exists to show: outcomes, blockers, the order in which
tasks see versions, fuzz counts.
"""
import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from emu.app import cli
from emu.engine import core
from emu.runs import scenario
from emu.runs.fuzz import Runner
from emu.machine.machine import EV_KERNEL_EXIT

EX = Path(__file__).resolve().parent.parent / "examples"
SECOND = 100_000            # instructions in one virtual second (default tick 1000, 100 Hz)
TICK = 1_000                # one jiffy
PHASE = 4 * TICK            # a whole second of jiffies after one of the boot: INITIAL_JIFFIES at 100 Hz
NOP5 = bytes.fromhex("0f1f440000")


@functools.cache
def runner(rel: str) -> Runner:
    return Runner(scenario.build(scenario.load(EX / rel)))


@dataclass
class Run:
    res: object
    log: list
    status: dict
    switches: list = field(default_factory=list)          # livepatch: (time, task, state, how)
    seqs: dict = field(default_factory=dict)               # (task, key) -> values, repeats collapsed
    values: dict = field(default_factory=dict)             # (task, key) -> every value, in order
    exits: dict = field(default_factory=dict)              # task -> times of its kernel exits
    sites: dict = field(default_factory=dict)              # function -> the 5 bytes at its start

    @property
    def t(self):
        return self.res.transitions

    def logged(self, text: str) -> bool:
        return any(text in line for _, line in self.log)


def execute(r: Runner, model: str, seed: int = 0, *, at: int | None = None, sites=()) -> Run:
    spec = r.plan(model, seed)
    if at is not None:
        spec = replace(spec, start=at)
    res, m, mod = r.execute(spec, keep=True)
    try:
        run = Run(res, list(m.log), mod.status(), list(getattr(mod, "switches", [])))
        for clock, kind, task, key, value, _ in m.trace:
            name = m.tasks[task].name if 0 <= task < len(m.tasks) else "?"
            if kind == core.EV_OBSERVE:
                run.values.setdefault((name, key), []).append(value)
                seq = run.seqs.setdefault((name, key), [])
                if not seq or seq[-1] != value:
                    seq.append(value)
            elif kind == EV_KERNEL_EXIT:
                run.exits.setdefault(name, []).append(clock)
        for name in sites:
            run.sites[name] = bytes(m.engine.view(m.function(name).start, 5))
    finally:
        m.engine.close()
    return run


def cli_json(capsys, *argv) -> dict:
    """The command's JSON; its exit status says whether it found what fails it."""
    rc = cli.main([str(a) for a in argv] + ["--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == (0 if out.get("ok", not out.get("failing")) else 1)
    return out


def fuzz_counts(capsys, rel: str, runs: int) -> dict:
    out = cli_json(capsys, "fuzz", EX / rel, "--runs", runs, "--jobs", 1)
    return {m["model"]: m for m in out["models"]}


# ---- busy: a task sleeping inside the patched function ---------------------------------------

BUSY = "busy/scenario.toml"
ENABLE = 20_000


def test_busy_immediate_completes_at_once():
    run = execute(runner(BUSY), "immediate")
    (t,) = run.t
    assert run.res.outcome == "completed"
    assert t["completed_at"] - t["requested_at"] < 5_000            # the text update only
    # callers run the new slow() within the first second, while the sleeper sleeps on in the old one
    assert run.seqs["caller0", 1] == [0, 1] and run.seqs["caller1", 1] == [0, 1]


def test_busy_stop_machine_fails_with_ebusy_naming_the_sleeper(capsys):
    out = cli_json(capsys, "run", EX / BUSY, "--model", "stop_machine")
    assert out["outcome"] == "failed"
    (t,) = out["transitions"]
    assert (t["result"], t["error"], t["attempts"]) == ("failed", "-EBUSY", 5)
    assert [b["task"] for b in t["blockers"]] == ["sleeper"]
    assert t["blockers"][0]["stack"][0].startswith("slow+")
    assert "sleeper_entry" in t["blockers"][0]["stack"][1]
    starts = [s for s, _ in t["pauses"]]
    assert len(starts) == 5 and all(b - a >= 2 * SECOND for a, b in zip(starts, starts[1:]))
    log = [text for _, text in out["log"]]
    assert log.count("kpatch: activeness safety check failed for slow") == 5
    assert "kpatch: failed to load patch module 'busy_patch' after 5 attempts (-16)" in log
    assert out["inconsistent_units"] == 0


def test_busy_kgraft_wakes_the_sleeper_at_its_first_check_and_completes_at_the_second():
    """kgr_modify_kernel() queues the first check KGR_TIMEOUT = 2 s after the
    code change; kgr_work_fn() finds the sleeper in progress, says so once and
    sends it a fake signal (kgr_send_fake_signal): its 5 s sleep ends early,
    it migrates at its kernel exit, and the next check, 2 s later, finalizes."""
    run = execute(runner(BUSY), "kgraft")
    (t,) = run.t
    assert run.res.outcome == "completed" and t["attempts"] == 2
    msg = "kgr: still in progress after timeout, will keep trying every 2 seconds"
    (said,) = [time for time, line in run.log if line == msg]
    assert ENABLE + 2 * SECOND <= said < ENABLE + 2 * SECOND + SECOND // 100
    first_exit = min(x for x in run.exits["sleeper"] if x > ENABLE)      # woken by the signal
    assert said <= first_exit < said + SECOND // 100
    assert 200 < run.values["sleeper", 3][0] < 300                       # about 3 s of its 5 s left
    assert said + 2 * SECOND <= t["completed_at"] < said + 2 * SECOND + SECOND // 100
    assert run.logged("kgr: patching succeeded")
    assert run.seqs["sleeper", 1] == [0, 1]       # its next system call runs the new slow()


def test_busy_livepatch_is_pending_while_the_sleeper_is_inside():
    run = execute(runner(BUSY), "livepatch")
    (t,) = run.t
    assert run.res.outcome == "completed" and t["attempts"] >= 5    # retried every second meanwhile
    first_exit = min(x for x in run.exits["sleeper"] if x > ENABLE)
    how = {name: (time, h) for time, name, _, h in run.switches}
    assert how["sleeper"] == (first_exit, "kernel_exit")         # not one second earlier
    assert how["caller0"][0] < ENABLE + SECOND and how["caller1"][0] < ENABLE + SECOND
    assert first_exit <= t["completed_at"] <= first_exit + SECOND
    assert not run.logged("signaling remaining tasks")           # the horizon ends before 15 retries


def test_busy_without_force_a_30s_sleeper_stalls_livepatch_and_kgraft_signals_it():
    scn = scenario.load(EX / "busy/scenario-force.toml")
    scn.actions = [a for a in scn.actions if a.do != "force"]
    r = Runner(scenario.build(scn))
    lp = execute(r, "livepatch")
    (t,) = lp.t
    assert lp.res.outcome == "stalled" and t["result"] == "pending"
    assert [b["task"] for b in t["blockers"]] == ["sleeper"]
    assert [x["name"] for x in lp.status["tasks"] if x["pending"]] == ["sleeper"]
    assert t["blockers"][0]["stack"][0].startswith("slow+")
    assert t["blockers"][0]["stack"][-1] == "(sleeping on function slow)"
    assert not lp.logged("signaling remaining tasks")
    # kGraft's first check (2 s) sends the sleeper a fake signal; the second finalizes
    kg = execute(r, "kgraft")
    (t,) = kg.t
    assert kg.res.outcome == "completed" and t["attempts"] == 2
    assert [[b["task"] for b in a["blockers"]] for a in t["attempt_log"]] == [["sleeper"]]
    assert kg.values["sleeper", 3][0] > 2700                             # woken with most of its 30 s left
    assert kg.seqs["sleeper", 1] == [0, 1]


def test_busy_force_completes_the_transition():
    r = runner("busy/scenario-force.toml")
    force_at = ENABLE + 2 * SECOND
    # the completing attempt is kernel work: it runs once it gets a CPU, soon after the write
    soon = range(force_at, force_at + SECOND // 100)
    lp = execute(r, "livepatch")
    # force_store switches the tasks; the transition completes at the next
    # retry, on the next whole second of jiffies (round_jiffies_relative;
    # 100 Hz: 4 ticks after the boot's, INITIAL_JIFFIES), 3 s, less its
    # CPU's skew of 3 ticks a CPU
    second = 3 * SECOND + PHASE
    retry = range(second - 3 * TICK, second + SECOND // 100)
    assert lp.res.outcome == "completed" and lp.t[0]["completed_at"] in retry
    assert lp.logged("livepatch: forcing remaining tasks to the patched state")
    assert ("sleeper", force_at, "force") in {(n, time, h) for time, n, _, h in lp.switches}
    assert lp.seqs["sleeper", 1] == [0]          # forced, yet still asleep in the old slow()
    kg = execute(r, "kgraft")
    assert kg.res.outcome == "completed" and kg.t[0]["completed_at"] in soon
    sm = execute(r, "stop_machine")              # the next attempt skips the check
    assert sm.res.outcome == "completed" and sm.t[0]["attempts"] == 2


def test_busy_fake_signals_wake_the_sleeper_livepatch_at_15_s_kgraft_at_2_s():
    r = runner("busy/scenario-signal.toml")
    lp = execute(r, "livepatch")
    assert lp.res.outcome == "completed"
    signal_at = next(time for time, text in lp.log if "signaling remaining tasks" in text)
    # the 16th attempt: the 15th retry, on the 15th whole second (round_jiffies_relative,
    # less 3 ticks a CPU), plus the time it waited for a CPU
    assert 15 * SECOND + PHASE - 3 * TICK <= signal_at < 15 * SECOND + PHASE + SECOND // 10
    assert signal_at <= lp.t[0]["completed_at"] <= signal_at + SECOND + SECOND // 100   # the next attempt
    left = lp.values["sleeper", 3][0]                            # the ticks its sleep had left
    assert 1000 < left < 3000
    assert [h for _, n, _, h in lp.switches if n == "sleeper"] == ["kernel_exit"]
    # kgr_work_fn(): the first check, KGR_TIMEOUT = 2 s after the code change,
    # says so once and sends the fake signal; the second one finalizes
    kg = execute(r, "kgraft")
    (t,) = kg.t
    assert kg.res.outcome == "completed" and t["attempts"] == 2
    said = [time for time, text in kg.log if "kgr: still in progress after timeout" in text]
    assert len(said) == 1 and ENABLE + 2 * SECOND <= said[0] < ENABLE + 2 * SECOND + SECOND // 100
    assert 2700 < kg.values["sleeper", 3][0] < 2800              # woken with about 28 s left
    assert said[0] + 2 * SECOND <= t["completed_at"] < said[0] + 2 * SECOND + SECOND // 100


# ---- kthread-stall: a kthread with cond_resched but no safe point -----------------------------

KTHREAD = "kthread-stall/scenario.toml"


def test_kthread_without_safe_point_stalls_kgraft():
    run = execute(runner(KTHREAD), "kgraft")
    (t,) = run.t
    assert run.res.outcome == "stalled" and t["result"] == "pending"
    assert [b["task"] for b in t["blockers"]] == ["worker"]
    assert run.seqs["worker", 1] == [0]          # the kthread never sees the new work()
    assert run.seqs["user", 1] == [0, 1]         # the user task migrated at its kernel exit


def test_kthread_switches_at_cond_resched_under_livepatch():
    run = execute(runner(KTHREAD), "livepatch")
    (t,) = run.t
    assert run.res.outcome == "completed" and t["latency"] < 2 * SECOND
    assert [h for _, n, _, h in run.switches if n == "worker"] == ["cond_resched"]
    assert run.seqs["worker", 1] == [0, 1]
    assert run.res.inconsistent_units == 0


def test_kthread_stall_fuzz_every_start_point(capsys):
    s = fuzz_counts(capsys, KTHREAD, 8)
    assert (s["kgraft"]["stalled"], s["kgraft"]["completed"]) == (8, 0)
    assert (s["livepatch"]["completed"], s["livepatch"]["stalled"]) == (8, 0)
    assert s["kgraft"]["inconsistent"] == s["livepatch"]["inconsistent"] == 0


# ---- stacked: p2 on top of p1, then p2 disabled ------------------------------------------------

STACKED = "stacked/scenario.toml"


@pytest.mark.parametrize("model", ["livepatch", "kgraft"])
def test_stacked_versions_go_old_p1_p2_p1(model):
    run = execute(runner(STACKED), model)
    assert [(t["patch"], t["target"], t["result"]) for t in run.t] == [
        ("p1", "patched", "completed"), ("p2", "patched", "completed"), ("p2", "unpatched", "completed")]
    for task in ("user0", "user1", "user2"):
        assert run.seqs[task, 1] == [0, 1, 2, 1]          # f(): disabling p2 falls back to p1's
        assert run.seqs[task, 10] == [0]                  # the original g() got original records
        assert run.seqs[task, 11] == [1, 2, 1]            # p1's g() got p1's, p2's, p1's records
    assert [p["name"] for p in run.status["patches"]] == ["p1"]
    assert run.res.violation_count == 0 and run.res.inconsistent_units == 0


def test_stacked_check_holds_under_livepatch_at_every_start_point(capsys):
    s = fuzz_counts(capsys, STACKED, 8)
    assert s["livepatch"]["completed"] == 8
    assert s["livepatch"]["bad_values"] == 0 and s["livepatch"]["inconsistent"] == 0


def test_stacked_immediate_switches_f_and_g_in_one_batch():
    """Under immediate, p1's f() and g() sites change in the same syncs (one
    batch): no start point makes a task run p1's f() and then the original
    g(), so the original g() only ever gets version-0 records (key 10). The
    generated scenario of seed 2 in test_generated found the old per-function
    batches that allowed it."""
    r = runner(STACKED)
    for seed in range(32):
        res = r.execute(r.plan("immediate", seed, strategy="exhaustive"))
        assert "value == 0" not in {v["assert"] for v in res.violations}, seed


def test_stacked_kgraft_never_mixes_while_sites_are_enabled():
    """No task migrates while the patch's ftrace sites are being enabled
    (kgr_immutable): one system call never runs p1's f() and the original g()."""
    run = execute(runner(STACKED), "kgraft", at=20572)
    assert run.res.inconsistent_units == 0 and run.res.violation_count == 0


# ---- replace: p2 (replace = true) drops p1's f() ------------------------------------------------

REPLACE = "replace/scenario.toml"


@pytest.mark.parametrize("model", ["livepatch", "stop_machine"])
def test_replace_puts_back_the_original_of_what_it_leaves_out(model):
    run = execute(runner(REPLACE), model, sites=("f", "g"))
    assert [(t["patch"], t["result"]) for t in run.t] == [("p1", "completed"), ("p2", "completed")]
    for task in ("user0", "user1", "user2"):
        assert run.seqs[task, 1] == [0, 1, 0]            # f(): original, p1's, original again
        assert run.seqs[task, 2] == [0, 1, 2]            # g(): original, p1's, p2's
    (only,) = run.status["patches"]
    assert only["name"] == "p2" and only["replace"]
    assert run.res.violation_count == 0 and run.res.inconsistent_units == 0
    assert run.sites["g"] != NOP5
    if model == "livepatch":
        assert only["objects"]["vmlinux"]["functions"] == {"g": {"patched": True, "transition": False,
                                                                 "nop": False}}
        assert run.sites["f"] == NOP5                    # the nop is gone, and f()'s ftrace site with it


@pytest.mark.parametrize("model", ["kgraft", "immediate"])
def test_replace_under_kgraft_and_immediate(model):
    run = execute(runner(REPLACE), model, sites=("f", "g"))
    for task in ("user0", "user1", "user2"):
        assert run.seqs[task, 1] == [0, 1, 0]
        assert run.seqs[task, 2] == [0, 1, 2]
    assert [p["name"] for p in run.status["patches"]] == ["p2"]
    assert run.sites["f"] == NOP5
    if model == "kgraft":
        assert run.res.inconsistent_units == 0 and run.res.violation_count == 0


# ---- tailcall: the seed's question with a tail call and a kthread ------------------------------

def test_tailcall_handler_tail_calls_finish():
    base = runner("tailcall/scenario.toml").program.base
    handler, finish = base.functions["handler"], base.functions["finish"]
    insns = list(Cs(CS_ARCH_X86, CS_MODE_64).disasm(base.read(handler.start, handler.end - handler.start),
                                                     handler.start))
    last = insns[-1]
    assert last.mnemonic == "jmp" and int(last.op_str, 16) == finish.start


def test_tailcall_without_the_caller_mixes_except_under_kgraft(capsys):
    s = fuzz_counts(capsys, "tailcall/scenario.toml", 40)
    for model in ("immediate", "stop_machine", "livepatch"):
        assert s[model]["inconsistent"] >= 10, model          # measured: 33, 32, 32 of 40
        assert s[model]["bad_values"] > 0, model              # a new finish() got milliseconds
        assert s[model]["completed"] == 40, model
    assert s["kgraft"]["inconsistent"] == 0 and s["kgraft"]["bad_values"] == 0
    assert s["kgraft"]["completed"] == 40


def test_tailcall_with_the_caller_in_the_patch_mixes_only_under_immediate(capsys):
    s = fuzz_counts(capsys, "tailcall/scenario-handler.toml", 40)
    for model in ("stop_machine", "kgraft", "livepatch"):
        assert s[model]["inconsistent"] == 0 and s[model]["bad_values"] == 0, model
    assert s["immediate"]["inconsistent"] >= 10                # measured: 31 of 40
    assert s["livepatch"]["completed"] == s["kgraft"]["completed"] == 40
    # stop_machine pays with -EBUSY when some task is in handler() at all five checks
    assert s["stop_machine"]["completed"] + s["stop_machine"]["failed"] == 40
    assert s["stop_machine"]["completed"] > 0 and s["stop_machine"]["failed"] > 0


# ---- kernel-versions: cond_resched() as a switch point, by kernel version ------------------------

VERSIONS = "kernel-versions/scenario.toml"


def on_kernel(version: str) -> Runner:
    scn = scenario.load(EX / VERSIONS)
    scn.machine["kernel"] = version
    return Runner(scenario.build(scn))


def test_a_cpu_bound_kthread_switches_at_cond_resched_on_6_8():
    run = execute(on_kernel("6.8"), "livepatch")
    (t,) = run.t
    assert run.res.outcome == "completed" and t["latency"] < 2 * SECOND
    assert [h for _, n, _, h in run.switches if n == "worker"] == ["cond_resched"]
    assert run.status["kernel"] == "6.8"
    assert run.res.inconsistent_units == 0


@pytest.mark.parametrize("version", ["4.18", "6.16", "6.19"])
def test_cond_resched_is_no_switch_point_before_6_4_and_from_6_16(version):
    run = execute(on_kernel(version), "livepatch")
    assert run.status["kernel"] == version
    assert "cond_resched" not in [h for _, n, _, h in run.switches if n == "worker"]
    assert run.res.inconsistent_units == 0


@pytest.mark.parametrize("version", ["4.18", "6.16"])
def test_a_cpu_bound_kthread_stalls_where_cond_resched_is_no_switch_point(version):
    run = execute(on_kernel(version), "livepatch")
    (t,) = run.t
    assert run.res.outcome == "stalled" and t["result"] == "pending"
    assert [b["task"] for b in t["blockers"]] == ["worker"]
    assert not [s for s in run.switches if s[1] == "worker"]


# ---- seed, built for IBT -----------------------------------------------------------------------

@pytest.mark.parametrize("variant, mixing", [("scenario.toml", {"immediate", "stop_machine", "livepatch"}),
                                             ("scenario-foo.toml", {"immediate"})])
def test_the_seed_built_for_ibt_gives_the_founding_answers(capsys, tmp_path, variant, mixing):
    """gcc -fcf-protection=branch (CONFIG_X86_KERNEL_IBT): every function
    starts with endbr64 and its fentry site follows it. The founding
    question has the same answers: the new baz() gets an old value under
    stop_machine and livepatch, never under kGraft, and with foo() in the
    patch only immediate mixes."""
    for f in (EX / "seed").iterdir():
        text = f.read_text()
        if f.name == variant:
            text = text.replace('sources = ["base.c"]\n', 'sources = ["base.c"]\ncflags = ["-fcf-protection=branch"]\n', 1)
            assert "cflags" in text
        (tmp_path / f.name).write_text(text)
    out = cli_json(capsys, "fuzz", tmp_path / variant, "--runs", 8, "--jobs", 1)
    s = {m["model"]: m for m in out["models"]}
    for model in ("immediate", "stop_machine", "kgraft", "livepatch"):
        if model in mixing:
            assert s[model]["inconsistent"] > 0 and s[model]["bad_values"] > 0, model
        else:
            assert s[model]["inconsistent"] == 0 and s[model]["bad_values"] == 0, model
