"""The machine: real gcc code on tasks and CPUs, redirects, time, faults."""
import re
from pathlib import Path

import pytest

from emu.engine import core
from emu.machine import hypercall
from emu.errors import EventBound, GuestFault, UserError
from emu.kernel.ftrace import Ftrace, Ops
from emu.machine.machine import EV_KERNEL_EXIT, MAX_EVENTS, Machine, Sync

SEED = """
long counter;
volatile long zero;   /* keeps gcc from treating bar() as const and hoisting it out of loops */
__attribute__((noinline)) long bar(void) { return 1 + zero; }
__attribute__((noinline)) void something_else(long x) { if (x & 1) lpemu_sleep(2); else lpemu_yield(); }
__attribute__((noinline)) long baz(long f) { lpemu_observe(1, f); return f + 1; }
long foo(long x) { long f = bar(); something_else(x); return baz(f); }   /* tail call to baz */
long user_entry(long x) { counter += x; return foo(x) + counter; }
long kthread_entry(long x) { for (;;) { foo(x); lpemu_safe_point(); lpemu_sleep(1); } }
"""

PATCH = """
extern volatile long zero;
__attribute__((noinline)) long bar(void) { return 100 + zero; }
__attribute__((noinline)) long baz(long f) { lpemu_observe(2, f); return f / 100 + 1; }
"""


def redirect(m, ftrace, patch_image, names, version=1):
    """Send every call of each named function to the patch's version."""
    ops = Ops("test", ipmodify=True)
    fns = [m.function(n) for n in names]
    for fn in fns:
        m.set_entries(fn, [(patch_image.functions[fn.name].start, version, False, False)])
    m.spawn(ftrace.register(ops, fns))
    return ops


def observations(m):
    return [(e.task, e.key, e.value) for e in m.trace if e.kind == core.EV_OBSERVE]


def seed_machine(compile_c, *, accel="c", fast_memory=True, cpus=2, tasks=8):
    base = compile_c(SEED)
    m = Machine(base, cpus=cpus, quantum=300, accel=accel, fast_memory=fast_memory)
    for i in range(tasks - 1):
        m.add_task(f"user{i}", "user_entry", (i,))
    m.add_task("kthread", "kthread_entry", (1,), kind="kthread")
    patch = compile_c(PATCH, name="patch", base=m.module_base(), link_against=base, keep={"bar", "baz"})
    m.load(patch)
    return m, patch


def test_hypercall_numbers_have_one_home_the_guest_header():
    """emu/include/lpemu.h is the home; Python reads it, and the C core's
    copies (EMU_HC_* in csrc/emu.h) must equal it."""
    header = {k: int(v) for k, v in re.findall(r"#define LPEMU_HC_(\w+)\s+(\d+)", hypercall.HEADER.read_text())}
    assert header == {name.upper(): nr for nr, name in hypercall.NAMES.items()}
    assert header == {h.name: int(h) for h in hypercall.Hypercall}
    c_copies = core.SCHED_HYPERCALLS
    assert c_copies and all(header[name] == nr for name, nr in c_copies.items())
    emu_h = (Path(__file__).resolve().parent.parent / "csrc" / "emu.h").read_text()
    assert {k: int(v) for k, v in re.findall(r"#define EMU_HC_(\w+)\s+(\d+)", emu_h)} == c_copies


@pytest.mark.parametrize("accel", ["c", "python"])
def test_eight_tasks_on_two_cpus_run_the_redirected_code(compile_c, accel):
    m, patch = seed_machine(compile_c, accel=accel)
    ft = Ftrace(m)
    m.run(until=20_000)
    before = observations(m)
    assert before and all(key == 1 and f == 1 for _, key, f in before)   # old bar -> old baz
    redirect(m, ft, patch, ["bar", "baz"])
    m.run(until=400_000)
    after = observations(m)[len(before):]
    # every task, the kthread included, keeps running and now runs the new pair
    assert {t for t, _, _ in after} == set(range(8))
    tail = after[-16:]
    assert all(key == 2 and f == 100 for _, key, f in tail)
    assert ft.site_bytes(m.function("bar"))[0] == 0xE8
    # user tasks went through their kernel exits
    assert all(t.kernel_entries > 3 for t in m.tasks[:7])


def test_c_and_python_twins_give_the_same_event_trace(compile_c):
    traces = []
    for accel in ("c", "python"):
        m, patch = seed_machine(compile_c, accel=accel)
        ft = Ftrace(m)
        m.at(7_777, lambda m=m, ft=ft, patch=patch: redirect(m, ft, patch, ["bar", "baz"]))
        m.run(until=150_000)
        traces.append(m.trace)
    assert len(traces[0]) > 1000
    assert traces[0] == traces[1]


def test_fast_memory_does_not_change_the_run(compile_c):
    traces = []
    for fast in (True, False):
        m, patch = seed_machine(compile_c, fast_memory=fast)
        m.at(5_000, lambda m=m, patch=patch: redirect(m, Ftrace(m), patch, ["bar"]))
        m.run(until=60_000)
        traces.append(m.trace)
    assert traces[0] == traces[1]


def test_two_machines_in_one_process_do_not_interfere(compile_c):
    alone, _ = seed_machine(compile_c)
    alone.run(until=50_000)
    a, pa = seed_machine(compile_c)
    b, _ = seed_machine(compile_c)
    redirect(a, Ftrace(a), pa, ["bar", "baz"])
    for t in range(10_000, 50_001, 10_000):   # interleave their runs
        a.run(until=t)
        b.run(until=t)
    assert b.trace == alone.trace
    assert observations(a) != observations(b)
    assert all(key == 2 for _, key, _ in observations(a)[-8:])


def test_timers_fire_at_exact_instruction_counts(compile_c):
    m, _ = seed_machine(compile_c, tasks=3)
    seen = []
    for t in (1, 2, 3, 17, 1000, 1001, 33_333):
        m.at(t, lambda t=t: seen.append((t, m.now)))
    m.run(until=40_000)
    assert seen == [(t, t) for t in (1, 2, 3, 17, 1000, 1001, 33_333)]


@pytest.mark.parametrize("until, error", [(-1, ValueError), (2**63, ValueError), (2**64, ValueError),
                                          (1.5, TypeError), ("10", TypeError), (True, TypeError)])
def test_run_until_must_be_a_virtual_time(compile_c, until, error):
    m, _ = seed_machine(compile_c, tasks=1)
    with pytest.raises(error, match="until"):
        m.run(until=until)
    m.run(until=1_000)                  # nothing was started or held by the refusal
    assert m.now >= 1_000


@pytest.mark.parametrize("accel", ["c", "python"])
@pytest.mark.parametrize("every_slice", [True, False])
def test_a_run_given_no_until_stops_at_its_event_bound_and_says_what_to_pass(compile_c, accel, every_slice):
    """A kthread that loops forever never lets a bare run() end: the run
    stops once the trace holds max_events events (at most one event ring
    beyond), raising EventBound that names until= and max_events; the
    machine then runs on to a time, and another bare run refuses at once,
    its trace as it was: what a bounded run keeps stays flat."""
    base = compile_c(SEED)
    bound = 20_000
    m = Machine(base, cpus=2, quantum=300, accel=accel, max_events=bound)
    m.add_task("kthread", "kthread_entry", (1,), kind="kthread")
    m.add_task("user0", "user_entry", (0,))

    def unbounded():                        # (the machine's own check comes first)
        assert len(m.trace) <= 4 * bound + m.engine.event_capacity, "the run went on past its bound"
        return False
    with pytest.raises(EventBound, match=r"run given no until keeps at most 20_000 events.*pass until=.*max_events"):
        m.run(stop_when=unbounded, every_slice=every_slice)
    kept = len(m.trace)
    assert bound <= kept <= bound + m.engine.event_capacity
    with pytest.raises(EventBound):
        m.run()
    assert len(m.trace) == kept
    now = m.now
    m.run(until=now + 5_000)                  # a run to a time is not bounded by it
    assert m.now >= now + 5_000 and len(m.trace) > kept


def test_the_event_bound_has_one_home_and_is_the_default(compile_c):
    from emu.runs import fuzz
    m = Machine(compile_c(SEED))
    assert m.max_events == MAX_EVENTS == fuzz.MAX_EVENTS == 1_000_000
    for bad in (0, -1, 1.5, None):
        with pytest.raises((TypeError, ValueError), match="max_events"):
            Machine(compile_c(SEED), max_events=bad)


def test_sync_waits_for_every_cpu_to_end_a_slice(compile_c):
    m, _ = seed_machine(compile_c, cpus=2, tasks=4)
    marks = []

    def work():
        marks.append(tuple(c.slices for c in m.cpus))
        yield Sync()
        marks.append(tuple(c.slices for c in m.cpus))

    m.at(1000, lambda: m.spawn(work()))
    m.run(until=20_000)
    assert len(marks) == 2 and all(b > a for a, b in zip(*marks))


def test_text_writes_drop_stale_translations(compile_c):
    for accel in ("c", "python"):
        m, _ = seed_machine(compile_c, accel=accel, tasks=1, cpus=1)
        m.run(until=5_000)
        bar = m.function("bar")
        # make bar return 7 right after its fentry nop: `mov eax, 7; ret`
        m.text_write(bar.site + 5, bytes.fromhex("b807000000c3"))
        n = len(observations(m))
        m.run(until=40_000)
        new = [f for _, _, f in observations(m)[n:]]
        # a call of baz already under way carries bar's old value; then only 7
        assert new[-3:] == [7, 7, 7] and set(new) <= {1, 7}, accel


def test_kernel_exits_are_events_in_order(compile_c):
    m, _ = seed_machine(compile_c, tasks=2, cpus=1)
    m.run(until=30_000)
    exits = [e for e in m.trace if e.kind == EV_KERNEL_EXIT]
    assert exits and [e.clock for e in m.trace] == sorted(e.clock for e in m.trace)


FAULTS = {
    "null": ("long *p; long entry(long x) { return *(volatile long *)x; }", "read of unmapped memory at 0x0"),
    # add [rax + riz], al: a SIB byte with no index register (capstone names it riz)
    "riz": ("long entry(long x) { __asm__ volatile(\".byte 0x00, 0x04, 0x20\" :: \"a\"(x) : \"memory\");"
            " return 0; }", "unmapped memory at 0x0"),
    "ud2": ("long entry(long x) { __builtin_trap(); }", "invalid"),
    "recursion": ("""
        __attribute__((noinline)) long deep(long x) { volatile char pad[512]; pad[0] = x;
                                                      return deep(x + 1) + pad[0]; }
        long entry(long x) { return deep(x); }""", "guard page"),
    "lockup": ("long entry(long x) { for (;;) __asm__ volatile(\"\"); }", "soft lockup"),
    "hang": ("long entry(long x) { lpemu_sleep(-1); return 0; }", "asleep"),
}


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_guest_faults_end_the_run_with_a_report(compile_c, case):
    src, expect = FAULTS[case]
    img = compile_c(src)
    m = Machine(img, cpus=2, lockup_ticks=50)
    m.add_task("victim", "entry", (0,))
    with pytest.raises(GuestFault) as info:
        m.run(until=10_000_000)
    text = str(info.value)
    assert expect in text
    if case != "hang":
        assert "task 'victim'" in text and "CPU " in text and "RIP 0x" in text and "backtrace" in text
        assert "<entry+" in text or "<deep+" in text


def test_bad_configuration_is_a_user_error(compile_c):
    img = compile_c("long entry(long x) { return x; }")
    with pytest.raises(UserError, match="preempt"):
        Machine(img, preempt="sometimes")
    m = Machine(img)
    with pytest.raises(UserError, match="no function 'nope'"):
        m.add_task("t", "nope")
    for wide in (1 << 64, -(1 << 63) - 1):         # a register holds neither: never cut silently
        with pytest.raises(UserError, match=f"argument {wide} does not fit in a 64-bit register"):
            m.add_task("t", "entry", (wide,))
    assert m.add_task("t", "entry", ((1 << 64) - 1,)).args == ((1 << 64) - 1,)


def test_orc_tables_of_built_images_agree_with_eh_frame(compile_c):
    from emu.images.orc import build_table, check_eh_frame
    from emu.app.demo import SEED as SEED_DIR
    from emu.images.build import build_c

    for img in (compile_c(SEED), build_c([SEED_DIR / "base.c"], base=0x400000)):
        seg = next(s for s in img.segments if s.prot & 4)
        fns = [(f.name, f.start, f.end) for f in img.functions.values()]
        data = [(s.addr, s.data) for s in img.segments if not s.prot & 4]
        table = build_table(seg.data, seg.addr, fns, data=data)
        report = check_eh_frame(img.elf, table, fns, seg.data, seg.addr)
        assert list(report) == [] and report.checked > 50


# ---- the Python API never kills the process (make asan runs these) ----------------------


def test_memory_views_outlive_their_engine_without_touching_freed_memory(compile_c):
    """A view keeps the engine's memory alive: used after close() or after
    the machine is collected it reads the last bytes; the engine itself
    refuses every call with EngineClosed."""
    import gc
    from emu.errors import EngineClosed
    m, _ = seed_machine(compile_c, tasks=2)
    m.run(until=5000)
    heap, stack = m.heap, m.engine.view(m.tasks[0].stack_lo, 64)
    part = heap[16:48]
    heap[0:4] = b"abcd"
    st = m.sched_state
    m.engine.close()
    heap[4:8] = b"efgh"
    assert bytes(heap[:8]) == b"abcdefgh" and len(bytes(stack)) == 64 and len(bytes(part)) == 32
    assert st.ntasks == 2 and st.live >= 0          # the last state, still readable
    for call in (lambda: m.engine.view(0x2000_0000, 8), lambda: m.run(until=10_000), lambda: m.stack(m.tasks[0]),
                 lambda: m.snapshot(), lambda: setattr(st, "pick", -1), lambda: m.engine.map(0x7000_0000, 4096, 3),
                 lambda: m.emit(core.EV_OBSERVE, 0, 1, 2)):
        with pytest.raises(EngineClosed):
            call()
    m.engine.close()                                # twice is fine
    m2, _ = seed_machine(compile_c, tasks=2)
    m2.run(until=3000)
    views = [m2.heap, m2.engine.view(m2.tasks[1].stack_lo, 128)]
    del m2
    gc.collect()
    views[0][100:104] = b"wxyz"
    assert bytes(views[0][100:104]) == b"wxyz" and len(bytes(views[1])) == 128


def _other_machine(compile_c, src, *, tasks=2, cpus=2):
    m = Machine(compile_c(src), cpus=cpus)
    for i in range(tasks):
        m.add_task(f"t{i}", "user_entry", (i,))
    m.run(until=2000)
    return m


OTHER = "long user_entry(long x) { lpemu_sleep(1); return x; }"
BIGGER = "char big[3 << 12];\nlong user_entry(long x) { big[x] = 1; lpemu_sleep(1); return x; }"


@pytest.mark.parametrize("src,tasks,cpus", [(BIGGER, 2, 2), (OTHER, 3, 2), (OTHER, 2, 3)])
def test_a_snapshot_restored_into_another_layout_raises(compile_c, src, tasks, cpus):
    from emu.errors import CoreError, StateError
    m = _other_machine(compile_c, OTHER)
    snap = m.snapshot()
    other = _other_machine(compile_c, src, tasks=tasks, cpus=cpus)
    before = (other.now, bytes(other.heap[:64]))
    with pytest.raises(CoreError, match="another layout"):
        other.engine.restore(snap.core)
    with pytest.raises(StateError, match="another machine"):   # the machine's snapshot names its machine
        other.restore(snap)
    assert (other.now, bytes(other.heap[:64])) == before
    other.run(until=6000)
    m.restore(snap)                         # its own machine takes it
    m.run(until=6000)
    with pytest.raises(TypeError):
        m.engine.restore(object())
    with pytest.raises(TypeError):
        m.restore("snapshot")


def test_a_machine_used_from_a_second_thread_while_it_runs_raises(compile_c):
    """While one thread is inside run(), another thread's close(), run(),
    snapshot() or stack walk raises EngineBusy; the run then goes on."""
    import threading
    from emu.errors import EngineBusy
    m, _ = seed_machine(compile_c, tasks=3)
    inside, done = threading.Event(), threading.Event()
    tries: list = []

    def stop_when():
        if m.now > 3000 and not inside.is_set():
            inside.set()
            done.wait(30)
        return False

    runner = threading.Thread(target=lambda: m.run(until=20_000, stop_when=stop_when))
    runner.start()
    try:
        assert inside.wait(30)
        for call in (m.engine.close, lambda: m.run(until=30_000), m.snapshot, lambda: m.stack(m.tasks[0]),
                     lambda: m.engine.sched_run(-1, -1)):
            with pytest.raises(EngineBusy) as err:
                call()
            tries.append(str(err.value))
    finally:
        done.set()
        runner.join(60)
    assert len(tries) == 5 and not runner.is_alive()
    assert m.now == 20_000
    m.engine.close()
