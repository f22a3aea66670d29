"""A kernel object runs: tests/kobj/counter.c compiled with the kernel's flags
(`call __fentry__`, undefined kernel symbols) is loaded with stubs and the
test's own kstubs.c, and live-patched from its patched object under every
model."""
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from emu.engine import core
from emu.errors import BuildError, PatchError
from emu.images.build import build_c
from emu.images.diff import diff_objects
from emu.images.image import FENTRY_NOP
from emu.images.toolchain import compile_kernel_object
from emu.kernel.patch import make_patch
from emu.machine.machine import Machine
from emu.models import MODELS, make_model

KOBJ = Path(__file__).parent / "kobj"


def kernel_object(tmp: Path, side: str, source: str, cflags=()) -> Path:
    d = tmp / side
    d.mkdir()
    shutil.copy(KOBJ / "kernel.h", d)
    shutil.copy(KOBJ / source, d / "counter.c")
    compile_kernel_object(Path("counter.c"), d / "counter.o", cflags, cwd=d)
    return d / "counter.o"


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kobj")
    return kernel_object(tmp, "orig", "counter.c"), kernel_object(tmp, "patched", "counter_patched.c")


def observed(m, key):
    return [e.value for e in m.trace if e.kind == core.EV_OBSERVE and e.key == key]


def patched_run(orig, new, support, model_name, *, changed):
    """orig (with support: the kernel's stubs and the tasks) as the base, live
    patched from new's changed functions at 20,000 under model_name, run for
    30 s; the transition completed. The machine."""
    d = diff_objects(orig, new)
    assert d.changed == changed and d.new == []
    base = build_c([orig, support], base=0x400000, name="vmlinux")
    m = Machine(base, cpus=2, quantum=500)
    m.add_task("user", "user_entry", (0,))
    image = build_c([new], base=m.module_base(), name="patch", link_against=base, keep=d.carry)
    m.load(image)
    model = make_model(model_name, m)
    patch = model.add(make_patch(m, "p1", image, d.changed))
    m.at(20_000, lambda: model.enable(patch))
    m.run(until=m.seconds(30))
    assert model.transitions[0].result == "completed"
    return m


def test_the_object_loads_with_stubs_and_fentry_nops(objects):
    orig, _ = objects
    raw = orig.read_bytes()
    assert b"\xe8\x00\x00\x00\x00" in raw            # straight from the compiler: call __fentry__
    base = build_c([orig, KOBJ / "kstubs.c"], base=0x400000)
    f = base.require_site("counter_next")
    assert base.read(f.start, 5) == FENTRY_NOP
    assert base.stubs == ("__might_sleep", "mutex_lock", "mutex_unlock")
    assert "counter_source" not in base.stubs       # kstubs.c implements it
    assert base.alternatives == "original (0 alternatives not applied)"


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_a_kernel_object_is_live_patched_from_its_patched_object(objects, model_name):
    m = patched_run(*objects, KOBJ / "kstubs.c", model_name, changed=["counter_next"])
    values = observed(m, 1)
    # the old counter_next returns the value before the increment, the new one after
    assert values[:3] == [0, 1, 2]
    switch = next(i for i, v in enumerate(values) if v != i)
    assert switch > 2 and all(v == i + 1 for i, v in enumerate(values[switch:], switch))


#: IBT (CONFIG_X86_KERNEL_IBT), and IBT with the call padding of CALL_PADDING
#: (16 NOPs before each function): `endbr64; call __fentry__` starts each function
IBT_FLAGS = {"ibt": ["-fcf-protection=branch"],
             "ibt+padding": ["-fcf-protection=branch", "-fpatchable-function-entry=16,16"],
             # and the rest a distribution's x86-64 kernel builds with (retpolines,
             # return thunks, SLS, the stack protector's guard symbol, ...)
             "distro": ["-fcf-protection=branch", "-fpatchable-function-entry=16,16", "-falign-functions=16",
                        "-mindirect-branch=thunk-extern", "-mindirect-branch-register",
                        "-mfunction-return=thunk-extern", "-mharden-sls=all", "-fno-jump-tables",
                        "-fzero-call-used-regs=used-gpr", "-fstack-protector-strong",
                        "-mstack-protector-guard-reg=gs", "-mstack-protector-guard-symbol=__ref_stack_chk_guard",
                        "-mskip-rax-setup", "-mno-80387", "-mno-fp-ret-in-387", "-mpreferred-stack-boundary=3",
                        "-fno-delete-null-pointer-checks", "-fno-strict-overflow", "-fconserve-stack",
                        "-fno-stack-clash-protection", "-g", "-gdwarf-5"]}


@pytest.fixture(scope="module", params=sorted(IBT_FLAGS))
def ibt_objects(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kobj_ibt")
    flags = IBT_FLAGS[request.param]
    return (kernel_object(tmp, "orig", "counter.c", flags),
            kernel_object(tmp, "patched", "counter_patched.c", flags))


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_a_kernel_object_built_for_ibt_is_live_patched_at_the_site_after_its_endbr64(ibt_objects, model_name):
    orig, new = ibt_objects
    base = build_c([orig, KOBJ / "kstubs.c"], base=0x400000)
    f = base.require_site("counter_next")
    assert base.read(f.start, 4) == bytes.fromhex("f30f1efa") and f.site == f.start + 4
    assert base.read(f.site, 5) == FENTRY_NOP       # the call __fentry__ after it, made a NOP
    m = patched_run(orig, new, KOBJ / "kstubs.c", model_name, changed=["counter_next"])
    values = observed(m, 1)
    assert values[:3] == [0, 1, 2]
    switch = next(i for i, v in enumerate(values) if v != i)
    assert switch > 2 and all(v == i + 1 for i, v in enumerate(values[switch:], switch))


def test_code_that_reads_gs_elsewhere_is_refused_with_the_function_named(tmp_path):
    src = tmp_path / "gs.c"
    src.write_text("long percpu_read(void) { long v; asm(\"mov %%gs:0x30, %0\" : \"=r\"(v)); return v; }\n")
    obj = tmp_path / "gs.o"
    compile_kernel_object(Path("gs.c"), obj, cwd=tmp_path)
    with pytest.raises(BuildError, match=r"gs.o: percpu_read\+0x[0-9a-f]+ accesses per-CPU memory the "
                                         r"emulator does not provide \(mov r.., qword ptr gs:\[0x30\]\)"):
        build_c([obj], base=0x400000)


def test_a_scenario_names_kernel_objects_and_its_stubs(objects, tmp_path, capsys):
    import json
    from emu.app import cli
    orig, new = objects
    shutil.copy(orig, tmp_path / "counter.o")
    shutil.copy(new, tmp_path / "counter_patched.o")
    shutil.copy(KOBJ / "kstubs.c", tmp_path)
    (tmp_path / "scenario.toml").write_text('''
[program]
sources = ["counter.o"]
stubs = ["kstubs.c"]

[[task]]
name = "user"
entry = "user_entry"
args = [0]

[[patch]]
name = "fix"
sources = ["counter_patched.o"]

[[action]]
at = 20000
do = "enable"
patch = "fix"
''')
    assert cli.main(["run", str(tmp_path / "scenario.toml"), "--model", "livepatch", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "completed" in json.dumps(out)


def test_kernel_code_reads_current_and_the_canary_behind_gs(tmp_path):
    obj = tmp_path / "percpu.o"
    shutil.copy(KOBJ / "kernel.h", tmp_path)
    shutil.copy(KOBJ / "percpu.c", tmp_path)
    compile_kernel_object(Path("percpu.c"), obj, ["-fstack-protector-all"], cwd=tmp_path)
    assert b"\x65" in obj.read_bytes()
    base = build_c([obj, KOBJ / "percpu_tasks.c"], base=0x400000)
    assert "pcpu_hot" not in base.stubs
    m = Machine(base, cpus=2, quantum=500)
    m.add_task("a", "user_entry", (0,), cpu=0)
    m.add_task("b", "user_entry", (0,), cpu=1)
    m.add_task("c", "user_entry", (1,), cpu=1)
    m.run(until=m.seconds(1))
    currents = observed(m, 1)
    assert len(currents) == 3 and len(set(currents)) == 3 and 0 not in currents   # each task is current
    assert sorted(observed(m, 2)) == [0, 1, 1]                                    # its CPU's number
    assert observed(m, 3)[:2] == [7, 7] and observed(m, 9) == [1]   # only the overflow trips the canary


def test_an_unknown_per_cpu_variable_is_refused_by_name(tmp_path):
    src = tmp_path / "pcpu.c"
    src.write_text("extern int softirq_pending;\n"
                   "int pending(void) { int v; asm(\"movl %%gs:%c1, %0\" : \"=r\"(v) : \"i\"(&softirq_pending));"
                   " return v; }\n")
    compile_kernel_object(Path("pcpu.c"), tmp_path / "pcpu.o", cwd=tmp_path)
    with pytest.raises(BuildError, match=r"pcpu.o: pending\+0x[0-9a-f]+ uses the per-CPU variable "
                                         r"softirq_pending, which the emulator does not provide"):
        build_c([tmp_path / "pcpu.o"], base=0x400000)


X86_FEATURE_ERMS = 9 * 32 + 9


@pytest.mark.parametrize("features, mode", [(None, 1), (set(), 1), ({X86_FEATURE_ERMS}, 2)])
def test_alternatives_static_calls_and_jump_labels_run_as_the_kernel_sets_them(tmp_path, features, mode):
    shutil.copy(KOBJ / "kernel.h", tmp_path)
    shutil.copy(KOBJ / "driver.c", tmp_path)
    compile_kernel_object(Path("driver.c"), tmp_path / "driver.o", cwd=tmp_path)
    base = build_c([tmp_path / "driver.o", KOBJ / "driver_tasks.c"], base=0x400000, cpu_features=features)
    if features is None:
        assert base.alternatives == "original (2 alternatives not applied)"
    else:
        assert base.alternatives.endswith(f"{2 * (mode - 1)} of 2 alternatives")
    assert {"_printk", "__warn_printk", "__might_sleep", "warn_slowpath_fmt"} <= set(base.stubs)
    assert "__SCT__dev_hook" in base.stubs and "dev_hook" not in base.stubs
    m = Machine(base, cpus=1)
    m.add_task("t", "user_entry", (0,))
    m.run(until=m.seconds(1))
    assert [observed(m, k) for k in (1, 2, 3, 4, 5)] == [[mode], [51], [7], [42], [10 * mode]]


def test_a_scenario_sets_the_cpu_features_and_a_bad_value_is_named(tmp_path, capsys):
    from emu.app import cli
    shutil.copy(KOBJ / "kernel.h", tmp_path)
    shutil.copy(KOBJ / "driver.c", tmp_path)
    compile_kernel_object(Path("driver.c"), tmp_path / "driver.o", cwd=tmp_path)
    shutil.copy(KOBJ / "driver_tasks.c", tmp_path)
    text = '''
[program]
sources = ["driver.o"]
stubs = ["driver_tasks.c"]
cpu_features = FEATURES

[[task]]
name = "t"
entry = "user_entry"
args = [0]
'''
    (tmp_path / "s.toml").write_text(text.replace("FEATURES", f"[{X86_FEATURE_ERMS}]"))
    from emu.runs.scenario import load
    scn = load(tmp_path / "s.toml")
    assert scn.cpu_features == [X86_FEATURE_ERMS]
    (tmp_path / "s.toml").write_text(text.replace("FEATURES", '["erms"]'))
    assert cli.main(["run", str(tmp_path / "s.toml"), "--model", "livepatch"]) == 2
    assert "cpu_features: must be a list of integers" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                 max_size=6))
def test_a_corrupt_kernel_object_is_a_build_error(objects, tmp_path_factory, cut, flips):
    data = bytearray(objects[0].read_bytes())
    for at, byte in flips:
        data[64 + at % (len(data) - 64)] = byte
    data = data[:64 + cut % len(data)]
    bad = tmp_path_factory.mktemp("bad") / "bad.o"
    bad.write_bytes(bytes(data))
    try:
        build_c([bad, KOBJ / "kstubs.c"], base=0x400000)
    except (BuildError, PatchError) as exc:
        assert str(exc)


@pytest.fixture(scope="module")
def table_objects(tmp_path_factory):
    """subsys.c, and subsys.c with its const table and the function using it
    changed (the pair const_table_changes_with_its_user of cases.toml)."""
    import tomllib
    case = next(c for c in tomllib.loads((KOBJ / "cases.toml").read_text())["case"]
                if c["name"] == "const_table_changes_with_its_user")
    tmp = tmp_path_factory.mktemp("table")
    text = (KOBJ / "subsys.c").read_text()
    sides = []
    for side in ("orig", "patched"):
        d = tmp / side
        d.mkdir()
        shutil.copy(KOBJ / "kernel.h", d)
        (d / "subsys.c").write_text(text)
        compile_kernel_object(Path("subsys.c"), d / "subsys.o", cwd=d)
        sides.append(d / "subsys.o")
        for find, replace in case["edits"]:
            text = text.replace(find, replace)
    return sides


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_a_changed_read_only_table_travels_with_the_function_that_uses_it(table_objects, model_name):
    # create-diff-object carries changed read-only data with its changed user:
    # the new sub_weight reads the patch's own copy of sub_weights
    m = patched_run(*table_objects, KOBJ / "subsys_tasks.c", model_name, changed=["sub_weight"])
    values = observed(m, 1)
    # the old sub_weight(2) is sub_weights[2] = 4; the new one sub_weights[3], 16 in the new table
    assert values[:2] == [4, 4] and values[-1] == 16 and set(values) == {4, 16}
