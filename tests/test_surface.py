"""Modules and shadow variables under every model, written from what each
system does: a module loaded before, during or after a transition ends up
patched (upstream's klp_module_coming, kpatch's module notifier and its
retry that links every object loaded by then, kGraft's module hook,
immediate at once), its functions are called by base code through an ops
pointer the module registers, and module code calls base code; the shadow
variable hypercalls of lpemu.h work whatever the model."""
import errno

import pytest

from emu.engine import core
from emu.kernel.patch import make_patch
from emu.machine import hypercall
from emu.machine.machine import Machine
from emu.models import MODEL_NAMES, make_model

# Ksplice refuses an update whose target module is not loaded (kmodsrc/ksplice.c
# apply_update: TARGET_NOT_LOADED) and patches no module that loads later:
# tests/test_heldout.py::test_ksplice_refuses_an_update_for_a_module_not_loaded
MODULE_PATCH_MODELS = [n for n in MODEL_NAMES if n != "ksplice"]
from emu.models.refusals import PatchRefused

BASE = """
long (*mod_ops)(long);                 /* the module registers its function here */
__attribute__((noinline)) long helper(long x) { return x + 1; }
__attribute__((noinline)) long call_ops(long x) { long (*f)(long) = mod_ops; return f ? f(x) : -1; }
__attribute__((noinline)) long slow(long t) { lpemu_sleep(t); return t; }
long user(long id) {
    for (;;) {
        lpemu_observe(1, call_ops(id));
        lpemu_return_to_user();
        lpemu_sleep(1);             /* most of its time outside the module */
    }
}
long kth(long t) {
    for (;;) { slow(t); lpemu_sleep(t); lpemu_safe_point(); }
}
"""
MODULE = """
long helper(long);
__attribute__((noinline)) long mod_fn(long x) { return helper(x) * 10; }
"""
PATCH = """
long helper(long);
__attribute__((noinline)) long mod_fn(long x) { return helper(x) * 10 + 5; }
__attribute__((noinline)) long slow(long t) { lpemu_sleep(t); return t + 0; }
"""


def build(compile_c, model_name, *, kthread=True):
    base = compile_c(BASE)
    m = Machine(base, cpus=2, quantum=300)
    for i in range(3):
        m.add_task(f"user{i}", "user", (i,))
    if kthread:
        m.add_task("kth", "kth", (30,), kind="kthread")      # sleeps of 0.3 s
    model = make_model(model_name, m)
    mod = compile_c(MODULE, name="mod", base=m.module_base(), link_against=base)
    patch_img = compile_c(PATCH, name="fix", base=mod.hi + 0x10000 & ~0xfff, link_against=base,
                          keep={"mod_fn", "slow"})
    m.load(patch_img)
    patch = make_patch(m, "fix", patch_img, ["slow", "mod:mod_fn"])
    return m, model, base, mod, patch


def registrar(m, base, mod):
    """The module's init: register mod_fn into the base's ops pointer (as a
    module_init registering its ops table does)."""
    def init():
        m.engine.view(base.symbols["mod_ops"], 8)[:] = mod.functions["mod_fn"].start.to_bytes(8, "little")
    return init


def values_after(m, when):
    return [(e[0], e[4]) for e in m.trace if e[1] == core.EV_OBSERVE and e[3] == 1 and e[0] >= when]


@pytest.mark.parametrize("model_name", MODEL_NAMES)
@pytest.mark.parametrize("when", ["before", "during", "after"])
def test_a_module_loaded_before_during_or_after_a_transition_ends_up_patched(compile_c, model_name, when):
    m, model, base, mod, patch = build(compile_c, model_name)
    m.run(until=m.seconds(0.1))
    if when == "before":
        model.load_module(mod, init=registrar(m, base, mod))
        m.run(until=m.now + m.seconds(0.1))
    if model_name == "ksplice" and when != "before":
        # apply_update(): TARGET_NOT_LOADED (kmodsrc/ksplice.c), nothing is patched
        with pytest.raises(PatchRefused, match="target module 'mod' is not loaded"):
            model.enable(patch)
        return
    model.enable(patch)
    if when == "during":
        m.run(until=m.now + m.ticks(5))
        if model_name != "immediate":
            assert model.transition is not None, "the load is meant to come mid-transition"
        model.load_module(mod, init=registrar(m, base, mod))
    m.run(until=m.now + m.seconds(12))
    assert model.transitions[0].result == "completed"
    if when == "after":
        model.load_module(mod, init=registrar(m, base, mod))
    m.run(until=m.now + m.seconds(1))
    settled = m.now - m.seconds(0.5)
    late = values_after(m, settled)
    assert late, "the tasks kept observing"
    # the module's function is called through the base's ops pointer and
    # calls the base's helper: every late call runs the patched version
    assert {v for _, v in late} == {i * 10 + 15 for i in range(3)}
    assert patch.object("mod").patched and patch.enabled
    # before the module came, nothing was registered
    first = values_after(m, 0)[0][1]
    assert first == -1


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_a_module_unloaded_and_loaded_again_is_patched_again(compile_c, model_name):
    m, model, base, mod, patch = build(compile_c, model_name, kthread=False)
    model.load_module(mod, init=registrar(m, base, mod))
    model.enable(patch)
    m.run(until=m.seconds(5))
    assert model.transitions[0].result == "completed"

    def unregister():
        m.engine.view(base.symbols["mod_ops"], 8)[:] = bytes(8)
    if model_name in ("stop_machine", "ksplice"):
        # kpatch holds a reference on the module it linked: in use until the
        # patch is removed (kpatch_unregister unlinks it), its exit unrun;
        # so does a Ksplice update on its target (apply_update's ref_module)
        with pytest.raises(PatchRefused, match=r"Module mod is in use.*-EAGAIN"):
            model.unload_module(mod, exit=lambda: pytest.fail("the exit of a module in use ran"))
        assert patch.object("mod").patched and "mod" not in m.unloaded
        model.disable(patch)
        m.run(until=m.now + m.seconds(5))
        assert model.transitions[1].result == "completed"
    model.unload_module(mod, exit=unregister)
    assert not patch.object("mod").patched
    if model_name == "stop_machine":
        model.enable(patch)             # a fresh insmod of the patch: the module is not loaded
    if model_name == "ksplice":         # its target is not loaded: TARGET_NOT_LOADED
        with pytest.raises(PatchRefused, match="target module 'mod' is not loaded"):
            model.enable(patch)
    m.run(until=m.now + m.seconds(0.5))
    assert {v for _, v in values_after(m, m.now - m.seconds(0.2))} == {-1}
    model.load_module(mod, init=registrar(m, base, mod))
    m.run(until=m.now + m.seconds(1))
    again = 10 if model_name == "ksplice" else 15        # Ksplice never patches a module loaded later
    assert {v for _, v in values_after(m, m.now - m.seconds(0.5))} == {i * 10 + again for i in range(3)}


@pytest.mark.parametrize("model_name", MODULE_PATCH_MODELS)
def test_a_module_loaded_after_the_patch_went_away_runs_its_own_code(compile_c, model_name):
    m, model, base, mod, patch = build(compile_c, model_name, kthread=False)
    model.enable(patch)
    m.run(until=m.seconds(5))
    model.disable(patch)
    m.run(until=m.now + m.seconds(5))
    assert [t.result for t in model.transitions] == ["completed", "completed"]
    model.load_module(mod, init=registrar(m, base, mod))
    m.run(until=m.now + m.seconds(1))
    assert {v for _, v in values_after(m, m.now - m.seconds(0.5))} == {i * 10 + 10 for i in range(3)}
    assert not patch.object("mod").patched


SHADOW_BASE = """
struct conn { long id; long pad; } conns[2];
__attribute__((noinline)) long account(struct conn *c) { return c->id; }
long user(long i) {
    for (;;) { lpemu_observe(1, account(&conns[i])); lpemu_return_to_user(); }
}
"""
SHADOW_PATCH = """
#include "lpemu.h"
struct conn { long id; long pad; };
__attribute__((noinline)) long account(struct conn *c)
{
    long *count = lpemu_shadow_get(c, 7);      /* missing on a connection seen first */
    if (!count)
        count = lpemu_shadow_alloc(c, 7, sizeof(long));
    if (!count)
        return -1000;
    *count += 1;
    return 100 + *count;
}
"""


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_shadow_variable_hypercalls_work_under_every_model(compile_c, model_name):
    base = compile_c(SHADOW_BASE)
    m = Machine(base, cpus=2, quantum=300)
    for i in range(2):
        m.add_task(f"user{i}", "user", (i,))
    model = make_model(model_name, m)
    img = compile_c(SHADOW_PATCH, name="shadow_fix", base=m.module_base(), link_against=base, keep={"account"})
    m.load(img)
    patch = make_patch(m, "shadow_fix", img, ["account"])
    m.run(until=m.seconds(0.05))
    model.enable(patch)
    m.run(until=m.seconds(5))      # a fault would raise here
    assert model.transitions[0].result == "completed"
    conns = {base.symbols["conns"] + 16 * i for i in range(2)}
    assert {obj for obj, sid in model.shadow.vars} == conns
    values = [e[4] for e in m.trace if e[1] == core.EV_OBSERVE and e[3] == 1]
    assert -1000 not in values and max(values) > 101
    for obj in conns:     # each connection's counter in guest memory: its own calls
        assert model.shadow.read_word(model.shadow.get(obj, 7)) >= 1


def test_kpatch_callbacks_run_inside_stop_machine_around_the_switch(compile_c):
    m, model, base, mod, patch = build(compile_c, "stop_machine", kthread=False)
    calls = []

    def recorder(name, ret=0):
        def cb(machine, p, obj):
            calls.append((name, obj.name, machine.all_stopped, patch.enabled))
            return ret
        return cb
    for obj in patch.objects:
        obj.callbacks = {n: recorder(n) for n in ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")}
    m.run(until=m.seconds(0.05))
    model.enable(patch)          # the module is not loaded: vmlinux's callbacks only
    m.run(until=m.seconds(3))
    assert model.transitions[0].result == "completed"
    assert calls == [("pre_patch", "vmlinux", True, False), ("post_patch", "vmlinux", True, True)]
    calls.clear()
    model.load_module(mod, init=registrar(m, base, mod))       # the module notifier
    assert calls == [("pre_patch", "mod", False, True), ("post_patch", "mod", False, True)]
    assert "kpatch: patching newly loaded module 'mod'" in [text for _, text in m.log]
    calls.clear()
    model.disable(patch)
    m.run(until=m.seconds(6))
    assert model.transitions[1].result == "completed"
    assert calls == [("pre_unpatch", "vmlinux", True, True), ("pre_unpatch", "mod", True, True),
                     ("post_unpatch", "vmlinux", True, False), ("post_unpatch", "mod", True, False)]


def test_a_kpatch_pre_patch_refusal_in_the_module_notifier_keeps_the_module_held(compile_c):
    """kpatch_module_notify_coming(): kpatch_link_object() (a reference on
    the module), "patching newly loaded module", then pre_patch; a refusal
    ends the notifier with the functions out of the hash and a WARN, the
    module loaded (a notifier cannot stop it), unpatched and still held:
    its rmmod is refused. No post_patch; no post_unpatch either later
    (callbacks_enabled is false)."""
    m, model, base, mod, patch = build(compile_c, "stop_machine", kthread=False)
    m.run(until=m.seconds(0.05))
    model.enable(patch)          # the module is not loaded yet
    m.run(until=m.seconds(3))
    assert model.transitions[0].result == "completed"
    calls = []
    patch.object("mod").callbacks = {
        "pre_patch": lambda machine, p, obj: calls.append("pre") or -19,
        "post_patch": lambda machine, p, obj: calls.append("post"),
        "post_unpatch": lambda machine, p, obj: calls.append("post_unpatch")}
    model.load_module(mod, init=registrar(m, base, mod))
    m.watch(m.function("mod:mod_fn"))           # its entries in the trace, for the promise oracle
    log = [text for _, text in m.log]
    assert log[-3:] == ["kpatch: patching newly loaded module 'mod'", "kpatch: pre-patch callback failed!",
                        "error (-19) patching newly loaded module 'mod'"]
    assert calls == ["pre"] and not patch.object("mod").patched
    m.run(until=m.now + m.seconds(0.5))
    assert {v for _, v in values_after(m, m.now - m.seconds(0.2))} == {i * 10 + 10 for i in range(3)}
    with pytest.raises(PatchRefused, match="in use") as exc:
        model.unload_module(mod)
    assert exc.value.errno == errno.EWOULDBLOCK
    assert calls == ["pre"]
    # the promise oracle takes the module's functions as not carried by the patch
    from emu.runs.verdicts import verdicts
    assert model.unlinked == {(patch.index, "mod")}
    assert verdicts(m, [patch], spec_model="stop_machine", unlinked=model.unlinked).breaches == 0
    assert verdicts(m, [patch], spec_model="stop_machine").breaches > 0
    # the patch's removal unlinks the object (kpatch_unlink_object): the module goes free
    model.disable(patch)
    m.run(until=m.now + m.seconds(3))
    assert model.transitions[-1].result == "completed" and calls == ["pre"]
    model.unload_module(mod)


def test_a_module_whose_init_fails_goes_free_of_kpatchs_link(compile_c):
    """A module whose init fails goes whatever holds it (do_init_module's
    failure path runs the going notifiers and frees it): kpatch's going
    notifier (kpatch_module_notify_going) runs pre_unpatch, takes the
    functions out of the hash, runs post_unpatch and unlinks the object
    (its module_put); the next load is linked again."""
    m, model, base, mod, patch = build(compile_c, "stop_machine", kthread=False)
    m.run(until=m.seconds(0.05))
    model.enable(patch)
    m.run(until=m.seconds(3))
    calls = []
    patch.object("mod").callbacks = {n: (lambda n: lambda machine, p, obj: calls.append(n) or 0)(n)
                                     for n in ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")}
    model.load_module(mod)                       # its init fails: the loader unloads it again
    assert model.module_refs == {"mod": {"fix"}}
    model.unload_module(mod, check=False)
    assert calls == ["pre_patch", "post_patch", "pre_unpatch", "post_unpatch"]
    assert model.module_refs == {} and not patch.object("mod").patched
    model.load_module(mod, init=registrar(m, base, mod))
    assert model.module_refs == {"mod": {"fix"}} and patch.object("mod").patched
    m.run(until=m.now + m.seconds(0.5))
    assert {v for _, v in values_after(m, m.now - m.seconds(0.2))} == {i * 10 + 15 for i in range(3)}


def test_a_kpatch_pre_patch_refusal_fails_the_load_and_undoes_the_others(compile_c):
    m, model, base, mod, patch = build(compile_c, "stop_machine", kthread=False)
    m.run(until=m.seconds(0.05))
    model.load_module(mod, init=registrar(m, base, mod))
    calls = []
    patch.object("vmlinux").callbacks = {
        "pre_patch": lambda machine, p, obj: calls.append("pre vmlinux") or 0,
        "post_unpatch": lambda machine, p, obj: calls.append("post_unpatch vmlinux")}
    patch.object("mod").callbacks = {"pre_patch": lambda machine, p, obj: calls.append("pre mod") or -22}
    model.enable(patch)
    m.run(until=m.seconds(3))
    assert model.transitions[0].result == "failed"
    assert calls == ["pre vmlinux", "pre mod", "post_unpatch vmlinux"]
    assert "kpatch: pre-patch callback failed!" in [text for _, text in m.log]
    assert not patch.enabled
    # nothing was switched: the module's own code runs
    assert {v for _, v in values_after(m, m.now - m.seconds(0.5))} == {i * 10 + 10 for i in range(3)}


FREEZABLE = """
volatile long zero;
__attribute__((noinline)) long work(long n) { lpemu_observe(1, 0 + zero); return n; }
long kth(long n) { for (;;) { work(n); lpemu_sleep_freezable(3); } }
"""
FREEZABLE_PATCH = """
extern volatile long zero;
__attribute__((noinline)) long work(long n) { lpemu_observe(1, 1 + zero); return n; }
"""


def freezable(compile_c, model_name, kernel):
    base = compile_c(FREEZABLE)
    m = Machine(base, cpus=2, quantum=300)
    m.add_task("kth", "kth", (1,), kind="kthread")
    model = make_model(model_name, m, kernel=kernel)
    img = compile_c(FREEZABLE_PATCH, name="fix", base=m.module_base(), link_against=base, keep={"work"})
    m.load(img)
    return m, model, make_patch(m, "fix", img, ["work"])


@pytest.mark.parametrize("kernel,switches", [("6.16", True), ("6.19", True), ("6.8", False), ("4.18", False)])
def test_a_freezable_sleep_is_a_switch_point_from_6_16(compile_c, kernel, switches):
    m, model, patch = freezable(compile_c, "livepatch", kernel)
    m.run(until=m.seconds(0.05))
    model.enable(patch)
    task = m.tasks[0]
    # the scheduler sees the kthread go to a freezable sleep, its stack clear
    # (still pending, as a task the first check did not switch)
    m.set_patch_state(task, 0)
    task.pending = True
    m.hypercalls[hypercall.SLEEP_FREEZABLE](m, task, ())
    assert (task.patch_state == 1) == switches
    assert ("freezable_sleep" in [h for _, n, _, h in model.switches if n == "kth"]) == switches


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_a_freezable_sleep_sleeps_under_every_model(compile_c, model_name):
    m, model, patch = freezable(compile_c, model_name, None)
    m.run(until=m.seconds(0.05))
    model.enable(patch)
    m.run(until=m.seconds(3))
    assert model.transitions[0].result == "completed"
    seen = [e[4] for e in m.trace if e[1] == core.EV_OBSERVE]
    assert seen[-1] == 1 and 10 < len(seen) < 200       # about one call every 3 ticks


@pytest.mark.parametrize("kernel,fields", [("5.14", set()), ("6.11", {"replace"}),
                                           ("6.14", {"replace", "stack_order"})])
def test_sysfs_shows_replace_from_6_11_and_stack_order_from_6_14(compile_c, kernel, fields):
    m, model, patch = freezable(compile_c, "livepatch", kernel)
    m.run(until=m.seconds(0.05))
    model.enable(patch)
    (p,) = model.status()["patches"]
    assert {"replace", "stack_order"} & set(p) == fields


@pytest.mark.parametrize("bad", ["4.17", "6.20", "7.0", "5.20", "6", "six.eight", ""])
def test_unknown_kernel_versions_are_refused(compile_c, bad):
    base = compile_c(FREEZABLE)
    m = Machine(base)
    with pytest.raises(ValueError, match="kernel version"):
        make_model("livepatch", m, kernel=bad)


def scenario_files(tmp_path, kernel=None):
    (tmp_path / "base.c").write_text('#include "lpemu.h"\n' + BASE)
    (tmp_path / "mod.c").write_text(MODULE)
    (tmp_path / "fix.c").write_text('#include "lpemu.h"\n' + PATCH)
    (tmp_path / "s.toml").write_text(f"""
[program]
sources = ["base.c"]
[machine]
cpus = 2
quantum = 300
{f'kernel = "{kernel}"' if kernel else ''}
[[task]]
name = "user"
entry = "user"
args = [0]
[[task]]
name = "kth"
entry = "kth"
args = [30]
kind = "kthread"
[[module]]
name = "mod"
sources = ["mod.c"]
[[patch]]
name = "fix"
sources = ["fix.c"]
functions = ["slow", "mod:mod_fn"]
[[action]]
at = 20000
do = "enable"
patch = "fix"
[[action]]
at = 20500
do = "load"
module = "mod"
[fuzz]
horizon = 12.0
""")
    return tmp_path / "s.toml"


@pytest.mark.parametrize("model_name", MODULE_PATCH_MODELS)
def test_a_scenario_loading_a_module_mid_transition_patches_it_under_every_model(tmp_path, model_name):
    from emu.runs import scenario
    from emu.runs.fuzz import Runner
    r = Runner(scenario.build(scenario.load(scenario_files(tmp_path))))
    res, m, model = r.execute(r.plan(model_name, 0), keep=True)
    try:
        assert res.fault is None and not res.errors
        assert res.outcome == "completed"
        loaded = m.by_name["mod:mod_fn"]
        assert [p.object("mod").patched for p in model.patches] == [True]
        # the module loads without an init here: its function is patched in the redirect
        assert any(f.old is loaded and f.patched for p in model.patches for _, f in p.funcs())
    finally:
        m.engine.close()
        r.close()


def test_a_scenario_names_its_kernel_and_a_wrong_one_is_refused(tmp_path):
    from emu.errors import ScenarioError
    from emu.runs import scenario
    assert scenario.load(scenario_files(tmp_path, "5.14")).machine["kernel"] == "5.14"
    with pytest.raises(ScenarioError, match=r"kernel.*'6\.42'"):
        scenario.load(scenario_files(tmp_path, "6.42"))


def test_run_kernel_option_selects_the_version(tmp_path, capsys):
    import json as _json

    from emu.app import cli
    path = scenario_files(tmp_path)
    cli.main(["run", str(path), "--model", "livepatch", "--kernel", "5.14", "--json"])
    out = _json.loads(capsys.readouterr().out)
    assert out["status"]["kernel"] == "5.14" and "--kernel 5.14" in out["command"]
    assert cli.main(["run", str(path), "--model", "livepatch", "--kernel", "3.10"]) == 2
    assert "--kernel" in capsys.readouterr().err


@pytest.mark.parametrize("kernel", ["5.14", "6.14"])
def test_run_json_shows_sysfs_as_the_kernel_has_it(tmp_path, capsys, kernel):
    import json as _json

    from emu.app import cli
    cli.main(["run", str(scenario_files(tmp_path)), "--model", "livepatch", "--kernel", kernel, "--json"])
    sysfs = _json.loads(capsys.readouterr().out)["status"]["sysfs"]
    assert sysfs["fix/enabled"] == {"mode": "-rw-r--r--", "value": "1"}
    assert sysfs["fix/transition"] == {"mode": "-r--r--r--", "value": "0"}
    assert sysfs["fix/force"] == {"mode": "--w-------", "value": None}
    assert sysfs["fix/mod/mod_fn,1"]["mode"] == "drwxr-xr-x"
    new = kernel == "6.14"
    # the module loaded mid-transition is patched; 5.14 has no file that says so
    assert sysfs.get("fix/mod/patched") == ({"mode": "-r--r--r--", "value": "1"} if new else None)
    assert ("fix/stack_order" in sysfs, "fix/replace" in sysfs) == (new, new)


def test_kpatch_keeps_the_references_of_the_patches_a_replace_takes_over(compile_c):
    """kpatch_register() with replace drops the replaced patches from its
    list without unlinking their objects (no kpatch_unlink_object, so no
    module_put): a module only they patched stays in use. Removing the
    replacing patch does not release it either."""
    m, model, base, mod, patch = build(compile_c, "stop_machine", kthread=False)
    model.load_module(mod, init=registrar(m, base, mod))
    model.enable(patch)
    m.run(until=m.seconds(3))
    other = make_patch(m, "fix2", patch.image, ["slow"], replace=True)     # vmlinux only
    model.enable(other)
    m.run(until=m.now + m.seconds(3))
    assert [t.result for t in model.transitions] == ["completed", "completed"]
    assert not patch.enabled and other.enabled
    model.disable(other)
    m.run(until=m.now + m.seconds(3))
    assert model.transitions[-1].result == "completed"
    with pytest.raises(PatchRefused, match=r"Module mod is in use: kpatch holds a reference on it for 'fix'"):
        model.unload_module(mod)


def test_a_kpatch_load_that_gives_up_releases_the_module(compile_c):
    """Each attempt links the module (a reference) and a failed one unlinks
    it again (kpatch_register's error path): a module is in use while an
    attempt holds it, and free to go once the kpatch tool gives up."""
    m, model, base, mod, patch = build(compile_c, "stop_machine", kthread=False)
    m.add_task("kth", "kth", (3000,), kind="kthread")       # asleep in slow() for 30 s
    model.load_module(mod, init=registrar(m, base, mod))
    m.run(until=m.seconds(0.1))
    model.enable(patch)
    with pytest.raises(PatchRefused, match="Module mod is in use"):
        model.unload_module(mod)                            # the first attempt holds it
    m.run(until=m.now + m.seconds(15))
    t = model.transitions[0]
    assert t.result == "failed" and t.attempts == 5 and not patch.enabled
    model.unload_module(mod)
    assert "mod" in m.unloaded


@pytest.mark.parametrize("model_name", ["immediate", "stop_machine"])    # Ksplice: TARGET_NOT_LOADED
def test_a_second_load_while_the_first_waits_in_its_notifier_is_refused(compile_c, model_name):
    """The enable's work holds the core's mutex (kpatch_mutex, ftrace_lock):
    a load waits in its coming notifier. A second load of the same module
    then is the kernel's second insmod, which waits for the first and finds
    the module loaded (-EEXIST); the first comes, once, and is patched."""
    m, model, base, mod, patch = build(compile_c, model_name, kthread=False)
    model.enable(patch)
    model.load_module(mod, init=registrar(m, base, mod))
    assert "mod" in model.loading
    with pytest.raises(PatchRefused, match=r"module 'mod' is already loaded.*EEXIST"):
        model.load_module(mod, init=lambda: pytest.fail("a second init ran"))
    m.run(until=m.seconds(5))
    assert not model.loading and patch.object("mod").patched
    assert {v for _, v in values_after(m, m.now - m.seconds(0.5))} == {i * 10 + 15 for i in range(3)}
