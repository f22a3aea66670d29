"""Four patches a live-patch developer tries before booting a VM
(tests/data/walk/), each scenario's header written from the kernel's
semantics before it ran: a CVE-style bounds check in a system call's copy
loop (cve-check), a lock taken by the old function and released by the new
one (lock-split), a struct field whose meaning changes between a writer and
a reader that a sleep separates (field-meaning), a shadow variable on objects shared by tasks
(shadow-reuse), and a patch of a module function with the module loaded
after the patch (module-late).

Their [expect] tables are judged by the pytest plugin (each file is
collected as FILE::MODEL); the tests here hold what [expect] cannot say:
which finding each model shows, what the kernel log says, and how the
outputs name what they found."""
from pathlib import Path

import pytest

from emu import Runner, build_scenario, load_scenario
from emu.app import cli
from emu.engine.core import EV_OBSERVE
from emu.runs.campaign import Campaign, Plan

WALK = Path(__file__).parent / "data" / "walk"


def program(rel):
    return build_scenario(load_scenario(WALK / rel))


def campaign(rel, models, runs):
    prog = program(rel)
    plan = Plan(str(WALK / rel), list(models), range(runs), prog.scenario.fuzz.strategy)
    camp = Campaign(prog, plan, jobs=1)
    camp.run()
    return {row["model"]: row for row in camp.summary()["models"]}


def test_a_bounds_check_per_call_is_safe_and_completes_under_every_model():
    """copy_item() never sleeps: no checked stack holds it, every model
    completes at its first chance, and no fixed copy writes past its slot."""
    rows = campaign("cve-check/scenario.toml", ["immediate", "stop_machine", "ksplice", "kgraft", "livepatch"], 8)
    for model, row in rows.items():
        assert (row["inconsistent"], row["bad_values"], row["completed"]) == (0, 0, 8), model


def test_a_lock_released_by_the_new_version_shows_as_bad_unlocks_but_never_under_kgraft():
    """dev_ioctl() is not in the patch: a holder asleep in wait_hw() is
    switched by every stack-checking model and wakes into the new
    dev_unlock(), which releases cfg_lock, never taken (observe 2 = 0).
    kGraft keeps the whole system call in one universe."""
    rows = campaign("lock-split/scenario.toml", ["stop_machine", "kgraft", "livepatch"], 8)
    assert rows["kgraft"]["bad_values"] == 0 and rows["kgraft"]["inconsistent"] == 0
    assert rows["stop_machine"]["bad_values"] > 0 and rows["livepatch"]["bad_values"] > 0


def test_carrying_the_caller_makes_the_lock_split_safe_where_stacks_are_checked():
    rows = campaign("lock-split/scenario-ioctl.toml", ["immediate", "stop_machine", "livepatch"], 8)
    assert rows["immediate"]["bad_values"] > 0
    assert rows["stop_machine"]["bad_values"] == 0 and rows["livepatch"]["bad_values"] == 0
    assert rows["livepatch"]["completed"] == 8


def test_a_kthreads_mixed_unit_is_named_a_safe_point_round_not_a_syscall(capsys):
    """A kthread never enters the kernel from user mode: its unit runs from
    safe point to safe point, and the report names it so."""
    with Runner(program("lock-split/scenario.toml")) as r:
        res = r.execute(r.plan("stop_machine", 0))
    units = {(i["task"], i["unit"].split(" #")[0]) for i in res.inconsistencies}
    assert ("watchdog", "safe-point round") in units, units
    assert all(what == "syscall" for task, what in units if task != "watchdog")


def test_the_shrink_summary_counts_in_the_singular(capsys):
    code = cli.main(["replay", str(WALK / "lock-split/scenario.toml"), "--model", "stop_machine",
                     "--seed", "0", "--shrink", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    line = next(s for s in out.splitlines() if s.startswith("shrunk in "))
    assert ", 1 task (was 3)," in line and line.endswith(" 0 preemptions"), line


def test_a_stale_shadow_is_met_under_kgraft_alone_through_the_python_api():
    """kGraft keeps the collector in the old universe for a whole pass while
    the users open connections with shadows: the old conn_free() leaves a
    shadow behind, the next klp_shadow_alloc() of that slot finds it
    ("Duplicate shadow variable") and conn_use() reads another generation.
    Every other model switches the collector with the users (it sleeps in
    conn_gc(), which no model checks): never a stale shadow, but passes that
    mix versions."""
    prog = program("shadow-reuse/scenario.toml")
    stale, mixed = {}, {}
    with Runner(prog) as r:
        for model in ("stop_machine", "kgraft", "livepatch"):
            for seed in range(8):
                res, m, _ = r.execute(r.plan(model, seed), keep=True)
                try:
                    bad = [e.value for e in m.trace if e.kind == EV_OBSERVE and e.key == 2 and e.value != 0]
                    if bad:
                        assert any("Duplicate shadow variable" in text for _, text in m.log), m.log
                    stale[model] = stale.get(model, 0) + bool(bad)
                    mixed[model] = mixed.get(model, 0) + bool(res.inconsistencies)
                    assert len(res.violations) == len(bad)
                finally:
                    m.engine.close()
    assert stale["kgraft"] > 0 and mixed["kgraft"] == 0
    assert stale["stop_machine"] == stale["livepatch"] == 0
    assert mixed["stop_machine"] > 0 and mixed["livepatch"] > 0


@pytest.mark.parametrize("model,line,key", [
    ("livepatch", "livepatch: applying patch 'fix' to loading module 'nic'", 2),
    ("stop_machine", "kpatch: patching newly loaded module 'nic'", 2),
    ("kgraft", None, 2),
    ("immediate", None, 2),
    ("ksplice", "its target module 'nic' is not loaded", 1),
])
def test_a_module_loaded_after_its_patch_runs_the_new_version_from_its_first_call(model, line, key):
    """Every model but Ksplice patches the coming module before its init
    runs; Ksplice aborts an update whose module is not loaded, and the old
    pair runs on."""
    with Runner(program("module-late/scenario.toml")) as r:
        res, m, _ = r.execute(r.plan(model, 0), keep=True)
        try:
            keys = {e.key for e in m.trace if e.kind == EV_OBSERVE}
            log = [text for _, text in m.log]
        finally:
            m.engine.close()
    assert keys == {key}
    assert res.outcome == ("failed" if model == "ksplice" else "completed")
    assert not res.violations and not res.inconsistencies
    if line:
        assert any(line in text for text in log), log


def test_loader_tasks_are_no_state_before_they_are_forked():
    """insmod-nic and rmmod-nic exist only while they load and unload the
    module (a fork each): before the load, and with no unload at all, a
    transition meets no such task, and coverage counts no state of it."""
    with Runner(program("module-late/scenario.toml")) as r:
        states = r.probe().states
    assert set(states) == {"tx0", "tx1", "tx2"}, states


def test_shrinking_drops_a_task_that_could_only_go_at_the_later_start_point():
    """The kthread flusher has nothing to do with user1's mixed system call
    (livepatch switched user1 at a cond_resched() between two copies). At
    the seed's start point every variant without it passes, at the latest
    failing start point one does not: the shrinker tries again there."""
    from emu.runs.shrink import shrink
    with Runner(program("cve-check/scenario-syscall.toml")) as r:
        spec = r.plan("livepatch", 10)
        small, res, tried = shrink(r, spec, budget=200)
        assert res.inconsistent and tried <= 200
        assert small.tasks is not None and "flusher" not in small.tasks
        assert r.execute(small).trace_hash == res.trace_hash


def _module_late_copy(tmp_path, old, new):
    import shutil
    d = tmp_path / "module-late"
    shutil.copytree(WALK / "module-late", d)
    text = (d / "scenario.toml").read_text()
    assert old in text
    (d / "scenario.toml").write_text(text.replace(old, new))
    return d / "scenario.toml"


def test_a_patch_without_a_function_list_carries_the_module_functions_it_changes(tmp_path, capsys):
    """kpatch-build and klp-build diff every object, the modules' too: a
    patch source named as the module's source (nic.c) is compared with the
    module, and its nic_xmit() is a changed function of module nic. In a
    file compared with the program it would be a new function of the patch
    that nothing calls (the old driver would go on receiving eighths of a
    byte): that is said."""
    path = _module_late_copy(tmp_path, 'functions = ["skb_headroom", "nic:nic_xmit"]\n', "")
    from emu.errors import BuildError
    try:        # the new function uses the module's counter, which only a patch of nic binds to
        build_scenario(load_scenario(path))
    except BuildError as exc:
        assert "undefined symbols: sent" in str(exc)
    assert "nic_xmit is a function of module nic, but its source is compared with the program" in capsys.readouterr().err

    d = path.parent
    text = (d / "fix.c").read_text()
    cut = text.index("__attribute__((noinline)) long nic_xmit")
    (d / "fix").mkdir()
    (d / "fix" / "headroom.c").write_text(text[:cut])
    (d / "fix" / "nic.c").write_text(text[:text.index("__attribute__")] + text[cut:])
    (d / "scenario.toml").write_text((d / "scenario.toml").read_text().replace('sources = ["fix.c"]',
                                                                               'sources = ["fix/headroom.c", "fix/nic.c"]'))
    prog = build_scenario(load_scenario(path))
    assert "is a function of module" not in capsys.readouterr().err
    assert sorted(prog.patches["fix"][1]) == ["nic:nic_xmit", "skb_headroom"]
    with Runner(prog) as r:
        res, m, _ = r.execute(r.plan("livepatch", 0), keep=True)
        try:
            keys = {e.key for e in m.trace if e.kind == EV_OBSERVE}
        finally:
            m.engine.close()
    assert keys == {2} and not res.violations


def test_a_module_function_named_without_its_module_is_refused_with_the_name_to_write(tmp_path, capsys):
    path = _module_late_copy(tmp_path, '"nic:nic_xmit"', '"nic_xmit"')
    assert cli.main(["run", str(path), "--model", "livepatch"]) == 2
    err = capsys.readouterr().err
    assert "patch[fix].functions: no function 'nic_xmit' in the program (module nic defines it: 'nic:nic_xmit')" in err


def test_the_module_patch_through_the_python_api(monkeypatch):
    """module-late built and run with the Python API of the README: the
    patch binds to the module's own symbols (link_against the base and the
    module), the module is loaded later by load_module() with its C init run
    in a loader task, and each image needs addresses of its own: the message
    that refuses an overlap says how to get them."""
    from emu import Machine, build_c, make_model, make_patch
    from emu.errors import UserError
    monkeypatch.chdir(WALK / "module-late")
    base = build_c(["base.c"], base=0x400000)
    m = Machine(base, cpus=2)
    for i in range(3):
        m.add_task(f"tx{i}", "user_entry", (i,))
    insmod = m.add_unborn("insmod-nic")        # the loader task that runs the module's init
    nic = build_c(["nic.c"], base=m.module_base(), name="nic", link_against=base)
    keep = {"skb_headroom", "nic_xmit"}
    clash = build_c(["fix.c"], base=m.module_base(), name="fix", link_against=[base, nic], keep=keep)
    m.load(clash)
    model = make_model("livepatch", m)
    with pytest.raises(UserError, match="overlaps image 'fix' .*: link each image at addresses of its own "
                                        r"\(Machine.module_base\(\) is past the images loaded so far, not past "
                                        r"one built and not loaded yet: link the next image past that one's .hi\)"):
        model.load_module(nic)

    m = Machine(base, cpus=2)
    for i in range(3):
        m.add_task(f"tx{i}", "user_entry", (i,))
    insmod = m.add_unborn("insmod-nic")
    nic = build_c(["nic.c"], base=m.module_base(), name="nic", link_against=base)
    fix = build_c(["fix.c"], base=(nic.hi + 0xfff) & ~0xfff, name="fix", link_against=[base, nic], keep=keep)
    m.load(fix)
    model = make_model("livepatch", m)
    patch = model.add(make_patch(m, "fix", fix, ["skb_headroom", "nic:nic_xmit"]))
    m.at(20_000, lambda: model.enable(patch))
    m.at(420_000, lambda: model.load_module(nic, init=lambda: m.fork(insmod, nic.symbols["nic_init"])))
    m.run(until=m.seconds(5))
    assert model.transitions[-1].result == "completed"
    assert (420_000, "livepatch: applying patch 'fix' to loading module 'nic'") in m.log
    keys = {e.key for e in m.trace if e.kind == EV_OBSERVE}
    assert keys == {2}


def test_a_field_that_changes_meaning_is_caught_by_the_assertion_not_as_a_handover():
    """The timeout travels through struct req, where no register or stack
    slot carries it from req_arm() to req_expire(): a value handover cannot
    be claimed; the new reader's assertion sees ticks where it wants
    milliseconds, wherever the kernel lets a sleeper in wait_queue() switch."""
    rows = campaign("field-meaning/scenario.toml", ["kgraft", "livepatch"], 8)
    assert rows["livepatch"]["bad_values"] > 0 and rows["livepatch"]["handovers"] == 0
    assert rows["kgraft"]["bad_values"] == 0 and rows["kgraft"]["completed"] == 8


@pytest.mark.parametrize("model,key", [("livepatch", 2), ("ksplice", 1)])
def test_a_run_goes_on_past_its_last_action_to_see_what_it_started(tmp_path, model, key):
    """With the default [fuzz] until ("transitions"), a run whose transition
    ended long before its last action (the module's load, 4 s later) ended
    as that action fired: the module's init never ran, the driver was never
    called, and every model passed a scenario that checked nothing. The run
    now goes on two cycles of the tasks past the last action."""
    path = _module_late_copy(tmp_path, 'until = "horizon"\nhorizon = 1.0\n', "")
    with Runner(program(path)) as r:
        res, m, _ = r.execute(r.plan(model, 0), keep=True)
        try:
            keys = {e.key for e in m.trace if e.kind == EV_OBSERVE}
        finally:
            m.engine.close()
    assert keys == {key} and not res.violations
