"""Each fentry site's own trampoline (csrc/redirect.c): its code is real,
checked x86-64 that jumps through a slot holding klp_ftrace_handler's
choice for the loaded task, whichever task is loaded and whatever its
patch state; an enabled site loses its watch hook and a site that is a NOP
again gets it back, whatever put it back (a text write, a snapshot
restore). The rule the trampolines are held to is written here from the
handler's semantics, not read from the core."""
from __future__ import annotations

import capstone
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from emu.engine import core
from emu.machine.machine import Machine

SRC = """
volatile long zero;
__attribute__((noinline)) long f(long x) { return x + 1 + zero; }
__attribute__((noinline)) long g(long x) { return x + 2 + zero; }
__attribute__((noinline)) long h(long x) { return x + 3 + zero; }
long entry(long n)
{
    for (long i = 0; i < n; i++) {
        lpemu_observe(1, f(i));
        lpemu_sleep(1);
    }
    lpemu_exit(0);
}
"""


def handler(entries, original: int, unpatched: bool) -> int:
    """klp_ftrace_handler: the newest entry; one in transition sends an
    UNPATCHED task to the next older entry, or to the original when there
    is none; a nop entry (atomic replace) means the original."""
    if not entries:
        return original
    i = 1 if entries[0][3] and unpatched else 0
    if i >= len(entries) or entries[i][2]:
        return original
    return entries[i][0]


def disassemble(m: Machine, at: int) -> list:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    code = bytes(m.engine.view(at, core.STUB_SIZE))
    out = []
    for insn in md.disasm(code, at):
        out.append((insn.mnemonic, insn.op_str, insn.address))
        if insn.mnemonic == "int3":
            break
    return out


entry_st = st.tuples(st.sampled_from(["g", "h", "entry"]), st.integers(1, 9), st.booleans(), st.booleans())


def test_a_trampoline_is_checked_code_that_makes_the_handlers_choice(compile_c):
    image = compile_c(SRC)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(entry_st, max_size=4))
    def check(drawn):
        m = Machine(image)
        try:
            one(m, drawn)
        finally:
            m.engine.close()

    check()


def one(m: Machine, drawn) -> None:
    m.add_task("t0", "entry", (1,))
    m.add_task("t1", "entry", (1,))
    m.start()
    f = m.function("f")
    entries = [(m.function(name).start, v, nop, tr) for name, v, nop, tr in drawn]
    m.set_entries(f, entries)
    at = m.runtime.trampoline(m.site(f))
    insns = disassemble(m, at)
    assert [i[:2] for i in insns] == [("lea", "rsp, [rsp + 8]"),          # the fentry call's return popped
                                      ("jmp", "qword ptr [rip + 5]"), ("int3", "")]
    slot = insns[1][2] + 6 + 5
    for state in (core.PATCHED, core.UNPATCHED, core.UNDEFINED):
        for task in m.tasks:
            m.set_patch_state(task, state if task.tid == 1 else core.PATCHED)
        for tid in (0, 1, 0):
            m.engine.switch(tid)
            want = handler(entries, f.site + 5, m.tasks[tid].patch_state == core.UNPATCHED)
            assert int.from_bytes(bytes(m.engine.view(slot, 8)), "little") == want, (state, tid)


@pytest.mark.parametrize("accel", ["c", "python"])
def test_a_site_in_transition_sends_each_task_by_its_own_state(compile_c, accel):
    """f's newest entry (g) in transition, an older one (h) below it: a
    PATCHED task runs g, an UNPATCHED one h, an idle-state one g, through
    every switch of the one CPU between them."""
    m = Machine(compile_c(SRC), cpus=1, quantum=50, accel=accel)
    try:
        tasks = [m.add_task(f"t{i}", "entry", (40,)) for i in range(3)]
        m.start()
        f, g, h = (m.function(n) for n in "fgh")
        m.watch(f)
        m.set_entries(f, [(g.start, 2, False, True), (h.start, 1, False, False)])
        for t, state in zip(tasks, (core.PATCHED, core.UNPATCHED, core.UNDEFINED)):
            m.set_patch_state(t, state)
        rel = m.runtime.trampoline(m.site(f)) - (f.site + 5)
        m.text_write(f.site, b"\xe8" + rel.to_bytes(4, "little", signed=True))
        m.run(until=200 * 37)
        m.drain()
        values: dict = {}
        for e in m.trace:
            if e.kind == core.EV_OBSERVE:
                values.setdefault(m.tasks[e.task].name, []).append(e.value)
        # f(i) = i + 1, g(i) = i + 2, h(i) = i + 3: the observed offset says who ran
        offsets = {name: {v - i for i, v in enumerate(vs)} for name, vs in values.items()}
        assert offsets == {"t0": {2}, "t1": {3}, "t2": {2}}
        versions = {(m.tasks[e.task].name, e.version) for e in m.trace if e.kind == core.EV_ENTRY}
        assert versions == {("t0", 2), ("t1", 1), ("t2", 2)}
    finally:
        m.engine.close()


def entries_of_f(m: Machine, since: int) -> set:
    f = m.function("f").id
    return {e.version for e in m.trace if e.kind == core.EV_ENTRY and e.func == f and e.clock >= since}


@pytest.mark.parametrize("back", ["text_write", "restore"])
def test_a_site_that_is_a_nop_again_reports_its_entries_again(compile_c, back):
    """Enabled, f's site has no watch hook (the trampoline reports each
    call); a NOP again, by a text write or a snapshot restore, the watch
    reports the original's entries (version 0) again."""
    m = Machine(compile_c(SRC), cpus=1, quantum=50)
    try:
        m.add_task("t", "entry", (10_000,))
        f, g = m.function("f"), m.function("g")
        m.watch(f)
        m.start()
        snap = m.snapshot()
        m.set_entries(f, [(g.start, 1, False, False)])
        rel = m.runtime.trampoline(m.site(f)) - (f.site + 5)
        m.text_write(f.site, b"\xe8" + rel.to_bytes(4, "little", signed=True))
        t0 = m.now
        m.run(until=m.now + 3000)
        m.drain()
        assert entries_of_f(m, t0) == {1}
        if back == "text_write":
            m.text_write(f.site, bytes(m.engine.view(g.site, 5)))       # g's own NOP
        else:
            m.restore(snap)
        t1 = m.now
        m.run(until=m.now + 3000)
        m.drain()
        assert entries_of_f(m, t1) == {0}
    finally:
        m.engine.close()


def test_a_site_added_after_a_snapshot_works_again_after_the_restore(compile_c):
    """The restore drops the sites added after the snapshot, not their
    trampolines' code (the same for every site): a site added again gets
    its trampoline back, with the choice of its new entries."""
    m = Machine(compile_c(SRC), cpus=1, quantum=50)       # snapshots: the C scheduler, so accel C
    try:
        m.add_task("t", "entry", (10_000,))
        m.start()
        snap = m.snapshot()
        f = m.function("f")
        for target, version in (("g", 1), ("h", 2)):
            m.watch(f)
            m.set_entries(f, [(m.function(target).start, version, False, False)])
            rel = m.runtime.trampoline(m.site(f)) - (f.site + 5)
            m.text_write(f.site, b"\xe8" + rel.to_bytes(4, "little", signed=True))
            t0 = m.now
            m.run(until=m.now + 3000)
            m.drain()
            assert entries_of_f(m, t0) == {version}
            m.restore(snap)
    finally:
        m.engine.close()


# entries whose newest is in transition more often than not: the slots that follow the task
trans_entry_st = st.tuples(st.sampled_from(["g", "h", "entry"]), st.integers(1, 9), st.just(False), st.just(True))
op_st = st.one_of(
    st.tuples(st.just("entries"), st.sampled_from("fgh"),
              st.one_of(st.lists(entry_st, max_size=3),
                        st.tuples(trans_entry_st, entry_st).map(list))),
    st.tuples(st.just("switch"), st.integers(0, 2)),
    st.tuples(st.just("state"), st.integers(0, 2), st.sampled_from([core.PATCHED, core.UNPATCHED, core.UNDEFINED])))


def test_every_slot_follows_the_loaded_task_through_any_sequence_of_changes(compile_c):
    """Sites going in and out of transition in any order, tasks switched
    and their states changed: after each step, every site's slot holds the
    handler's choice for the loaded task (the core rewrites only the slots
    of the sites in transition when the task or its state changes)."""
    image = compile_c(SRC)

    on = [("g", 1, False, True)]
    # three sites in transition, the first and then the last leaving it: the
    # list of those that follow the task keeps the one in the middle
    @example([("entries", n, on) for n in "fgh"] + [("entries", "f", []), ("entries", "h", []),
                                                   ("switch", 0), ("state", 0, core.UNPATCHED)])
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(op_st, min_size=4, max_size=30))
    def check(ops):
        m = Machine(image)
        try:
            for i in range(3):
                m.add_task(f"t{i}", "entry", (1,))
            m.start()
            fns = {n: m.function(n) for n in "fgh"}
            table = {n: [] for n in fns}
            for n, fn in fns.items():
                m.site(fn)
            for op in ops:
                if op[0] == "entries":
                    table[op[1]] = [(m.function(t).start, v, nop, tr) for t, v, nop, tr in op[2]]
                    m.set_entries(fns[op[1]], table[op[1]])
                elif op[0] == "switch":
                    m.engine.switch(op[1])
                else:
                    m.set_patch_state(m.tasks[op[1]], op[2])
                cur = m.engine.current
                unpatched = cur >= 0 and m.tasks[cur].patch_state == core.UNPATCHED
                for n, fn in fns.items():
                    slot = m.runtime.trampoline(m.site(fn)) + 16
                    got = int.from_bytes(bytes(m.engine.view(slot, 8)), "little")
                    assert got == handler(table[n], fn.site + 5, unpatched), (n, op)
        finally:
            m.engine.close()

    check()
