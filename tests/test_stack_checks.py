"""The models' stack checks of many tasks (emu.models.stacks) against
Machine.stack, task by task: one C call for every task, or the Python twin,
must give each task the walk Machine.stack gives it and find the same
first entry in the checked ranges, at whatever point the machine stopped."""
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from emu.engine import core, unwind
from emu.errors import CoreError
from emu.machine.machine import Machine
from emu.models.stacks import StackChecks, passed

BASE = """
volatile long zero;
__attribute__((noinline)) long leaf(long x) { return x * 3 + zero; }
__attribute__((noinline)) long down(long d, long x)
{
    long r = 0;
    if (d <= 1) {
        for (long i = 0; i < 40; i++)
            r += leaf(x + i);
        if (x & 1)
            lpemu_sleep(2);
        else
            lpemu_yield();
        return r;
    }
    r = down(d - 1, x + 1);
    zero += 0;
    return r + 1;
}
long entry(long d) { return down(d, d); }
long kentry(long d) { for (;;) { down(d, d); lpemu_safe_point(); } }
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    import textwrap
    from emu.images.build import build_c
    d = tmp_path_factory.mktemp("stacks")
    (d / "base.c").write_text('#include "lpemu.h"\n' + textwrap.dedent(BASE))
    return build_c([d / "base.c"], base=0x400000, name="vmlinux")


def per_task(m, task, ranges, kind, max_entries):
    """What a model would ask of Machine.stack for one task: (code, entries, hit)."""
    code, entries = m.stack(task, unwinder=kind, max_entries=max_entries)
    return code, tuple(entries), unwind.ranges_hit(entries, sorted(ranges))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(preempt=st.sampled_from(["none", "voluntary", "full"]), quantum=st.integers(50, 700),
       until=st.integers(1, 60_000), depths=st.lists(st.integers(1, 9), min_size=1, max_size=5),
       kind=st.sampled_from(["orc", "fp"]), max_entries=st.sampled_from([3, 8, 99]),
       reliable=st.booleans(), accel=st.sampled_from(["c", "python"]))
def test_one_call_for_every_task_agrees_with_machine_stack(image, preempt, quantum, until, depths, kind,
                                                           max_entries, reliable, accel):
    m = Machine(image, cpus=2, quantum=quantum, preempt=preempt, tick=100, accel=accel)
    try:
        for i, d in enumerate(depths):
            m.add_task(f"t{i}", "entry" if i % 2 == 0 else "kentry", (d,),
                       kind="user" if i % 2 == 0 else "kthread")
        m.run(until=until)
        leaf, down = m.function("leaf"), m.function("down")
        for ranges in ([(leaf.start, leaf.end)], [(down.start, down.start + 8), (leaf.start, leaf.end)], []):
            results = StackChecks(m).check(tuple(ranges), kind=kind, max_entries=max_entries, reliable=reliable)
            assert len(results) == len(m.tasks)
            failing = set(results.failing()) if results.failed else set()
            assert len(failing) == results.failed
            for i, task in enumerate(m.tasks):
                if task.state.value == "exited":
                    continue
                r = results[i]
                assert (r.code, tuple(r.entries), r.hit) == per_task(m, task, ranges, kind, max_entries)
                assert (i not in failing) == passed(r, reliable)
    finally:
        m.engine.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(preempt=st.sampled_from(["none", "voluntary", "full"]), quantum=st.integers(50, 700),
       until=st.integers(1, 60_000), depths=st.lists(st.integers(1, 9), min_size=1, max_size=5),
       kind=st.sampled_from(["orc", "fp"]), max_entries=st.sampled_from([1, 3, 8, 99, 4096]))
def test_a_walk_in_c_agrees_with_its_python_twin(image, preempt, quantum, until, depths, kind, max_entries):
    """Machine.stack in one C call (registers from the task's saved context,
    or the engine's for the loaded task) is the Python twin's walk, whichever
    task the engine has loaded; and the C walk switches no task."""
    m = Machine(image, cpus=2, quantum=quantum, preempt=preempt, tick=100)
    try:
        for i, d in enumerate(depths):
            m.add_task(f"t{i}", "entry" if i % 2 == 0 else "kentry", (d,),
                       kind="user" if i % 2 == 0 else "kthread")
        m.run(until=until)
        for task in m.tasks:
            loaded = m.engine.current
            c = m.stack(task, unwinder=kind, max_entries=max_entries)
            assert m.engine.current == loaded
            py = m.stack(task, unwinder=kind, max_entries=max_entries, accel="python")   # loads task
            assert c == py
            assert m.stack(task, unwinder=kind, max_entries=max_entries) == c
            event(f"{kind}: {unwind.REASONS[c[0]]}, {'deep' if len(c[1]) > 3 else 'shallow'}")
    finally:
        m.engine.close()


def test_a_check_reads_each_tasks_preempted_flag_from_the_scheduler(image):
    """Packed once, checked twice: the flag each check uses is the one the
    scheduler has now (an fp walk of a preempted task is not reliable)."""
    m = Machine(image, cpus=1, quantum=137, preempt="full", unwinder="fp")
    try:
        m.add_task("t0", "entry", (6,))
        m.add_task("t1", "entry", (6,))
        checks = StackChecks(m)
        seen = set()
        for step in range(1, 200):
            m.run(until=step * 97)
            res = checks.check((), kind="fp", max_entries=99, reliable=True)
            for i, task in enumerate(m.tasks):
                code, entries = m.stack(task, max_entries=99)
                assert (res[i].code, tuple(res[i].entries)) == (code, tuple(entries))
                seen.add((task.preempted, code == unwind.WALK_PREEMPTED))
        assert (True, True) in seen and (False, False) in seen
    finally:
        m.engine.close()


def test_a_flag_read_from_the_scheduler_needs_a_started_machine(image):
    m = Machine(image, cpus=1)
    try:
        m.add_task("t0", "entry", (2,))
        m.engine.init_tasks(1)
        tasks = core.StackTasks([(0, None, 0, 0, 0, 0)])
        checker = m.engine.stack_checker("fp", m.text_ranges)
        with pytest.raises(CoreError):
            checker.check(tasks, core.Ranges([]))
    finally:
        m.engine.close()
