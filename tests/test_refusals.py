"""What every model refuses, written from what each system does: a patch
that is enabled cannot be enabled again, one that is not enabled cannot be disabled (livepatch's sysfs write of 0 to
`enabled` returns -EINVAL; a kpatch, Ksplice or kGraft patch module that
never loaded, or was already unloaded, cannot be unloaded), and nothing of
the machine changes when it is refused."""
import errno
from pathlib import Path

import pytest

from emu.engine import core
from emu.errors import Busy
from emu.kernel.patch import make_patch
from emu.machine.machine import Machine
from emu.models import MODEL_NAMES, make_model

# Ksplice refuses an update whose target module is not loaded (kmodsrc/ksplice.c
# apply_update: TARGET_NOT_LOADED) and patches no module that loads later:
# tests/test_heldout.py::test_ksplice_refuses_an_update_for_a_module_not_loaded
MODULE_PATCH_MODELS = [n for n in MODEL_NAMES if n != "ksplice"]
from emu.models.refusals import PatchRefused

BASE = """
__attribute__((noipa)) long f(long x) { return x + 1; }   /* called on every pass */
long user(long id) {
    for (;;) { lpemu_observe(1, f(id)); lpemu_return_to_user(); lpemu_sleep(1); }
}
"""
PATCH = """
__attribute__((noinline)) long f(long x) { return x + 2; }
"""


def build(compile_c, model_name):
    base = compile_c(BASE)
    m = Machine(base, cpus=2, quantum=300)
    for i in range(3):
        m.add_task(f"user{i}", "user", (i,))
    model = make_model(model_name, m)
    img = compile_c(PATCH, name="fix", base=base.hi + 0x10000 & ~0xfff, link_against=base)
    m.load(img)
    return m, model, make_patch(m, "fix", img, ["f"])


def observed(m, since):
    return {e[4] for e in m.trace if e[1] == core.EV_OBSERVE and e[3] == 1 and e[0] >= since}


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_disabling_a_patch_never_enabled_is_refused(compile_c, model_name):
    m, model, patch = build(compile_c, model_name)
    m.run(until=m.seconds(0.1))
    with pytest.raises(PatchRefused, match="'fix' is not enabled.*EINVAL"):
        model.disable(patch)
    assert model.transition is None and not model.transitions
    m.run(until=m.now + m.seconds(0.5))
    assert observed(m, m.now - m.seconds(0.3)) == {1, 2, 3}       # the original f


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_disabling_twice_is_refused_the_second_time(compile_c, model_name):
    m, model, patch = build(compile_c, model_name)
    model.enable(patch)
    m.run(until=m.seconds(8))
    assert model.transitions[-1].result == "completed"
    assert observed(m, m.now - m.seconds(0.3)) == {2, 3, 4}       # the patched f
    model.disable(patch)
    m.run(until=m.now + m.seconds(8))
    assert model.transitions[-1].result == "completed" and not patch.enabled
    with pytest.raises(PatchRefused, match="not enabled"):
        model.disable(patch)
    assert len(model.transitions) == 2
    m.run(until=m.now + m.seconds(0.5))
    assert observed(m, m.now - m.seconds(0.3)) == {1, 2, 3}


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_enabling_twice_is_refused_the_second_time(compile_c, model_name):
    """An enabled patch is not enabled again: kpatch_register() and
    livepatch's sysfs write of 1 return -EINVAL; a kGraft patch is its
    module, which a second insmod finds loaded (-EEXIST). Every model but
    livepatch ran a second transition instead (kGraft's broke its own
    promise)."""
    m, model, patch = build(compile_c, model_name)
    model.enable(patch)
    m.run(until=m.seconds(8))
    assert model.transitions[-1].result == "completed"
    err = errno.EEXIST if model_name == "kgraft" else errno.EINVAL
    with pytest.raises(PatchRefused, match=f"'fix' is already enabled.*{errno.errorcode[err]}"):
        model.enable(patch)
    assert len(model.transitions) == 1 and patch.enabled
    m.run(until=m.now + m.seconds(3))
    assert observed(m, m.now - m.seconds(0.3)) == {2, 3, 4}       # the patched f, still


def test_a_kpatch_module_that_patches_nothing_is_refused(compile_c):
    """kpatch_register() returns -EINVAL for a patch module with no object
    (list_empty(&kpmod->objects)), before it takes kpatch_mutex or looks
    at anything else; nothing changes, the original runs on."""
    m, model, _ = build(compile_c, "stop_machine")
    empty = make_patch(m, "empty", m.images[-1], [])
    m.run(until=m.seconds(0.1))
    with pytest.raises(PatchRefused, match="'empty'.*patches no object.*EINVAL"):
        model.enable(empty)
    with pytest.raises(PatchRefused, match="'empty'.*patches no object.*EINVAL"):
        model.enable(empty)              # the same answer again: nothing was enabled
    assert not model.transitions and not empty.enabled
    m.run(until=m.now + m.seconds(0.5))
    assert observed(m, m.now - m.seconds(0.3)) == {1, 2, 3}


@pytest.mark.parametrize("model_name", [n for n in MODEL_NAMES if n != "immediate"])
def test_disabling_while_another_transition_runs_is_busy_or_a_reversal(compile_c, model_name):
    m, model, patch = build(compile_c, model_name)
    model.enable(patch)
    if model_name not in ("stop_machine", "ksplice"):      # their switch is one stop_machine away
        m.run(until=m.now + m.ticks(3))   # the enable's text changes are done
    assert model.transition is not None, "meant to come mid-transition"
    if model_name == "livepatch":
        model.disable(patch)              # livepatch reverses the transition in progress
        m.run(until=m.now + m.seconds(8))
        assert not patch.enabled
    elif model_name == "kgraft":
        # kgr_modify_kernel(): "another patching not yet finalized", -EAGAIN
        with pytest.raises(PatchRefused) as e:
            model.disable(patch)
        assert e.value.errno == errno.EAGAIN
    else:
        with pytest.raises(Busy):
            model.disable(patch)


MOD_BASE = """
long (*mod_ops)(long);
__attribute__((noipa)) long helper(long x) { return x + 1; }
__attribute__((noipa)) long call_ops(long x) { long (*g)(long) = mod_ops; return g ? g(x) : -1; }
long user(long id) {
    for (;;) { lpemu_observe(1, call_ops(id)); lpemu_return_to_user(); lpemu_sleep(1); }
}
"""
MOD = """
long helper(long);
__attribute__((noinline)) long mod_fn(long x) { return helper(x) * 10; }
"""
MOD_FIX = """
long helper(long);
__attribute__((noinline)) long mod_fn(long x) { return helper(x) * 10 + 5; }
__attribute__((noinline)) long helper(long x) { return x + 1; }
"""


def module_files(tmp_path, mod: str, module_keys: str, actions: str, *, count: int = 1) -> Path:
    """A scenario in tmp_path: MOD_BASE's user tasks (count of them), the
    module mod (its [[module]] keys after name and sources), the patch fix
    of helper and mod:mod_fn, the actions; its path."""
    for name, text in (("base.c", MOD_BASE), ("mod.c", mod), ("fix.c", MOD_FIX)):
        (tmp_path / name).write_text('#include "lpemu.h"\n' + text)
    (tmp_path / "s.toml").write_text(f"""
[program]
sources = ["base.c"]
[machine]
cpus = 2
quantum = 300
[[task]]
name = "user"
entry = "user"
args = [0]
count = {count}
[[module]]
name = "mod"
sources = ["mod.c"]
{module_keys}
[[patch]]
name = "fix"
sources = ["fix.c"]
functions = ["helper", "mod:mod_fn"]
{actions}
""")
    return tmp_path / "s.toml"


def module_scenario(tmp_path, load_at):
    return module_files(tmp_path, MOD, "", f"""
[[action]]
at = 20000
do = "enable"
patch = "fix"
[[action]]
at = {load_at}
do = "load"
module = "mod"
[fuzz]
horizon = 5.0
""", count=3)


@pytest.mark.parametrize("model_name", MODULE_PATCH_MODELS)
@pytest.mark.parametrize("delay", [1, 30, 200, 600])
def test_a_module_load_while_the_core_changes_text_waits_and_is_patched(tmp_path, model_name, delay):
    """insmod right after the write to `enabled`: the kernel's load blocks
    on klp_mutex (klp_module_coming) while the patch's ftrace sites change,
    then loads and is patched; it is never refused for it."""
    from emu.runs import scenario
    from emu.runs.fuzz import Runner
    r = Runner(scenario.build(scenario.load(module_scenario(tmp_path, 20000 + delay))))
    res, m, model = r.execute(r.plan(model_name, 0), keep=True)
    try:
        assert res.fault is None and not res.errors, res.errors
        assert res.outcome == "completed"
        assert model.patches[0].object("mod").patched
    finally:
        m.engine.close()
        r.close()


KSPLICE_BASE = """
__attribute__((noinline)) long f(long t) { lpemu_sleep(t); return 1; }
long sleeper(long t) { lpemu_observe(1, f(t)); return 0; }
"""
KSPLICE_FIX = """
__attribute__((noinline)) long f(long t) { lpemu_sleep(t); return 2; }
"""
KSPLICE_MOD = """
__attribute__((noinline)) long mod_fn(long x) { return x + 1; }
"""


def test_a_module_going_during_a_ksplice_update_waits_for_its_end(compile_c):
    """ksplice.c stage_store() holds module_mutex across the whole update:
    a module going meanwhile (free_module takes module_mutex) stays until
    the update ends, not until the end of one attempt. The update here
    fails its five attempts (a task sleeps in f for 30 s)."""
    base = compile_c(KSPLICE_BASE)
    m = Machine(base, cpus=2, quantum=400)
    m.add_task("sleeper", "sleeper", (3000,))
    model = make_model("ksplice", m)
    fix = compile_c(KSPLICE_FIX, name="fix", base=base.hi + 0x10000 & ~0xfff, link_against=base)
    mod = compile_c(KSPLICE_MOD, name="extra", base=fix.hi + 0x10000 & ~0xfff, link_against=base)
    m.load(fix)
    patch = model.add(make_patch(m, "p1", fix, ["f"]))
    model.load_module(mod)
    m.run(until=m.seconds(0.1))
    model.enable(patch)
    m.run(until=m.now + m.seconds(0.3))
    model.unload_module(mod)                 # its going path waits for module_mutex
    m.run(until=m.now + m.seconds(2.5))      # two attempts ended meanwhile
    t = model.transitions[0]
    assert t.result == "pending" and t.attempts >= 2
    assert "extra" not in m.unloaded
    m.run(until=m.now + m.seconds(6))
    assert (t.result, t.attempts) == ("failed", 5)
    assert "extra" in m.unloaded


GOING_MOD = """
long helper(long);
__attribute__((noinline)) long mod_fn(long x) { return helper(x) * 10; }
int mod_init(void) { return 0; }
void mod_exit(void) { lpemu_sleep(50); }       /* half a second of module_exit */
"""


@pytest.mark.parametrize("model_name", ["ksplice", "stop_machine"])
def test_a_ksplice_update_for_a_module_on_its_way_out_aborts(tmp_path, model_name):
    """apply_update(): a target module that is not live (MODULE_STATE_GOING
    from delete_module on, while its exit runs) aborts the update,
    target_not_loaded. kpatch_register() links the objects of the modules
    it finds instead, so kpatch is not refused for it."""
    from emu.runs import scenario
    from emu.runs.fuzz import Runner
    path = module_files(tmp_path, GOING_MOD, 'init = "mod_init"\nexit = "mod_exit"', """
[[action]]
at = 10000
do = "load"
module = "mod"
[[action]]
at = 30000
do = "unload"
module = "mod"
[[action]]
at = 40000
do = "enable"
patch = "fix"
[fuzz]
horizon = 3.0
""")
    r = Runner(scenario.build(scenario.load(path)))
    try:
        res = r.execute(r.plan(model_name, 0, strategy="exhaustive"))
        refused = [e for e in res.errors if e["action"] == "enable fix"]
        if model_name == "ksplice":
            assert len(refused) == 1 and "target module 'mod' is not loaded" in refused[0]["error"]
            assert not res.transitions
        else:
            assert not refused and res.transitions
    finally:
        r.close()
