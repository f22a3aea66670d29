"""A machine of many tasks on many CPUs (small sizes: `lpemu bench` goes to
4,096 tasks on 64 CPUs). What must hold at any size:

- every CPU keeps tasks queued, so no CPU ever runs its idle task; the
  kernel's klp_try_complete_transition still switches every idle task,
  after a check of its stack, because an idle task that is not what its
  CPU runs is not running (task_curr), whatever the CPU does between two
  of its tasks;
- an upstream livepatch transition and a stop_machine attempt complete;
- each task sees its own per-CPU area (one region holds them all).
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.kernel.patch import make_patch
from emu.machine.machine import EV_PATCH_STATE, Machine
from emu.machine.task import PATCHED, ROUTES, RunState
from emu.models import make_model

BASE = """
volatile long sink;
volatile long seen[256];

__attribute__((noinline)) long leaf(long x) { return x * 3 + sink; }

__attribute__((noinline)) long descend(long d, long x)
{
    long r = 0;
    if (d <= 1) {
        for (long i = 0; i < 150; i++)
            r += leaf(x + i);
        lpemu_yield();
        return r;
    }
    r = descend(d - 1, x + 1);
    sink += r;
    return r + 1;
}

long busy_entry(long depth) { return descend(depth, 0); }

/* Records the CPU its per-CPU area names (the kernel's smp_processor_id()). */
long cpu_entry(long slot)
{
    long cpu;
    __asm__ volatile("movl %%gs:%c1, %k0" : "=r"(cpu) : "i"(0x4C));
    seen[slot] = cpu + 1;
    return descend(2, slot);
}
"""

PATCH = """
extern volatile long sink;
__attribute__((noinline)) long leaf(long x) { return x * 3 + sink + 1; }
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    import textwrap

    from emu.images.build import build_c
    from emu.machine.layout import BASE_IMAGE, MODULE_BASE

    d = tmp_path_factory.mktemp("scale")
    (d / "base.c").write_text('#include "lpemu.h"\n' + textwrap.dedent(BASE))
    (d / "patch.c").write_text('#include "lpemu.h"\n' + textwrap.dedent(PATCH))
    base = build_c([d / "base.c"], base=BASE_IMAGE, name="vmlinux")
    patch = build_c([d / "patch.c"], base=MODULE_BASE, name="scale_patch", link_against=base, keep={"leaf"})
    return base, patch


def busy_machine(images, tasks: int, cpus: int) -> Machine:
    base, patch = images
    m = Machine(base, cpus=cpus, quantum=1000, tick=1000)
    for i in range(tasks):
        m.add_task(f"t{i}", "busy_entry", (8,))
    m.load(patch)
    return m


def transition(images, model: str, tasks: int, cpus: int, at: int):
    m = busy_machine(images, tasks, cpus)
    mod = make_model(model, m)
    p = mod.add(make_patch(m, "scale", images[1], ["leaf"]))
    m.at(at, lambda: mod.enable(p))
    m.run(until=at + m.seconds(60), stop_when=lambda: bool(mod.transitions)
          and mod.transitions[-1].result != "pending")
    return m, mod


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cpus=st.integers(3, 8), per_cpu=st.integers(3, 6), offset=st.integers(0, 20_000))
def test_livepatch_completes_on_busy_cpus_switching_idle_tasks_by_their_stacks(images, cpus, per_cpu, offset):
    # enabled once every task has run a kernel entry or so (about 3,000 instructions)
    m, mod = transition(images, "livepatch", cpus * per_cpu, cpus, 20_000 + 1500 * cpus * per_cpu + offset)
    try:
        assert mod.transitions[-1].result == "completed"
        # the idle tasks of CPUs that always had tasks queued were switched by
        # the transition work's stack check, never in an idle loop of theirs
        idle_routes = {e[4] for e in m.trace if e[1] == EV_PATCH_STATE and e[2] < 0 and e[3] == PATCHED}
        assert idle_routes <= {ROUTES.index("stack"), ROUTES.index("idle")}
        assert ROUTES.index("stack") in idle_routes
        assert all(t.state is RunState.RUNNABLE for t in m.tasks)
    finally:
        m.engine.close()


def test_stop_machine_completes_on_many_cpus(images):
    m, mod = transition(images, "stop_machine", 48, 16, 30_000)
    try:
        t = mod.transitions[-1]
        assert t.result == "completed" and t.pauses
    finally:
        m.engine.close()


def test_every_task_sees_its_own_cpus_area(images):
    base, _ = images
    m = Machine(base, cpus=5, quantum=1000, tick=1000)
    for i in range(40):
        m.add_task(f"c{i}", "cpu_entry", (i,))
    try:
        m.run(until=200_000)
        seen = m.engine.view(base.symbols["seen"], 8 * 40)
        cpus = [int.from_bytes(seen[8 * i:8 * i + 8], "little") - 1 for i in range(40)]
        assert cpus == [t.cpu for t in m.tasks]
    finally:
        m.engine.close()
