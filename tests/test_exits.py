"""Function exits (the function-graph tracer's way, csrc/emu.h "function
exits"): every traced entry has its exit, with the value the function
returned; the C hooks and their Python twin give the same trace on deep
recursion, tail calls and longjmp-like stack switches; a full return stack
is a defined behaviour; tracing exits costs no virtual time; the unwinders
read diverted return addresses back, and a task stopped anywhere in the
runtime page's code either unwinds to its entry frame or is unreliable."""
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.engine import core, unwind
from emu.errors import GuestFault
from emu.machine.machine import Machine

SRC = """
volatile long zero;
__attribute__((noinline)) long leaf(long x) { return 3 * x + 1 + zero; }
__attribute__((noinline)) long rec(long n) { if (n <= 0) return leaf(n); return leaf(rec(n - 1)) & 0xffff; }
__attribute__((noinline)) long tail(long x) { return leaf(x + zero); }   /* a tail jmp at -O2 */
__attribute__((noinline)) void deep_jump(void **jb, long n) {
    if (n <= 0) __builtin_longjmp(jb, 1);
    deep_jump(jb, n - 1);
    zero += 0;
}
__attribute__((noinline)) long jumper(long n) {
    void *jb[5];    /* each task its own */
    if (__builtin_setjmp(jb) == 0) { deep_jump(jb, n); return -1; }
    return leaf(n);
}
long entry(long depth) {
    long s = 0;
    for (int i = 0; i < 3; i++) {
        s += rec(depth) + tail(i) + jumper(3);
        lpemu_observe(1, s);
        lpemu_yield();
    }
    return s;
}
"""
TRACED = ("leaf", "rec", "tail", "deep_jump", "jumper", "entry")
EXIT_KINDS = (core.EV_ENTRY, core.EV_RETURN, core.EV_UNWOUND, core.EV_RET_UNTRACED, core.EV_OBSERVE,
              core.EV_ARGS, core.EV_ARGS_HI)


def machine(image, accel, depths, *, quantum=97, trampoline=("leaf",), exits=True):
    m = Machine(image, cpus=2, quantum=quantum, accel=accel)
    for i, d in enumerate(depths):
        m.add_task(f"t{i}", "entry", (d,))
    m.start()
    if not exits:
        m.engine.set_event_mask([k for k in range(64) if k != core.EV_RETURN])
    for name in TRACED:
        m.watch(m.function(name))
    for name in trampoline:         # an enabled site: the trampoline path
        fn = m.function(name)
        rel = m.runtime.trampoline(m.site(fn)) - (fn.site + 5)
        m.text_write(fn.site, b"\xe8" + rel.to_bytes(4, "little", signed=True))
    return m


def run(image, accel, depths, **kw):
    m = machine(image, accel, depths, **kw)
    fault = None
    try:
        m.run(until=200_000)
    except GuestFault as exc:
        fault = (exc.task, exc.kind)
    trace = [e for e in m.trace if e[1] in EXIT_KINDS]
    names = [f.name for f in m.functions]
    m.engine.close()
    return trace, fault, names


def call_stacks(trace):
    """Replay entries and exits per task; returns the exits as (task,
    function, version, rax) and checks that each one closes the innermost
    open entry."""
    stacks, exits = {}, []
    for clock, kind, task, a, b, c in trace:
        s = stacks.setdefault(task, [])
        if kind == core.EV_ENTRY:
            s.append((a, b, c))
        elif kind in (core.EV_RETURN, core.EV_UNWOUND):
            assert s and s[-1][:2] == (a, b), (clock, kind, task, a, b, s[-3:])
            s.pop()
            if kind == core.EV_RETURN:
                exits.append((task, a, b, c))
        elif kind == core.EV_RET_UNTRACED:
            assert s and s[-1][:2] == (a, b)
            s.pop()        # its return will not be seen
    return exits, stacks


def test_every_entry_has_its_exit_with_the_returned_value(compile_c):
    for opt in ("-O0", "-O2"):
        image = compile_c(SRC, cflags=[opt])
        trace, fault, names = run(image, "c", (4, 6))
        assert fault is None
        exits, _ = call_stacks(trace)
        leaf = names.index("leaf")
        # leaf(x) returns 3x + 1: every exit of leaf says so (rax), so the
        # traced value is the one the function returned
        leaf_entries = {}
        got = [(t, rax) for t, f, v, rax in exits if f == leaf]
        assert got and all((rax - 1) % 3 == 0 for _, rax in got)
        assert {names[f] for _, f, _, _ in exits} >= {"leaf", "rec", "tail", "jumper"}
        # the frames deep_jump left by longjmp are reported unwound, never returned
        assert not any(names[f] == "deep_jump" for _, f, _, _ in exits)
        assert any(e[1] == core.EV_UNWOUND and names[e[3]] == "deep_jump" for e in trace)
        del leaf_entries


def test_c_and_python_exits_agree_on_recursion_tail_calls_and_stack_switches(compile_c):
    image = compile_c(SRC)

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.integers(0, 200), min_size=1, max_size=3), st.sampled_from([1, 7, 97, 1000]))
    def check(depths, quantum):
        c = run(image, "c", depths, quantum=quantum)
        py = run(image, "python", depths, quantum=quantum)
        assert c == py
        call_stacks(c[0])

    check()


def test_a_full_return_stack_leaves_returns_untraced_and_the_run_intact(compile_c):
    image = compile_c(SRC)
    trace, fault, names = run(image, "c", (300,))
    assert fault is None
    untraced = [e for e in trace if e[1] == core.EV_RET_UNTRACED]
    assert untraced and all(names[e[3]] in ("rec", "leaf") for e in untraced)
    exits, stacks = call_stacks(trace)
    observed = [e[4] for e in trace if e[1] == core.EV_OBSERVE]
    assert observed       # the guest computed on: its values are those without exits
    plain, _, _ = run(image, "c", (300,), exits=False)
    assert [e for e in plain if e[1] == core.EV_OBSERVE] == [e for e in trace if e[1] == core.EV_OBSERVE]


def test_exits_take_no_virtual_time(compile_c):
    image = compile_c(SRC)
    for depths in ((3,), (5, 40), (0, 1, 2)):
        with_exits, f1, _ = run(image, "c", depths)
        without, f2, _ = run(image, "c", depths, exits=False)
        keep = (core.EV_ENTRY, core.EV_OBSERVE)
        assert [e for e in with_exits if e[1] in keep] == [e for e in without if e[1] in keep]
        assert f1 == f2


def test_walks_agree_with_the_call_stack_the_exits_give(compile_c):
    """At every slice end, each task's ORC walk (C and Python) is either
    unreliable or names exactly the traced functions the trace's entries
    and exits leave open, innermost first; a task in the runtime page's code
    outside its loops is never reliable with fewer frames than that."""
    image = compile_c(SRC)
    for accel in ("c", "python"):
        m = machine(image, accel, (5, 9), quantum=13)
        seen_tramp = 0
        for step in range(1, 400):
            m.run(until=step * 13)
            m.drain()
            _, stacks = call_stacks([e for e in m.trace if e[1] in EXIT_KINDS])
            for task in m.tasks:
                code, entries = m.stack(task, unwinder="orc")
                code_py, entries_py = m.stack(task, unwinder="orc", accel="python")
                assert (code, entries) == (code_py, entries_py)
                rip = entries[0] if entries else 0
                if m.runtime.trampoline_at(rip) is not None:
                    seen_tramp += 1
                if code != unwind.WALK_OK or m.runtime.empty[0] <= rip < m.runtime.empty[1]:
                    continue
                assert entries[-1] == task.end_ret
                walked = [m.function_at(a if i == 0 else a - 1) for i, a in enumerate(entries[:-1])]
                # rip at a function's fentry site: its entry is not traced
                # yet (and if it was tail-called, its caller's is, at this rsp)
                open_ = list(stacks.get(task.tid, []))
                if m.runtime.regs[0] <= rip < m.runtime.regs[1]:
                    # in the trampoline: the walk goes on into the function
                    # whose fentry called it (entries[1]), not traced yet
                    assert walked[1] is not None and entries[1] == walked[1].site + 5
                    walked, slot = walked[2:], m.regs(task)[1] + 8
                elif walked[0] is not None and rip <= walked[0].site:
                    walked, slot = walked[1:], m.regs(task)[1]
                else:
                    slot = None
                if slot is not None and open_ and open_[-1][2] == slot:
                    open_.pop()
                walked = [f.name for f in walked if f is not None and f.name in TRACED]
                # a tail call's callee sits in its caller's frame (the same
                # return slot): the stack shows only the callee
                traced = [m.functions[fid].name for i, (fid, _, rsp) in enumerate(open_)
                          if i + 1 == len(open_) or open_[i + 1][2] != rsp][::-1]
                assert walked == traced, (accel, step, task.name, [m.symbolize(a) for a in entries])
        m.engine.close()
        assert seen_tramp, "no slice ended in the trampoline: the test did not test it"


def test_a_task_in_the_runtime_page_unwinds_to_its_entry_or_is_unreliable(compile_c):
    """Every instruction of the runtime page outside the task loops, and a
    site's trampoline, with the stack a real call leaves there: the
    trampoline (reached from a traced function's fentry call) walks into
    that function and on to the entry frame; the return trampoline and the
    stray ud2s are unreliable, and so is any byte of a trampoline past its
    first instruction. Frame pointers never vouch for the trampoline's
    register frame, in the models' checks of every task at once
    (livepatch's reliable walk) as in a walk of one task."""
    from emu.models.stacks import StackChecks
    image = compile_c(SRC)
    m = machine(image, "c", (2,), quantum=10_000)
    task = m.tasks[0]
    rt = m.runtime
    checks = StackChecks(m)
    # a genuine state: the task inside leaf, called from rec(...)
    m.run(until=2000)
    code, entries = m.stack(task, unwinder="orc")
    tramp = rt.trampoline(m.site(m.function("leaf")))
    for insn in rt.insn_starts + (tramp, tramp + 1, tramp + 15):
        if rt.empty[0] <= insn < rt.empty[1]:
            continue
        m.engine.switch(task.tid)
        rip, rsp, rbp = m.regs(task)
        m.engine.uc.reg_write(core_rip(), insn)
        # a task off its CPU there was preempted; at the trampoline, even
        # without the flag, the register frame is what makes frame pointers
        # give up on it, in both paths
        flags = (1, 0) if rt.trampoline_at(insn) is not None else (1,)
        for unwinder, preempted in [(u, p) for u in ("orc", "fp") for p in flags]:
            m.sched_state.tasks[task.tid].preempted = preempted
            c = m.stack(task, unwinder=unwinder)
            py = m.stack(task, unwinder=unwinder, accel="python")
            assert c == py
            if c[0] == unwind.WALK_OK:
                assert unwinder == "orc" and insn == tramp
                assert c[1][-1] == task.end_ret
            for accel in ("c", "python"):
                each = checks.check((), kind=unwinder, max_entries=100, reliable=True, accel=accel)
                assert each[0].code == c[0], (unwinder, accel, m.symbolize(insn))
                assert (0 in each.failing()) == (c[0] != unwind.WALK_OK)
        m.engine.uc.reg_write(core_rip(), rip)
    m.engine.close()


def core_rip():
    from unicorn.x86_const import UC_X86_REG_RIP
    return UC_X86_REG_RIP


# ---- ftrace_graph_ret_addr, C and Python, on hostile return stacks ----------------------------

RET = 0x100040


@st.composite
def graphs(draw):
    records = draw(st.lists(st.tuples(st.sampled_from([0x1000, 0x1008, 0x1010, 2**64 - 8]),
                                      st.sampled_from([RET, 0x400010, 0, 2**64 - 1])), max_size=6))
    depth = draw(st.one_of(st.just(len(records)), st.integers(0, 2**64 - 1)))
    size = draw(st.sampled_from([0, 8, 16, 16 + 32 * len(records), 16 + 32 * len(records) + 5, 4096]))
    data = bytearray(max(size, 16 + 32 * len(records)))
    struct.pack_into("<Q", data, 0, depth)
    for i, (slot, ret) in enumerate(records):
        struct.pack_into("<QQqq", data, 16 + 32 * i, slot, ret, i, 0)
    return bytes(data[:size])


@settings(max_examples=300, deadline=None)
@given(graphs(), st.sampled_from([RET, 0x400010, 0]), st.sampled_from([0x1000, 0x1008, 0x1010, 2**64 - 8]),
       st.sampled_from([RET, 0]))
def test_graph_ret_addr_twins_agree(data, value, slot, ret):
    c = core.graph_ret_addr(core.Graph(ret, data), value, slot)
    py = unwind.graph_ret_addr((ret, data), value, slot)
    assert c == py
    if value != ret or not ret:
        assert c == value


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(1, 12), st.data())
def test_diverting_any_return_addresses_does_not_change_a_walk(depth, data):
    """A frame-pointer chain `depth` deep; divert any subset of its return
    address slots (and record them on a return stack, possibly with tail
    call records): both twins walk it exactly as the undiverted stack,
    and a slot whose record is missing makes it unreliable."""
    lo, hi = 0x7000, 0x8000
    text = [(0x400000, 0x401000)]
    stack = bytearray(hi - lo)
    frames = [hi - 0x40 - 0x20 * i for i in range(depth)][::-1]     # innermost first
    end_slot = frames[-1] + 8
    for i, f in enumerate(frames):
        nxt = frames[i + 1] if i + 1 < depth else 0
        struct.pack_into("<QQ", stack, f - lo, nxt, 0x400100 + i if i + 1 < depth else 0x400fff)
    base = (bytes(stack), lo, hi, text, 0x400000, frames[0] - 8, frames[0])
    kw = dict(end_ret=0x400fff, end_slot=end_slot)
    want = unwind.walk_fp(*base, **kw)
    divert = data.draw(st.lists(st.sampled_from(range(depth)), unique=True))
    drop = data.draw(st.sampled_from([None] + divert)) if divert else None
    records = []
    for i in sorted(divert, key=lambda i: -frames[i]):         # outermost first, as calls push
        slot = frames[i] + 8
        real = struct.unpack_from("<Q", stack, slot - lo)[0]
        if i != drop:
            records.append((slot, real))
        if data.draw(st.booleans()):
            records.append((slot, RET))         # a tail call's record over it
        struct.pack_into("<Q", stack, slot - lo, RET)
    g = bytearray(4096)
    struct.pack_into("<Q", g, 0, len(records))
    for i, (slot, real) in enumerate(records):
        struct.pack_into("<QQqq", g, 16 + 32 * i, slot, real, 0, 0)
    args = (bytes(stack), lo, hi, text, 0x400000, frames[0] - 8, frames[0])
    py = unwind.walk_fp(*args, **kw, graph=(RET, bytes(g)))
    c = core.walk_fp(bytes(stack), lo, hi, core.Ranges(text), 0x400000, frames[0] - 8, frames[0], **kw,
                     graph=core.Graph(RET, bytes(g)))
    assert c == py
    if drop is None:
        assert py == want
    else:
        assert py[0] == unwind.WALK_BAD_RET
