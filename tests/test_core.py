"""The C core's tables and fast paths that the machine tests do not reach:
many memory regions, the event mask, the redirect's jump slot."""
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.engine import core
from emu.errors import CoreError, GuestFault
from emu.machine.machine import Machine
from emu.models import make_model
from emu.kernel.patch import make_patch


def test_many_regions_in_any_order_are_all_found():
    e = core.Engine()
    addrs = [0x1000_0000 + i * 0x3000 for i in range(600)]
    random.Random(5).shuffle(addrs)
    for i, a in enumerate(addrs):
        e.map(a, 0x2000, 3)[:8] = i.to_bytes(8, "little")
    for i, a in enumerate(addrs):
        assert int.from_bytes(e.view(a, 8), "little") == i
        assert bytes(e.view(a + 0x1FF8, 8)) == bytes(8)
    for bad in (addrs[0] + 0x2000, addrs[0] - 1, 0x2000_0000, 0):
        with pytest.raises(CoreError):
            e.view(bad, 8)
    with pytest.raises(CoreError):            # straddles two regions
        e.view(0x1000_0000 + 0x1FF8, 0x10)
    with pytest.raises(CoreError):            # unicorn refuses an overlap; the table stays as it was
        e.map(addrs[3], 0x1000, 3)
    assert int.from_bytes(e.view(addrs[3], 8), "little") == 3
    e.close()


def test_a_machine_with_300_tasks_runs_them_all(compile_c):
    img = compile_c("long entry(long x) { lpemu_observe(1, x); return x; }")
    m = Machine(img, cpus=2, quantum=200)
    for i in range(300):
        m.add_task(f"t{i}", "entry", (i,))
    seen = set()

    def all_seen():
        m.drain()
        seen.update(e.value for e in m.trace[all_seen.read:] if e.kind == core.EV_OBSERVE)
        all_seen.read = len(m.trace)
        return len(seen) == 300
    all_seen.read = 0

    m.run(until=2_000_000, stop_when=all_seen)
    assert seen == set(range(300))
    assert all(m.stack(t)[0] == 0 for t in m.tasks)
    m.engine.close()


def test_the_event_mask_drops_and_counts():
    e = core.Engine()
    e.set_event_mask([core.EV_OBSERVE])
    e.push_event(core.EV_OBSERVE, 1, 2, 3, 4, clock=10)
    e.push_event(core.EV_ENTRY, 1, 2, 3, 4, clock=11)
    e.push_event(70, 1, 2, 3, 4, clock=12)              # from 64 on: always recorded
    assert e.take_events() == [(10, core.EV_OBSERVE, 1, 2, 3, 4), (12, 70, 1, 2, 3, 4)]
    assert e.events_dropped == 1
    e.set_event_mask(None)
    e.push_event(core.EV_ENTRY, 1, 2, 3, 4, clock=13)
    assert e.take_events() == [(13, core.EV_ENTRY, 1, 2, 3, 4)]
    with pytest.raises(ValueError):
        e.set_event_mask([64])
    e.close()


CALLS = """
volatile long zero;
__attribute__((noinline)) long target(long x) { return x + zero; }
long entry(long n)
{
    long acc = 0;
    lpemu_sleep(5);
    for (long i = 0; i < n; i++)
        acc += target(i);
    lpemu_observe(1, acc);
    lpemu_exit(0);
}
"""
CALLS_PATCH = """
extern volatile long zero;
__attribute__((noinline)) long target(long x) { return 2 * x + zero; }
"""


def patched_caller(compile_c, n, **machine_kw):
    base = compile_c(CALLS)
    m = Machine(base, cpus=1, quantum=10**7, lockup_ticks=10**6, **machine_kw)
    caller = m.add_task("caller", "entry", (n,), kind="kthread")
    img = compile_c(CALLS_PATCH, name="patch", base=m.module_base(), link_against=base, keep={"target"})
    m.load(img)
    model = make_model("immediate", m)
    model.enable(model.add(make_patch(m, "p", img, ["target"])))
    return m, caller


def test_redirects_survive_a_full_event_ring(compile_c):
    """Every redirected call adds an event; when the ring fills inside the
    redirect the run stops there, and must resume in the new function with
    the stack as it was, not at the trampoline."""
    n = 150_000                        # more than twice the ring (1 << 16)
    m, caller = patched_caller(compile_c, n)
    m.run(until=10_000_000)
    assert caller.state.value == "exited"
    target = m.function("target").id
    assert [e.value for e in m.trace if e.kind == core.EV_OBSERVE] == [n * (n - 1)]
    entries = [e for e in m.trace if e.kind == core.EV_ENTRY and e.func == target]
    assert len(entries) == n and {e.version for e in entries} == {1}
    m.engine.close()


def test_entry_events_off_changes_nothing_else(compile_c):
    traces = []
    for mask in (None, [k for k in range(64) if k != core.EV_ENTRY]):
        m, caller = patched_caller(compile_c, 5000)
        m.engine.set_event_mask(mask)
        m.run(until=1_000_000)
        traces.append([e for e in m.trace if e.kind != core.EV_ENTRY])
        assert m.engine.events_dropped == (0 if mask is None else 5000)
        m.engine.close()
    assert traces[0] == traces[1]


@pytest.mark.parametrize("accel", ["c", "python"])
@pytest.mark.parametrize("where", ["unused", "of_a_site", "past_its_start"])
def test_a_trampoline_not_called_from_its_site_is_a_fault(compile_c, accel, where):
    """A site's trampoline runs only from its site's fentry call: called
    from elsewhere, or jumped into past its start (where its own jumps
    lie), or one no site has, it is a fault and nothing of it runs."""
    img = compile_c("long entry(long t) { ((void (*)(void))t)(); return 0; }\n"
                    "long other(long x) { return x + 1; }")
    m = Machine(img, accel=accel)
    site = m.site(m.function("other"))
    m.set_entries(m.function("other"), [(m.function("entry").start, 1, False, True)])   # a tested state
    at = {"unused": m.runtime.trampoline(site + 1), "of_a_site": m.runtime.trampoline(site),
          "past_its_start": m.runtime.trampoline(site) + 15}[where]
    m.add_task("stray", "entry", (at,))
    with pytest.raises((GuestFault, CoreError), match="trampoline"):
        m.run(until=100_000)
    m.engine.close()


def test_stop_is_a_named_tuple():
    s = core.Stop(core.STOP_BUDGET, 10, 0x1000)
    assert (s.reason, s.executed, s.rip, s.hc_args) == (core.STOP_BUDGET, 10, 0x1000, (0, 0, 0))
    with pytest.raises(AttributeError):
        s.reason = 2


def test_event_log_reads_like_a_list():
    events = [(1, 2, 3, 4, -5, 6), (7, 8, 9, 10, 11, 12)]
    log = core.EventLog(events[:1])
    e = core.Engine()
    e.push_event(*events[1][1:], clock=events[1][0])
    e.drain_into(log)
    assert len(log) == 2 and log == events and list(log) == events and log[-1] == events[1]
    assert log[1:] == events[1:] and log != events[:1] and log == core.EventLog(events)
    seen = []
    for ev in log:                  # an iteration sees the log as it was when it started
        seen.append(ev)
        log.append((0, 0, 0, 0, 0, 0))
    assert seen == events and len(log) == 4
    with pytest.raises(ValueError):
        log.extend_raw(b"\0" * 7)
    e.close()


_EVENTS = st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(-2**31, 2**31 - 1),
                            st.integers(-2**31, 2**31 - 1), st.integers(-2**63, 2**63 - 1),
                            st.integers(-2**63, 2**63 - 1), st.integers(0, 2**64 - 1)), max_size=12)


@given(st.lists(st.tuples(st.sampled_from(["append", "extend", "raw", "hash", "copy"]), _EVENTS), max_size=12))
def test_the_digest_of_a_log_is_the_digest_of_its_events_however_it_grew(steps):
    """EventLog.digest is the digest of the packed events (the twin's
    too), whatever was added, digested or copied in between."""
    from emu.engine import digest as twin
    log = core.EventLog()
    for what, events in steps:
        if what == "append":
            for e in events:
                log.append(e)
        elif what == "extend":
            log.extend(events)
        elif what == "raw":
            log.extend_raw(core.EventLog(events).raw())
        elif what == "hash":
            log.digest(7)
        else:
            log = log.copy()
        assert log.digest() == core.digest(log.raw()) == twin.digest(log.raw())
        assert log.digest(7) == twin.digest(log.raw(), 7)


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.sampled_from(list(core.EventKind)),
                          st.integers(-2**31, 2**31 - 1), st.integers(-2**63, 2**63 - 1),
                          st.integers(-2**63, 2**63 - 1), st.integers(0, 2**64 - 1)), max_size=20))
def test_events_read_by_name_are_the_same_as_by_position(events):
    log = core.EventLog(events)
    assert log.records() == events and list(log) == events
    for ev, raw in zip(log, events):
        assert isinstance(ev, core.Event)
        assert (ev.clock, ev.kind, ev.task, ev.a, ev.b, ev.c) == raw
        assert (ev.key, ev.value, ev.func, ev.version) == (raw[3], raw[4], raw[3], raw[4])
        assert core.EventKind(ev.kind).value == raw[1]
    assert log.records(len(events) // 2) == events[len(events) // 2:]
    assert log[len(events) // 2:] == events[len(events) // 2:]


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.sampled_from([1, 2, 3, 16, -1, 2**31 - 1]),
                          st.integers(-2**31, 2**31 - 1), st.integers(-2**63, 2**63 - 1),
                          st.integers(-2**63, 2**63 - 1), st.integers(0, 2**64 - 1)), max_size=40),
       st.sampled_from([1, 2, 16, -1, 7]), st.booleans(), st.integers(-2, 45))
def test_events_of_one_kind_are_the_records_of_that_kind(events, kind, unpacked, start):
    """EventLog.of_kind (the C core selects, packed or unpacked) and a
    filter of records() give the same events, from any start."""
    log = core.EventLog(events)
    if unpacked:
        log.records()
    assert log.of_kind(kind, start) == [e for e in events[max(0, start):] if e[1] == kind]


def test_the_return_trampoline_must_jump_through_a_slot():
    """The C redirect stores the exit's target in the return trampoline's
    jump slot: a trampoline whose instruction is not `jmp qword ptr
    [rip + d]` with its slot mapped is refused, not left unhooked."""
    e = core.Engine()
    page = e.map(0x10000, 0x1000, 5)
    page[0:1] = b"\xc3"                                  # ret: no slot
    page[0x10:0x16] = b"\xff\x25" + (0x100).to_bytes(4, "little")       # slot at 0x10116, mapped
    page[0x20:0x26] = b"\xff\x25" + (0x10000).to_bytes(4, "little")     # slot at 0x20026, unmapped
    e.init_tasks(1)
    e.map(0x40000, 0x1000, 3)
    for bad in (0x10000, 0x10020):
        with pytest.raises(CoreError):
            e.graph_init(bad, 0x40000, 0x1000)
    e.graph_init(0x10010, 0x40000, 0x1000)
    e.close()


def test_the_sites_trampolines_are_refused_where_they_cannot_work():
    """emu_set_stubs: the region must be mapped and aligned, and hold the
    sites there are already; once."""
    e = core.Engine()
    e.map(0x10000, 0x2000, 5)
    for base, size in ((0x10010, 0x1000), (0x50000, 0x1000), (0x10000, 16)):
        with pytest.raises(CoreError):
            e.set_stubs(base, size)
    e.set_stubs(0x10000, 0x2000)
    with pytest.raises(CoreError):
        e.set_stubs(0x10000, 0x2000)
    e.close()
