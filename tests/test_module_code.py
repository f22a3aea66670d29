"""Modules are real modules: a module's init (gcc-compiled C) runs as guest
code when it loads, in its loader task (insmod-M, a user process in its
init_module system call), and registers an ops table into base data; base
code reaches the module only through it, module code calls base code, and
the module's exit runs in rmmod-M before the going notifier takes patches
out of it. Under every model the coming module is patched; the loader has
the patch state a new process has (its parent's, klp_copy_process, then
its kernel exits from fork and exec). Tasks may start in a module loaded
from the start, and the probe and the oracle see module functions.

Written from the kernel's order (kernel/module/main.c: load_module ->
prepare_coming_module (the notifiers: klp_module_coming) -> do_init_module
-> mod->init; a failing init goes through the going notifier and the
module is freed; delete_module -> mod->exit -> the going notifier)."""
from pathlib import Path

import pytest

from emu.engine import core
from emu.machine.task import PATCHED, ROUTES, RunState
from emu.models import MODEL_NAMES

# Ksplice refuses an update whose target module is not loaded (kmodsrc/ksplice.c
# apply_update: TARGET_NOT_LOADED) and patches no module that loads later:
# tests/test_heldout.py::test_ksplice_refuses_an_update_for_a_module_not_loaded
MODULE_PATCH_MODELS = [n for n in MODEL_NAMES if n != "ksplice"]
from emu.runs import scenario
from emu.runs.fuzz import Runner

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "modules" / "scenario.toml"


def observations(m):
    """[(clock, task name, key, value)] of every lpemu_observe."""
    return [(c, m.tasks[t].name, k, v) for c, kind, t, k, v, _ in m.trace.records() if kind == core.EV_OBSERVE]


@pytest.fixture(scope="module")
def example():
    r = Runner(scenario.build(scenario.load(EXAMPLE)))
    yield r
    r.close()


@pytest.mark.parametrize("model_name", [n for n in MODEL_NAMES if n not in ("stop_machine", "ksplice")])
def test_the_init_registers_the_ops_the_base_calls_through_and_the_exit_takes_them_out(example, model_name):
    res, m, model = example.execute(example.plan(model_name, 0), keep=True)
    try:
        assert res.fault is None and not res.errors and not res.promise
        assert res.outcome == "completed"
        obs = observations(m)
        # the init ran once, as guest code of the loader task, after the load action
        (init,) = [o for o in obs if o[2] == 2 and o[3] == 1]
        assert init[1] == "insmod-codec" and init[0] >= 20500
        (exit_,) = [o for o in obs if o[2] == 2 and o[3] == 0]
        assert exit_[1] == "rmmod-codec" and exit_[0] >= 2_000_000
        # before the init, requests are dropped; between init and exit each
        # client gets its own id back through the module's code ({i})
        requests = [o for o in obs if o[2] == 1]
        assert all(v == -1 for c, _, _, v in requests if c < init[0])
        served = {(n, v) for c, n, _, v in requests if init[0] < c < exit_[0] and v != -1}
        assert served == {(f"client{i}", i) for i in range(4)}
        assert all(v == -1 for c, _, _, v in requests if c > exit_[0] + 1000)
        # the coming module was patched: once the transition is over, every
        # encode runs version 1, until the module goes
        done = res.transitions[0]["completed_at"]
        late = {v for c, _, k, v in obs if k == 3 and done + 10_000 < c < exit_[0]}
        assert late == {1}
        assert not model.patches[0].object("codec").patched      # gone with the module
        # both loaders ran their function and exited again
        loaders = {t.name: t for t in m.tasks if t.unborn}
        assert set(loaders) == {"insmod-codec", "rmmod-codec"}
        assert all(t.state is RunState.EXITED and t.exit_code == 0 for t in loaders.values())
    finally:
        m.engine.close()


def test_kpatch_holds_the_module_it_patches_so_its_rmmod_fails(example):
    """kpatch_link_object takes a reference on the coming module
    (kpatch_module_notify): delete_module finds it in use, its exit never
    runs, and it stays loaded and patched to the end of the run."""
    res, m, model = example.execute(example.plan("stop_machine", 0), keep=True)
    try:
        assert res.fault is None and not res.promise and res.outcome == "failed"
        assert [e["action"] for e in res.errors] == ["unload codec"]
        assert res.errors[0]["error"] == ("Module codec is in use: kpatch holds a reference on it for 'fix' "
                                          "(-EAGAIN: Resource temporarily unavailable)")
        assert "lpemu: unload codec: Module codec is in use" in "\n".join(text for _, text in m.log)
        obs = observations(m)
        assert not [o for o in obs if o[2] == 2 and o[3] == 0]            # codec_exit never ran
        assert "codec" not in m.unloaded and model.patches[0].object("codec").patched
        done = res.transitions[0]["completed_at"]
        assert {v for c, _, k, v in obs if k == 3 and c > done + 10_000} == {1}
        assert {v for c, _, k, v in obs if k == 1 and c > 2_000_000} == set(range(4))   # still served
    finally:
        m.engine.close()


@pytest.mark.parametrize("model_name", ["livepatch", "kgraft"])
def test_a_loader_born_mid_transition_has_passed_kernel_exits_and_is_patched(example, model_name):
    res, m, model = example.execute(example.plan(model_name, 0), keep=True)
    try:
        loader = next(t for t in m.tasks if t.name == "insmod-codec")
        states = [(a, ROUTES[b]) for c, kind, t, a, b, _ in m.trace.records()
                  if kind == core.EV_PATCH_STATE and t == loader.tid]
        # born like every task at the transition's start, then switched at the
        # kernel exits of fork and exec, before its init_module
        assert states[:2] == [(0, "init"), (PATCHED, "kernel_exit")]
        assert not res.promise
    finally:
        m.engine.close()


MODULE_SCENARIO = """
[program]
sources = ["base.c"]
[machine]
cpus = 2
quantum = 300
{tasks}
[[module]]
name = "m"
sources = ["m.c"]
{module}
[[patch]]
name = "p"
sources = ["p.c"]
functions = ["m:m_work"]
[[action]]
at = 20000
do = "enable"
patch = "p"
{actions}
[check]
unit = "{unit}"
[fuzz]
horizon = 5.0
"""
BASE = """
#include "lpemu.h"
long (*hook)(long);
__attribute__((noinline)) long base_double(long x) { return 2 * x; }
long user(long id) { long (*f)(long) = hook; lpemu_observe(1, f ? f(id) : -1); lpemu_sleep(1); return 0; }
"""
MODULE = """
#include "lpemu.h"
extern long (*hook)(long);
long base_double(long x);
__attribute__((noinline)) long m_work(long x) { return base_double(x) + 1; }
__attribute__((noinline)) long m_wait(long t) { return lpemu_sleep(t); }
long m_thread(long t) { for (;;) { lpemu_observe(2, m_work(t)); m_wait(t); lpemu_safe_point(); } }
long m_init(void) { hook = m_work; return 0; }
long m_init_fails(void) { return -12; }
void m_exit(void) { hook = 0; }
"""
PATCH = """
#include "lpemu.h"
long base_double(long x);
__attribute__((noinline)) long m_work(long x) { return base_double(x) + 3; }
"""


def write(tmp_path, *, tasks='[[task]]\nname = "u"\nentry = "user"\nargs = [5]', module="", actions="",
          unit="syscall"):
    (tmp_path / "base.c").write_text(BASE)
    (tmp_path / "m.c").write_text(MODULE)
    (tmp_path / "p.c").write_text(PATCH)
    path = tmp_path / "s.toml"
    path.write_text(MODULE_SCENARIO.format(tasks=tasks, module=module, actions=actions, unit=unit))
    return path


LOAD = '[[action]]\nat = 20500\ndo = "load"\nmodule = "m"'


@pytest.mark.parametrize("model_name", MODULE_PATCH_MODELS)
def test_a_failing_init_unloads_the_module_and_fails_the_load(tmp_path, model_name):
    r = Runner(scenario.build(scenario.load(write(tmp_path, module='init = "m_init_fails"', actions=LOAD))))
    res, m, model = r.execute(r.plan(model_name, 0), keep=True)
    try:
        assert [e["action"] for e in res.errors] == ["load m"]
        assert "m_init_fails() returned -12" in res.errors[0]["error"]
        assert res.outcome == "failed"
        assert "m" in m.unloaded and not model.patches[0].object("m").patched
        assert {v for _, _, k, v in observations(m) if k == 1} == {-1}
    finally:
        m.engine.close()
        r.close()


KTHREAD_IN_MODULE = '[[task]]\nname = "k"\nentry = "m:m_thread"\nargs = [4]\nkind = "kthread"'


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_a_task_starts_in_a_module_and_the_oracle_counts_units_of_a_module_function(tmp_path, model_name):
    path = write(tmp_path, tasks=KTHREAD_IN_MODULE, module="loaded = true", unit="m:m_work")
    r = Runner(scenario.build(scenario.load(path)))
    res, m, model = r.execute(r.plan(model_name, 0), keep=True)
    try:
        assert res.fault is None and not res.promise
        assert res.units > 0 and res.outcome == "completed"
        # the module's m_work runs in the kthread and calls the base: 2 * 4 + 1,
        # then the patched 2 * 4 + 3
        values = [v for _, n, k, v in observations(m) if k == 2 and n == "k"]
        assert values[0] == 9 and values[-1] == 11 and set(values) == {9, 11}
        assert {m.symbolize(f.old.start) for p in model.patches for _, f in p.funcs()} == {"m_work+0x0"}
    finally:
        m.engine.close()
        r.close()


def test_the_probe_sees_a_task_asleep_in_module_functions(tmp_path):
    path = write(tmp_path, tasks=KTHREAD_IN_MODULE, module="loaded = true")
    r = Runner(scenario.build(scenario.load(path)))
    try:
        probe = r.probe()
        assert probe.patched == ["m_work"]
        assert any("m_thread > m_wait" in s for s in probe.states["k"])
    finally:
        r.close()


@pytest.mark.parametrize("tasks, module, words", [
    ('[[task]]\nname = "k"\nentry = "m:m_thread"', "", r"task\[k\]\.entry: .*no module 'm' with loaded = true"),
    ('[[task]]\nname = "k"\nentry = "m:nothing"', "loaded = true", r"task\[k\]\.entry: no function 'nothing' "
                                                                   r"in module m"),
    ('[[task]]\nname = "u"\nentry = "user"', 'init = "m_nope"', r"module\[m\]\.init: no function 'm_nope' in "
                                                                 r"the module"),
    ('[[task]]\nname = "insmod-m"\nentry = "user"', 'init = "m_init"', r"module\[0\]\.init: its loader task "
                                                                        r"'insmod-m' is the name of a \[\[task\]\]"),
])
def test_module_mistakes_are_named(tmp_path, tasks, module, words):
    from emu.errors import ScenarioError
    with pytest.raises(ScenarioError, match=words):
        scenario.build(scenario.load(write(tmp_path, tasks=tasks, module=module)))


@pytest.mark.parametrize("model_name", ["livepatch", "stop_machine", "kgraft"])
def test_the_schedulers_twin_runs_the_loaders_the_same(model_name):
    prog = scenario.build(scenario.load(EXAMPLE))
    with Runner(prog) as c, Runner(prog, sched="python") as py:
        assert c.execute(c.plan(model_name, 1)).trace_hash == py.execute(py.plan(model_name, 1)).trace_hash


def test_an_unload_while_the_init_runs_is_refused(tmp_path):
    # m_init_slow sleeps in its init: the unload 100 instructions after the
    # load finds insmod-m still running (a module still coming: -EBUSY)
    path = write(tmp_path, module='init = "m_init_slow"\nexit = "m_init"',
                 actions=LOAD + '\n[[action]]\nat = 20600\ndo = "unload"\nmodule = "m"')
    path.with_name("m.c").write_text(MODULE + "long m_init_slow(void) { lpemu_sleep(50); hook = m_work; return 0; }\n")
    r = Runner(scenario.build(scenario.load(path)))
    res, m, model = r.execute(r.plan("livepatch", 0), keep=True)
    try:
        assert [e["action"] for e in res.errors] == ["unload m"]
        assert "module 'm' is still coming: its insmod-m has not finished (-EBUSY)" in res.errors[0]["error"]
        assert "m" not in m.unloaded
    finally:
        m.engine.close()
        r.close()


@pytest.mark.parametrize("model_name", MODULE_PATCH_MODELS)
def test_a_module_going_at_the_enable_waits_for_the_work_that_links_it(tmp_path, model_name):
    """rmmod at the instant of the write that enables a patch carrying the
    module's function: the enable's work (immediate: its text change;
    kpatch, Ksplice: the attempt, which holds kpatch_mutex from the write)
    took the function when it began, and still waits for a CPU. The going
    notifier waits for it (immediate's work linked the unbound function
    and raised AttributeError; generated seed 130201 found the same under
    ksplice); the module goes, unpatched. kpatch's attempt linked the
    module at the write, taking a reference on it: the rmmod fails there
    (in use), and the module stays, patched once the attempt succeeds."""
    path = write(tmp_path, actions='[[action]]\nat = 10000\ndo = "load"\nmodule = "m"\n'
                                   '[[action]]\nat = 20000\ndo = "unload"\nmodule = "m"')
    r = Runner(scenario.build(scenario.load(path)))
    res, m, model = r.execute(r.plan(model_name, 0), keep=True)
    try:
        if model_name == "stop_machine":
            assert res.fault is None and [e["action"] for e in res.errors] == ["unload m"]
            assert "is in use" in res.errors[0]["error"] and "-EAGAIN" in res.errors[0]["error"]
            assert "m" not in m.unloaded and model.patches[0].object("m").patched
            assert res.transitions[0]["result"] == "completed"
            return
        assert res.fault is None and not res.errors
        assert "m" in m.unloaded and not model.patches[0].object("m").patched
        assert {v for _, _, k, v in observations(m) if k == 1} == {-1}       # no init: hook stays NULL
    finally:
        m.engine.close()
        r.close()


@pytest.mark.parametrize("model_name", MODULE_PATCH_MODELS)
def test_an_unload_of_a_module_not_loaded_is_refused(tmp_path, model_name):
    """rmmod of a module that is not loaded: delete_module finds no such
    module (-ENOENT) before anything runs; its exit ran at an unmapped
    address (a guest fault) before. The same for a second rmmod."""
    unload = '[[action]]\nat = {at}\ndo = "unload"\nmodule = "m"\n'
    actions = unload.format(at=5000) + LOAD + "\n" + unload.format(at=30000) + unload.format(at=60000)
    r = Runner(scenario.build(scenario.load(write(tmp_path, module='exit = "m_exit"', actions=actions))))
    res, m, model = r.execute(r.plan(model_name, 0), keep=True)
    try:
        assert res.fault is None
        refused = [(e["action"], e["time"]) for e in res.errors]
        errnos = [e["error"].rsplit("(-", 1)[1].split(":")[0] for e in res.errors]
        if model_name == "stop_machine":        # in use from its load on: kpatch holds it
            assert refused == [("unload m", 5000), ("unload m", 30000), ("unload m", 60000)]
            assert errnos == ["ENOENT", "EAGAIN", "EAGAIN"] and "m" not in m.unloaded
        else:
            assert refused == [("unload m", 5000), ("unload m", 60000)]
            assert errnos == ["ENOENT", "ENOENT"] and "m" in m.unloaded
    finally:
        m.engine.close()
        r.close()


@pytest.mark.parametrize("model_name", MODULE_PATCH_MODELS)
def test_a_load_of_a_module_loaded_already_is_refused(tmp_path, model_name):
    """insmod of a module that is loaded: load_module finds it (-EEXIST)
    before its coming notifier or init; the module runs on as it was."""
    again = '[[action]]\nat = 30000\ndo = "load"\nmodule = "m"\n'
    r = Runner(scenario.build(scenario.load(write(tmp_path, module='init = "m_init"', actions=LOAD + "\n" + again))))
    res, m, model = r.execute(r.plan(model_name, 0), keep=True)
    try:
        assert res.fault is None
        assert [(e["action"], e["time"]) for e in res.errors] == [("load m", 30000)]
        assert res.errors[0]["error"] == "module 'm' is already loaded (-EEXIST: File exists)"
        inits = [t for t in m.tasks if t.name == "insmod-m"]
        assert len(inits) == 1 and inits[0].exit_code == 0           # one init, the first load's
        assert {v for _, _, k, v in observations(m) if k == 1} <= {-1, 11, 13}    # m_work, then v1
    finally:
        m.engine.close()
        r.close()


# ---- a patch that uses the module's own symbols (klp relocations) ---------------------------------

STATEFUL_MODULE = """
#include "lpemu.h"
extern long (*hook)(long);
long base_double(long x);
static long calls;                  /* the module's own state */
static __attribute__((noinline, noclone)) long m_bump(long by) { calls += by; return calls; }
__attribute__((noinline)) long m_work(long x) { m_bump(x); return base_double(x) + 1; }
__attribute__((noinline)) long m_count(void) { return calls; }
__attribute__((noinline)) long m_wait(long t) { return lpemu_sleep(t); }
long m_thread(long t) { for (;;) { lpemu_observe(2, m_work(t)); lpemu_observe(3, m_count()); m_wait(t); lpemu_safe_point(); } }
long m_init(void) { hook = m_work; return 0; }
void m_exit(void) { hook = 0; }
"""
# the patched m_work, in a file named as the module's (its statics bind by
# file, as kpatch-build's and klp-build's do): it uses the module's static
# `calls` and static m_bump(), which it does not carry
STATEFUL_PATCH = """
#include "lpemu.h"
long base_double(long x);
static long calls;
static __attribute__((noinline, noclone)) long m_bump(long by) { calls += by; return calls; }
__attribute__((noinline)) long m_work(long x) { m_bump(1000 * x); return base_double(x) + 3; }
"""


def write_stateful(tmp_path, *, module="loaded = true", tasks=KTHREAD_IN_MODULE, actions=""):
    path = write(tmp_path, tasks=tasks, module=module, actions=actions)
    (tmp_path / "m.c").write_text(STATEFUL_MODULE)
    (tmp_path / "patch").mkdir()
    (tmp_path / "patch" / "m.c").write_text(STATEFUL_PATCH)
    path.write_text(path.read_text().replace('sources = ["p.c"]', 'sources = ["patch/m.c"]'))
    return path


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_a_patch_uses_the_module_s_own_statics_as_its_klp_relocations_bind_them(tmp_path, model_name):
    """A module function's patch that uses the module's static data and a
    static function it does not carry: they bind to the module's own (klp
    relocations, `.klp.rela.m.*`, resolved when the module is loaded), never
    a copy, so the module's unpatched code sees what the patched code did."""
    prog = scenario.build(scenario.load(write_stateful(tmp_path)))
    img, _ = prog.patches["p"]
    mod = prog.modules["m"]
    assert img.imports["calls"] == mod.statics["calls"][0][1]
    assert "m_bump" not in img.functions and "calls" not in img.symbols
    r = Runner(prog)
    res, m, model = r.execute(r.plan(model_name, 0), keep=True)
    try:
        assert res.fault is None and not res.promise and res.outcome == "completed"
        seen = [(v2, v3) for (_, n2, k2, v2), (_, _, _, v3) in zip(observations(m), observations(m)[1:])
                if n2 == "k" and k2 == 2]
        # m_work(4)'s result and the module's counter read by the unpatched
        # m_count() right after: +4 a call before the switch, +4000 after
        olds = [c for v, c in seen if v == 9]
        news = [c for v, c in seen if v == 11]
        assert olds and news and olds == [4 * k for k in range(1, len(olds) + 1)]
        assert news == [olds[-1] + 4000 * k for k in range(1, len(news) + 1)]
    finally:
        m.engine.close()
        r.close()


@pytest.mark.parametrize("model_name", MODULE_PATCH_MODELS)
def test_a_module_loaded_after_the_patch_is_bound_when_it_comes(tmp_path, model_name):
    """The module comes after the enable: its functions are patched when
    it is loaded (klp_module_coming applies the patch's relocations then),
    and the patched code uses the module's own state from its first call."""
    path = write_stateful(tmp_path, module='init = "m_init"',
                          tasks='[[task]]\nname = "u"\nentry = "user"\nargs = [5]', actions=LOAD)
    r = Runner(scenario.build(scenario.load(path)))
    res, m, model = r.execute(r.plan(model_name, 0), keep=True)
    try:
        assert res.fault is None and not res.promise and not res.errors
        # user() calls the module's m_work through the hook: 2 * 5 + 3 once patched
        values = [v for _, n, k, v in observations(m) if k == 1 and n == "u" and v != -1]
        assert values and set(values) == {13}
        # the module's own counter took each patched call's 5000 and nothing
        # else (read at the run's end, the module loaded; a call may have
        # been under way, its result not yet observed)
        calls = r.program.modules["m"].statics["calls"][0][1]
        assert "m" not in m.unloaded
        assert int.from_bytes(m.engine.view(calls, 8), "little") in (5000 * len(values), 5000 * (len(values) + 1))
    finally:
        m.engine.close()
        r.close()


def test_without_a_functions_list_a_module_s_source_is_compared_with_the_module(tmp_path):
    """A patch written as a changed copy of a module's source (named as it,
    as kpatch-build and klp-build compare object by object) carries the
    module functions that changed, "m:f", and nothing of the module that did
    not; a source named as the program's is compared with the program.
    Each file is compared only with its own: the program's and the module's
    statics of one name and different initial values refuse nothing."""
    path = write_stateful(tmp_path)
    (tmp_path / "base.c").write_text(BASE + "static long calls = 5;\nlong base_calls(void) { return calls++; }\n")
    full = STATEFUL_MODULE.replace("{ m_bump(x); return base_double(x) + 1; }",
                                   "{ m_bump(1000 * x); return base_double(x) + 3; }")
    assert full != STATEFUL_MODULE
    (tmp_path / "patch" / "m.c").write_text(full)
    (tmp_path / "patch" / "base.c").write_text(BASE.replace("2 * x", "2 * x + 0") +
                                               "static long calls = 5;\nlong base_calls(void) { return calls += 2; }\n")
    text = path.read_text().replace('functions = ["m:m_work"]\n', "")
    path.write_text(text.replace('sources = ["patch/m.c"]', 'sources = ["patch/m.c", "patch/base.c"]'))
    prog = scenario.build(scenario.load(path))
    img, functions = prog.patches["p"]
    assert sorted(functions) == ["base_calls", "m:m_work"]
    assert set(img.functions) == {"m_work", "base_calls"}         # m_thread, m_wait, ... stay the module's
    # a changed initial value of the module's own data is refused, naming it
    (tmp_path / "patch" / "m.c").write_text(full.replace("static long calls;", "static long calls = 3;"))
    with pytest.raises(Exception, match=r"patch\[p\]: .*calls"):
        scenario.build(scenario.load(path))


def test_program_code_in_a_patch_cannot_use_a_module_s_symbols(tmp_path):
    """A patched function of the program that calls a module's function
    directly: vmlinux cannot link against a module, so kpatch-build and
    klp-build never make such a patch; lpemu refuses it, naming the symbol
    (it bound the call to the module's address, and every run faulted
    before the module came)."""
    from emu.errors import BuildError
    path = write_stateful(tmp_path)
    (tmp_path / "patch" / "base.c").write_text(BASE.replace("return 2 * x;", "return 2 * x + m_count();")
                                               .replace("long (*hook)(long);", "long (*hook)(long);\nlong m_count(void);"))
    text = path.read_text().replace('functions = ["m:m_work"]', 'functions = ["base_double"]')
    path.write_text(text.replace('sources = ["patch/m.c"]', 'sources = ["patch/base.c"]'))
    with pytest.raises(BuildError, match=r"m_count"):
        scenario.build(scenario.load(path))


def test_a_program_patch_binds_only_to_the_program_whatever_the_modules_call_their_statics(tmp_path):
    """The program's util.c and the module's m/util.c each have a static
    `count`; a patch of the program's function in a file named util.c binds
    to the program's count, as its klp relocations name vmlinux."""
    path = write_stateful(tmp_path)
    text = path.read_text().replace('sources = ["base.c"]', 'sources = ["base.c", "util.c"]')
    (tmp_path / "util.c").write_text("static long count;\n"
                                     "__attribute__((noinline)) long scale(long v) { return v * 2 + count++; }\n")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "util.c").write_text("static long count;\nlong m_util(void) { return count += 3; }\n")
    text = text.replace('sources = ["m.c"]', 'sources = ["m.c", "m/util.c"]')
    (tmp_path / "patch" / "util.c").write_text("static long count;\n"
                                               "__attribute__((noinline)) long scale(long v) { return v * 3 + count++; }\n")
    text = text.replace('functions = ["m:m_work"]', 'functions = ["scale"]').replace('sources = ["patch/m.c"]', 'sources = ["patch/util.c"]')
    path.write_text(text)
    prog = scenario.build(scenario.load(path))
    img, _ = prog.patches["p"]
    assert img.imports["count"] == dict(prog.base.statics["count"])["util.c"]


def test_a_module_s_own_global_is_its_own(tmp_path):
    """A module that defines a global the program defines too keeps its
    own: the module loader resolves only what a module leaves undefined."""
    from emu.images.build import build_c
    (tmp_path / "base.c").write_text("long requests;\nlong base_get(void) { return requests; }\n")
    base = build_c([tmp_path / "base.c"], base=0x400000)
    (tmp_path / "mod.c").write_text("long requests;\nlong mod_bump(void) { return requests += 1000; }\n")
    mod = build_c([tmp_path / "mod.c"], base=0x1000000, name="mod", link_against=base)
    assert mod.lo <= mod.symbols["requests"] < mod.hi and "requests" not in mod.imports


@pytest.mark.parametrize("layout, words", [
    # a patch file named as a program source and a module source alike
    ("both", r"patch\[p\]\.sources: util\.c is named as a source of the program and of module m"),
    # two functions of one name from two objects in one patch
    ("twice", r"patch\[p\]\.functions: two functions named 'm_wait' \(m and the program\)"),
])
def test_what_cannot_be_told_apart_is_refused(tmp_path, layout, words):
    path = write_stateful(tmp_path)
    text = path.read_text()
    if layout == "both":
        (tmp_path / "util.c").write_text("long util(long v) { return v; }\n")
        (tmp_path / "m" ).mkdir()
        (tmp_path / "m" / "util.c").write_text("long m_util(long v) { return v + 1; }\n")
        (tmp_path / "patch" / "util.c").write_text("long m_util(long v) { return v + 2; }\n")
        text = (text.replace('sources = ["base.c"]', 'sources = ["base.c", "util.c"]')
                    .replace('sources = ["m.c"]', 'sources = ["m.c", "m/util.c"]')
                    .replace('functions = ["m:m_work"]\n', "")
                    .replace('sources = ["patch/m.c"]', 'sources = ["patch/util.c"]'))
    else:
        (tmp_path / "base.c").write_text(BASE + "__attribute__((noinline)) long m_wait(long t) { return t; }\n")
        text = text.replace('functions = ["m:m_work"]', 'functions = ["m:m_wait", "m_wait"]')
        (tmp_path / "patch" / "m.c").write_text("__attribute__((noinline)) long m_wait(long t) { return t + 1; }\n")
    path.write_text(text)
    from emu.errors import ScenarioError
    with pytest.raises(ScenarioError, match=words):
        scenario.build(scenario.load(path))
