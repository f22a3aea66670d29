"""The Python API under misuse (README "Python API"): a wrong call gets one
clear exception, an EmuError or a TypeError/ValueError whose message names
the function and the parameter (or the address) at fault; never a signal,
never cffi's OverflowError or an AttributeError from inside; and the object
stays usable, or is clearly closed. `make asan` runs this file: the calls
that reach the C core do it under AddressSanitizer too."""
import math
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emu
from emu import Machine, Runner, RunSpec, build_c, make_model, make_patch
from emu.engine import core
from emu.errors import CoreError, EmuError, EngineBusy, EngineClosed, PatchError, StateError, UserError
from emu.images import diff
from emu.models import MODEL_NAMES

BASE = """
volatile long zero;
__attribute__((noinline)) long bar(void) { return 1 + zero; }
__attribute__((noinline)) void something_else(long x) { if (x & 1) lpemu_sleep(2); else lpemu_yield(); }
__attribute__((noinline)) long baz(long f) { lpemu_observe(1, f); return f + 1; }
long foo(long x) { long f = bar(); something_else(x); return baz(f); }
long user_entry(long x) { return foo(x); }
"""

PATCH = """
extern volatile long zero;
__attribute__((noinline)) long bar(void) { return 100 + zero; }
__attribute__((noinline)) long baz(long f) { lpemu_observe(2, f); return f / 100 + 1; }
"""

MODULE = "long mod_f(long x) { return x + 1; }"

#: what a caller's mistake may raise (the contract)
CLEAR = (EmuError, TypeError, ValueError)
LEAKS = (OverflowError, AttributeError, KeyError, IndexError, AssertionError)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("misuse")
    for name, text in (("base.c", BASE), ("patch.c", PATCH), ("mod.c", MODULE)):
        (d / name).write_text('#include "lpemu.h"\n' + textwrap.dedent(text))
    return d


@pytest.fixture(scope="module")
def base(sources):
    return build_c([sources / "base.c"], base=0x400000)


def new_machine(base, sources, *, start=True, tasks=3):
    m = Machine(base, cpus=2, quantum=300)
    for i in range(tasks):
        m.add_task(f"user{i}", "user_entry", (i,))
    patch = build_c([sources / "patch.c"], base=m.module_base(), name="p", link_against=base, keep={"bar", "baz"})
    m.load(patch)
    if start:
        m.run(until=3000)
    return m, patch


@pytest.fixture(scope="module")
def shared(base, sources):
    """One started machine the rows below call wrongly; each row checks it
    runs on afterwards."""
    m, patch = new_machine(base, sources)
    yield m, patch
    m.engine.close()


def clear(exc_info, *names):
    """The exception is one the contract allows and its message names each of names."""
    err = exc_info.value
    assert isinstance(err, CLEAR) and not isinstance(err, LEAKS), repr(err)
    for name in names:
        assert name in str(err), (name, str(err))


def runs_on(m, instructions=2000):
    before = m.now
    m.run(until=m.now + instructions)
    assert m.now == before + instructions


# ---- Machine methods: (row id, call, exception, words the message names) -------------------

def _fn(m):
    return m.function("bar")


MACHINE_ROWS = [
    # text_write: the address is a 64-bit one, data bytes-like (cffi's OverflowError and its
    # "initializer for ctype" TypeError before)
    ("text_write addr -1", lambda m: m.text_write(-1, b"\x90"), ValueError, ["text_write", "addr"]),
    ("text_write addr 2**64", lambda m: m.text_write(2**64, b"\x90"), ValueError, ["text_write", "addr"]),
    ("text_write addr None", lambda m: m.text_write(None, b"\x90"), TypeError, ["text_write", "addr"]),
    ("text_write addr float", lambda m: m.text_write(1.5, b"\x90"), TypeError, ["text_write", "addr"]),
    ("text_write addr unmapped", lambda m: m.text_write(0x10, b"\x90"), CoreError, ["0x10"]),
    ("text_write data str", lambda m: m.text_write(_fn(m).start, "\x0f"), TypeError, ["data"]),
    ("text_write data None", lambda m: m.text_write(_fn(m).start, None), TypeError, ["data"]),
    ("text_write data list", lambda m: m.text_write(_fn(m).start, [0x90]), TypeError, ["data"]),
    ("text_write data empty", lambda m: m.text_write(_fn(m).start, b""), CoreError, ["text write"]),
    ("text_write data 1 MiB", lambda m: m.text_write(_fn(m).start, bytes(1 << 20)), CoreError, ["text write"]),
    # runnable, in_guard: a Cpu, a Task (AttributeError from inside before)
    ("runnable None", lambda m: m.runnable(None), TypeError, ["runnable", "cpu", "Machine.cpus"]),
    ("runnable index", lambda m: m.runnable(0), TypeError, ["runnable", "cpu"]),
    ("in_guard task None", lambda m: m.in_guard(0x1000, None), TypeError, ["in_guard", "task", "Machine.tasks"]),
    ("in_guard addr -1", lambda m: m.in_guard(-1, m.tasks[0]), ValueError, ["in_guard", "addr"]),
    ("in_guard addr None", lambda m: m.in_guard(None, m.tasks[0]), TypeError, ["in_guard", "addr"]),
    # set_poke, watch, site, set_entries: a FunctionRef of this machine
    ("set_poke poke 2**63", lambda m: m.set_poke(_fn(m), 2**63), ValueError, ["set_poke", "poke"]),
    ("set_poke poke -2**64", lambda m: m.set_poke(_fn(m), -2**64), ValueError, ["poke"]),
    ("set_poke poke 99", lambda m: m.set_poke(_fn(m), 99), ValueError, ["set_poke", "POKE_"]),
    ("set_poke poke str", lambda m: m.set_poke(_fn(m), "1"), TypeError, ["set_poke", "poke"]),
    ("set_poke fn None", lambda m: m.set_poke(None, 0), TypeError, ["set_poke", "fn", "Machine.function"]),
    ("set_poke fn name", lambda m: m.set_poke("bar", 0), TypeError, ["set_poke", "fn"]),
    ("watch None", lambda m: m.watch(None), TypeError, ["watch", "fn"]),
    ("watch name", lambda m: m.watch("bar"), TypeError, ["watch", "fn"]),
    ("site int", lambda m: m.site(5), TypeError, ["site", "fn"]),
    ("set_entries None", lambda m: m.set_entries(None, []), TypeError, ["set_entries", "fn"]),
    ("set_entries target 2**64",
     lambda m: m.set_entries(_fn(m), [(2**64, 1, False, False)]), ValueError, ["entries[0]", "target"]),
    ("set_entries None entry", lambda m: m.set_entries(_fn(m), [None]), TypeError, ["entries[0]"]),
    ("set_entries 3-tuple", lambda m: m.set_entries(_fn(m), [(1, 2, 3)]), ValueError, ["entries[0]"]),
    ("set_entries int", lambda m: m.set_entries(_fn(m), 5), TypeError, ["set_entries", "entries"]),
    ("set_entries version 2**40",
     lambda m: m.set_entries(_fn(m), [(_fn(m).start, 2**40, False, False)]), ValueError, ["version"]),
    ("set_entries 17 deep",
     lambda m: m.set_entries(_fn(m), [(_fn(m).start, 1, False, False)] * 17), CoreError, ["16"]),
    # emit: C ints (kind, task), int64 (a, b), uint64 (c)
    ("emit kind 2**31", lambda m: m.emit(2**31, 0), ValueError, ["event push", "kind"]),
    ("emit task -2**31-1", lambda m: m.emit(core.EV_OBSERVE, -2**31 - 1), ValueError, ["task"]),
    ("emit a 2**63", lambda m: m.emit(core.EV_OBSERVE, 0, 2**63), ValueError, ["a"]),
    ("emit b -2**63-1", lambda m: m.emit(core.EV_OBSERVE, 0, 0, -2**63 - 1), ValueError, ["b"]),
    ("emit c -1", lambda m: m.emit(core.EV_OBSERVE, 0, 0, 0, -1), ValueError, ["c"]),
    ("emit c 2**64", lambda m: m.emit(core.EV_OBSERVE, 0, 0, 0, 2**64), ValueError, ["c"]),
    ("emit kind None", lambda m: m.emit(None, 0), TypeError, ["kind"]),
    ("emit a float", lambda m: m.emit(core.EV_OBSERVE, 0, 1.5), TypeError, ["a"]),
    # time: seconds and ticks are finite numbers >= 0; at and run take virtual times
    ("seconds inf", lambda m: m.seconds(math.inf), ValueError, ["seconds", "inf"]),
    ("seconds nan", lambda m: m.seconds(math.nan), ValueError, ["seconds", "nan"]),
    ("seconds -1", lambda m: m.seconds(-1), ValueError, ["seconds"]),
    ("seconds 1e300", lambda m: m.seconds(1e300), ValueError, ["seconds"]),
    ("seconds str", lambda m: m.seconds("5"), TypeError, ["seconds"]),
    ("seconds None", lambda m: m.seconds(None), TypeError, ["seconds"]),
    ("ticks inf", lambda m: m.ticks(math.inf), ValueError, ["ticks"]),
    ("ticks str", lambda m: m.ticks("5"), TypeError, ["ticks"]),
    ("ticks 2**64", lambda m: m.ticks(2**64), ValueError, ["ticks"]),
    ("at when -1", lambda m: m.at(-1, lambda: None), ValueError, ["at", "when"]),
    ("at when 2**63", lambda m: m.at(2**63, lambda: None), ValueError, ["at", "when"]),
    ("at when float", lambda m: m.at(1.5, lambda: None), TypeError, ["at", "when"]),
    ("at when None", lambda m: m.at(None, lambda: None), TypeError, ["at", "when"]),
    ("at fn None", lambda m: m.at(m.now + 10, None), TypeError, ["at", "fn", "callable"]),
    ("at fn int", lambda m: m.at(m.now + 10, 5), TypeError, ["at", "fn"]),
    ("run until -1", lambda m: m.run(until=-1), ValueError, ["run", "until"]),
    ("run until inf", lambda m: m.run(until=math.inf), TypeError, ["run", "until"]),
    ("run stop_when int", lambda m: m.run(until=m.now + 10, stop_when=5), TypeError, ["run", "stop_when"]),
    ("run watch int", lambda m: m.run(until=m.now + 10, stop_when=lambda: False, watch=5), TypeError,
     ["run", "watch"]),
    ("spawn None", lambda m: m.spawn(None), TypeError, ["spawn", "work"]),
    ("spawn a function", lambda m: m.spawn(lambda: None), TypeError, ["spawn", "generator"]),
    # tasks: Task objects of this machine
    ("stack None", lambda m: m.stack(None), TypeError, ["stack", "task"]),
    ("stack a tid", lambda m: m.stack(0), TypeError, ["stack", "task"]),
    ("stack accel", lambda m: m.stack(m.tasks[0], accel="x"), ValueError, ["stack", "accel"]),
    ("stack unwinder", lambda m: m.stack(m.tasks[0], unwinder="x"), ValueError, ["unwinder"]),
    ("stack max_entries", lambda m: m.stack(m.tasks[0], max_entries=2**64), ValueError, ["stack", "max_entries"]),
    ("regs None", lambda m: m.regs(None), TypeError, ["regs", "task"]),
    ("backtrace str", lambda m: m.backtrace("user0"), TypeError, ["backtrace", "task"]),
    ("scan_stack None", lambda m: m.scan_stack(None, []), TypeError, ["scan_stack", "task"]),
    ("wake None", lambda m: m.wake(None, early=True), TypeError, ["wake", "task"]),
    ("signal None", lambda m: m.signal(None), TypeError, ["signal", "task"]),
    ("set_patch_state None", lambda m: m.set_patch_state(None, 1), TypeError, ["set_patch_state", "task"]),
    ("set_patch_state 2**64", lambda m: m.set_patch_state(m.tasks[0], 2**64), ValueError, ["state"]),
    ("set_patch_state route", lambda m: m.set_patch_state(m.tasks[0], 5, "nowhere"), ValueError, ["nowhere"]),
    ("fork a task not unborn", lambda m: m.fork(m.tasks[0], _fn(m).start), UserError, ["user0"]),
    ("fork None", lambda m: m.fork(None, 0), TypeError, ["fork", "task"]),
    ("add_task after start", lambda m: m.add_task("late", "user_entry"), UserError, ["before the machine starts"]),
    # images
    ("load None", lambda m: m.load(None), TypeError, ["load", "image"]),
    ("load a path", lambda m: m.load("mod.c"), TypeError, ["load", "image"]),
    ("unload None", lambda m: m.unload(None), TypeError, ["unload", "image"]),
    ("unload the base", lambda m: m.unload(m.base), ValueError, ["unload", "not a module"]),
    ("function None", lambda m: m.function(None), UserError, ["None"]),
    ("function unknown", lambda m: m.function("nosuch"), UserError, ["nosuch"]),
    # randomness, slices, snapshots
    ("seed_random None", lambda m: m.seed_random(None), TypeError, ["seed_random", "seed"]),
    ("vary_slices str", lambda m: m.vary_slices("x"), TypeError, ["vary_slices", "seed"]),
    ("disassemble None", lambda m: m.disassemble(None), TypeError, ["disassemble", "addr"]),
    ("disassemble 2**64", lambda m: m.disassemble(2**64), ValueError, ["disassemble", "addr"]),
    ("restore None", lambda m: m.restore(None), TypeError, ["restore"]),
    ("restore policy", lambda m: m.restore(m.snapshot(), policy=5), TypeError, ["restore", "policy"]),
    # the engine itself (m.engine is documented for close())
    ("engine view addr -1", lambda m: m.engine.view(-1, 8), ValueError, ["view", "addr"]),
    ("engine view size 2**64", lambda m: m.engine.view(0x400000, 2**64), ValueError, ["view", "size"]),
    ("engine map addr str", lambda m: m.engine.map("0", 4096, 3), TypeError, ["map", "addr"]),
    ("engine map prot 9", lambda m: m.engine.map(0x7000_0000, 4096, 9), ValueError, ["map", "prot"]),
    ("engine switch 2**40", lambda m: m.engine.switch(2**40), ValueError, ["switch", "tid"]),
    ("engine clock -1", lambda m: setattr(m.engine, "clock", -1), ValueError, ["clock"]),
    ("engine rng None", lambda m: setattr(m.engine, "rng", None), TypeError, ["rng"]),
    ("engine event mask", lambda m: m.engine.set_event_mask(["x"]), TypeError, ["event mask"]),
    ("sched field 2**64", lambda m: setattr(m.sched_state, "pick", 2**64), CoreError, ["pick"]),
    ("engine task stack lo -1", lambda m: m.engine.set_task_stack(0, -1, 0), ValueError, ["stack of task", "lo"]),
    ("engine sysinsn addr 2**64", lambda m: m.engine.add_sysinsn(2**64, 1, 0), ValueError, ["instruction", "addr"]),
    ("engine skip_insn None", lambda m: m.engine.skip_insn(None, 0), TypeError, ["skip instruction", "addr"]),
    ("engine now addr -1", lambda m: m.engine.now(-1), ValueError, ["now", "addr"]),
]


@pytest.mark.parametrize("call,exc,words", [r[1:] for r in MACHINE_ROWS], ids=[r[0] for r in MACHINE_ROWS])
def test_a_wrong_call_to_the_machine_raises_what_the_contract_says(shared, call, exc, words):
    m, _ = shared
    with pytest.raises(exc) as info:
        call(m)
    clear(info, *words)
    runs_on(m)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.sampled_from(range(len(MACHINE_ROWS))), min_size=1, max_size=10))
def test_refused_calls_leave_the_run_as_it_would_have_been(base, sources, rows):
    """No half-changed state: a machine that refused any sequence of the
    calls above runs on event for event as its twin that was never asked."""
    a, _ = new_machine(base, sources)
    b, _ = new_machine(base, sources)
    for i in rows:
        with pytest.raises(MACHINE_ROWS[i][2]):
            MACHINE_ROWS[i][1](a)
    for m in (a, b):
        m.run(until=30_000)
        m.drain()
    assert (a.trace.raw(), a.log, a.now) == (b.trace.raw(), b.log, b.now)
    a.engine.close()
    b.engine.close()


@pytest.mark.parametrize("kw,exc,words", [
    (dict(cpus=None), TypeError, ["cpus"]), (dict(cpus="2"), TypeError, ["cpus"]), (dict(cpus=1.5), TypeError, ["cpus"]),
    (dict(cpus=0), UserError, ["cpus"]), (dict(cpus=10**6), ValueError, ["cpus", "4096"]),
    (dict(cpus=2**64), ValueError, ["cpus"]), (dict(quantum=None), TypeError, ["quantum"]),
    (dict(quantum=1.5), TypeError, ["quantum"]), (dict(quantum=2**64), ValueError, ["quantum"]),
    (dict(tick=math.nan), TypeError, ["tick"]), (dict(tick=2**64), ValueError, ["tick"]),
    (dict(hz=0.5), TypeError, ["hz"]), (dict(lockup_ticks=-1), ValueError, ["lockup_ticks"]),
    (dict(lockup_ticks=2**64), ValueError, ["lockup_ticks"]), (dict(lockup_ticks=None), TypeError, ["lockup_ticks"]),
    (dict(fast_memory="no"), TypeError, ["fast_memory"]), (dict(name=None), TypeError, ["name"]),
    (dict(policy=5), TypeError, ["policy"]), (dict(preempt=None), UserError, ["preempt"]),
    (dict(unwinder=5), UserError, ["unwinder"]), (dict(accel="x"), UserError, ["'x'"]),
], ids=lambda v: repr(v) if isinstance(v, dict) else None)
def test_a_machine_made_wrongly_raises_before_anything_is_made(base, kw, exc, words):
    with pytest.raises(exc) as info:
        Machine(base, **kw)
    clear(info, "Machine" if exc is not UserError else "", *words)


@pytest.mark.parametrize("image", [None, "base", 5])
def test_a_machine_of_no_image_names_the_image(image):
    with pytest.raises(TypeError) as info:
        Machine(image)
    clear(info, "Machine", "image", "build_c")


@pytest.mark.parametrize("args,kw,exc,words", [
    (("t", "nosuch"), {}, UserError, ["nosuch"]), (("t", None), {}, TypeError, ["add_task", "entry"]),
    ((None, "user_entry"), {}, TypeError, ["add_task", "name"]),
    (("t", "user_entry", None), {}, TypeError, ["args"]), (("t", "user_entry", 5), {}, TypeError, ["args"]),
    (("t", "user_entry", "ab"), {}, TypeError, ["args"]), (("t", "user_entry", (1.5,)), {}, TypeError, ["args[0]"]),
    (("t", "user_entry", (math.inf,)), {}, TypeError, ["args[0]"]),
    (("t", "user_entry", (1, None)), {}, TypeError, ["args[1]"]),
    (("t", "user_entry", (2**64,)), {}, UserError, ["64-bit"]), (("t", "user_entry", (1,) * 7), {}, UserError, ["6"]),
    (("t", "user_entry"), dict(kind=None), UserError, ["kind"]), (("t", "user_entry"), dict(cpu=-1), UserError, ["CPU"]),
    (("t", "user_entry"), dict(cpu="0"), TypeError, ["cpu"]), (("t", "user_entry"), dict(cpu=1.0), TypeError, ["cpu"]),
])
def test_a_task_added_wrongly_is_not_added(base, args, kw, exc, words):
    m = Machine(base)
    with pytest.raises(exc) as info:
        m.add_task(*args, **kw)
    clear(info, *words)
    assert m.tasks == []
    m.add_task("t", "user_entry", (1,))
    m.run(until=1000)
    m.engine.close()


def test_a_task_or_function_of_another_machine_is_refused(shared, base, sources):
    """A Task's tid and a FunctionRef's id index this machine's tables:
    another machine's would name (or walk) something else."""
    m, _ = shared
    other, _ = new_machine(base, sources, tasks=4)
    third = Machine(build_c([sources / "mod.c"], base=0x400000, name="third"))
    for call, words in [(lambda: m.stack(other.tasks[3]), ["stack", "user3", "not a task of this machine"]),
                        (lambda: m.stack(other.tasks[0]), ["stack", "user0"]),
                        (lambda: m.wake(other.cpus[0].idle, early=False), ["wake"]),
                        (lambda: m.runnable(other.cpus[1]), ["runnable", "cpu 1 is not a CPU of this machine"]),
                        (lambda: m.watch(third.function("mod_f")), ["watch", "not a function of this machine"])]:
        with pytest.raises(ValueError) as info:
            call()
        clear(info, *words)
    m.watch(other.function("p:bar"))      # the same function of a machine alike is this one's
    third.engine.close()
    other.engine.close()
    runs_on(m)


# ---- numbers at and past their ranges (hypothesis) ----------------------------------------

INT32 = (-2**31, 2**31 - 1)
INT64 = (-2**63, 2**63 - 1)
UINT64 = (0, 2**64 - 1)
NOT_INTS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                     st.binary(max_size=3), st.lists(st.integers(), max_size=2), st.booleans())


def wide(lo, hi):
    """ints on both sides of [lo, hi], far and just past, and in it."""
    return st.one_of(st.integers(), st.integers(max_value=lo - 1), st.integers(min_value=hi + 1),
                     st.sampled_from([lo - 1, lo, hi, hi + 1, 2**63, 2**64, -2**63 - 1, -1, 0]))


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(field=st.sampled_from([("kind", INT32), ("task", INT32), ("a", INT64), ("b", INT64), ("c", UINT64)]),
       value=wide(*INT64))
def test_emit_takes_the_c_types_of_an_event_and_names_the_field_past_them(shared, field, value):
    m, _ = shared
    name, (lo, hi) = field
    args = dict(kind=core.EV_OBSERVE, task=0, a=0, b=0, c=0)
    args[name] = value
    n = len(m.trace)
    if lo <= value <= hi:
        m.emit(**args)
        m.drain()
        assert len(m.trace) == n + 1
    else:
        with pytest.raises(ValueError) as info:
            m.emit(**args)
        clear(info, "event push", name, str(value))


@FAST
@given(field=st.sampled_from(["kind", "task", "a", "b", "c"]), value=NOT_INTS)
def test_emit_of_what_is_no_int_is_a_type_error_naming_the_field(shared, field, value):
    m, _ = shared
    args = dict(kind=core.EV_OBSERVE, task=0, a=0, b=0, c=0)
    args[field] = value
    if isinstance(value, bool):
        m.emit(**args)          # a bool is an int to Python and to cffi
        return
    with pytest.raises(TypeError) as info:
        m.emit(**args)
    clear(info, field)


@FAST
@given(addr=wide(*UINT64))
def test_text_write_names_an_address_past_64_bits_and_refuses_an_unmapped_one(shared, addr):
    m, _ = shared
    if 0 <= addr < 2**64:
        try:
            m.engine.view(addr, 1)
            return              # (mapped memory of the guest: not the subject here)
        except CoreError:
            pass
        try:
            m.text_write(addr, b"\x90")
        except CoreError as exc:
            assert f"{addr:#x}" in str(exc)
    else:
        with pytest.raises(ValueError) as info:
            m.text_write(addr, b"\x90")
        clear(info, "text_write", "addr")


@FAST
@given(when=wide(0, 2**63 - 1))
def test_at_and_run_take_virtual_times_only(shared, when):
    m, _ = shared
    if 0 <= when < 2**63:
        m.at(when, lambda: None)
        return
    for call, name in ((lambda: m.at(when, lambda: None), "when"), (lambda: m.run(until=when), "until")):
        with pytest.raises(ValueError) as info:
            call()
        clear(info, name)


@FAST
@given(s=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), NOT_INTS))
def test_seconds_and_ticks_are_virtual_times_or_a_clear_error(shared, s):
    m, _ = shared
    for fn, name in ((m.seconds, "seconds"), (m.ticks, "ticks")):
        try:
            t = fn(s)
        except (TypeError, ValueError) as exc:
            assert name in str(exc)
            bad_type = not isinstance(s, (int, float)) or isinstance(s, bool)
            assert isinstance(exc, TypeError) == bad_type
        else:
            assert isinstance(t, int) and 0 <= t < 2**63
            assert isinstance(s, (int, float)) and math.isfinite(s) and s >= 0


@FAST
@given(poke=wide(*INT32))
def test_set_poke_names_a_poke_past_a_c_int(shared, poke):
    m, _ = shared
    fn = m.function("foo")
    if poke in (core.POKE_NONE, core.POKE_TO_CALL, core.POKE_TO_NOP):
        return
    with pytest.raises(ValueError) as info:
        m.set_poke(fn, poke)
    clear(info, "set_poke", "poke")


#: per Machine number: ints past its range (lo: the least it takes; hi: past it)
MACHINE_NUMBERS = {"cpus": (1, core.MAX_CPUS + 1), "quantum": (1, 2**63), "tick": (1, 2**63), "hz": (1, 2**63),
                   "lockup_ticks": (0, 2**63)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(MACHINE_NUMBERS)), data=st.data())
def test_the_machine_numbers_past_their_range_are_refused_naming_them(base, key, data):
    lo, past = MACHINE_NUMBERS[key]
    value = data.draw(st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=past), NOT_INTS))
    with pytest.raises((UserError, TypeError, ValueError)) as info:
        Machine(base, **{key: value})
    assert key in str(info.value) or (key in ("quantum", "tick", "hz") and "positive" in str(info.value))


# ---- re-entrancy, threads of one caller: a run's callbacks ------------------------------------


@pytest.mark.parametrize("inside", ["run", "close", "snapshot", "restore"])
def test_the_machine_refuses_from_inside_its_own_run_and_runs_on(base, sources, inside):
    m, _ = new_machine(base, sources)
    snap = m.snapshot()
    seen = []

    def callback():
        try:
            {"run": lambda: m.run(until=m.now + 100), "close": m.engine.close, "snapshot": m.snapshot,
             "restore": lambda: m.restore(snap)}[inside]()
        except (EngineBusy, StateError) as exc:
            seen.append(exc)
    m.at(m.now + 500, callback)
    m.run(until=m.now + 3000)
    assert len(seen) == 1 and inside in str(seen[0]) and not m.engine.closed
    assert isinstance(seen[0], EngineBusy) or inside == "snapshot"
    runs_on(m)
    m.engine.close()        # after the run: fine


def test_stop_when_cannot_run_the_machine_again(base, sources):
    m, _ = new_machine(base, sources)
    with pytest.raises(EngineBusy, match="run: called from inside a run"):
        m.run(until=m.now + 3000, stop_when=lambda: m.run(until=m.now + 10) or True)
    runs_on(m)
    m.engine.close()


@pytest.mark.parametrize("model_name", ["stop_machine", "livepatch"])
def test_a_patch_callback_that_reenters_gets_busy_and_the_machine_runs_on(base, sources, model_name):
    """A pre_patch callback (called by the model's work) that enables,
    runs or closes: each is refused, the exception ends the run that
    raised it, and the machine runs on."""
    m, pimg = new_machine(base, sources, start=False)
    model = make_model(model_name, m)
    tried = []

    def pre_patch(machine, patch, obj):
        for call in (lambda: model.enable(patch), lambda: m.run(until=m.now + 10), m.engine.close):
            with pytest.raises(EmuError) as info:
                call()
            tried.append(type(info.value))
        return 0
    patch = model.add(make_patch(m, "p", pimg, ["bar", "baz"], callbacks={"vmlinux": {"pre_patch": pre_patch}}))
    m.at(3000, lambda: model.enable(patch))
    m.run(until=m.seconds(3))
    assert len(tried) == 3 and tried[1:] == [EngineBusy, EngineBusy]
    assert model.transitions[-1].result == "completed"
    runs_on(m)
    m.engine.close()


# ---- after close ---------------------------------------------------------------------------------


def test_every_call_that_reaches_a_closed_engine_says_it_is_closed(base, sources):
    m, _ = new_machine(base, sources)
    fn = m.function("foo")
    snap = m.snapshot()
    m.engine.close()
    for name, call in [("now", lambda: m.now), ("run", lambda: m.run(until=10**6)),
                       ("text_write", lambda: m.text_write(fn.start, b"\x0f")),
                       ("set_poke", lambda: m.set_poke(fn, 0)), ("watch", lambda: m.watch(fn)),
                       ("stack", lambda: m.stack(m.tasks[0])), ("snapshot", m.snapshot),
                       ("restore", lambda: m.restore(snap)), ("seed_random", lambda: m.seed_random(1)),
                       ("vary_slices", lambda: m.vary_slices(1)), ("emit", lambda: m.emit(core.EV_OBSERVE, 0)),
                       ("disassemble", lambda: m.disassemble(fn.start)),
                       ("view", lambda: m.engine.view(fn.start, 4)), ("rng", lambda: m.engine.rng),
                       ("clock", lambda: setattr(m.engine, "clock", 5))]:
        with pytest.raises(EngineClosed):
            call()
    m.engine.close()


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_a_model_of_a_closed_machine_refuses_before_it_changes(base, sources, model_name):
    m, pimg = new_machine(base, sources)
    model = make_model(model_name, m)
    patch = model.add(make_patch(m, "p", pimg, ["bar", "baz"]))
    mod = build_c([sources / "mod.c"], base=m.module_base(), name="mod")
    m.engine.close()
    for call in (lambda: model.enable(patch), lambda: model.disable(patch), lambda: model.force(),
                 lambda: model.load_module(mod), lambda: model.unload_module(mod)):
        with pytest.raises(EngineClosed, match=f"{model_name}.*closed"):
            call()
    assert model.transitions == [] and not patch.enabled and "mod" not in {i.name for i in m.images}


def test_a_machine_closed_before_it_started_stays_unstarted(base, sources):
    m, _ = new_machine(base, sources, start=False)
    m.engine.close()
    for _ in range(2):
        with pytest.raises(EngineClosed):
            m.run(until=100)
        assert not m.started


# ---- models ---------------------------------------------------------------------------------------

MODEL_ROWS = [
    ("add None", lambda mo, p, img: mo.add(None), ["add", "patch", "make_patch"]),
    ("add a name", lambda mo, p, img: mo.add("p"), ["add", "patch"]),
    ("enable None", lambda mo, p, img: mo.enable(None), ["enable", "patch"]),
    ("enable a name", lambda mo, p, img: mo.enable("p"), ["enable", "patch"]),
    ("disable None", lambda mo, p, img: mo.disable(None), ["disable", "patch"]),
    ("force a name", lambda mo, p, img: mo.force("p"), ["force", "patch"]),
    ("load_module None", lambda mo, p, img: mo.load_module(None), ["load_module", "image"]),
    ("load_module a path", lambda mo, p, img: mo.load_module("mod.c"), ["load_module", "image"]),
    ("load_module init", lambda mo, p, img: mo.load_module(img, init=5), ["load_module", "init"]),
    ("unload_module None", lambda mo, p, img: mo.unload_module(None), ["unload_module", "image"]),
    ("unload_module exit", lambda mo, p, img: mo.unload_module(img, exit="x"), ["unload_module", "exit"]),
]
# livepatch's own: the patch's signal and remove (rmmod) attributes
LIVEPATCH_ROWS = [
    ("signal a name", lambda mo, p, img: mo.signal("p"), ["signal", "patch"]),
    ("remove None", lambda mo, p, img: mo.remove(None), ["remove", "patch"]),
]


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_a_model_called_wrongly_raises_and_then_patches_as_it_would_have(base, sources, model_name):
    """... event for event as a twin that was never called wrongly."""
    traces = []
    for wrongly in (True, False):
        m, pimg = new_machine(base, sources, start=False)
        model = make_model(model_name, m)
        patch = model.add(make_patch(m, "p", pimg, ["bar", "baz"]))
        mod = build_c([sources / "mod.c"], base=m.module_base(), name="mod")
        rows = MODEL_ROWS + (LIVEPATCH_ROWS if model_name == "livepatch" else [])
        for label, call, words in rows if wrongly else ():
            with pytest.raises(TypeError) as info:
                call(model, patch, mod)
            clear(info, model_name, *words)
        assert model.transitions == [] and not patch.enabled and "mod" not in {i.name for i in m.images}
        m.at(3000, lambda: model.enable(patch))
        m.run(until=m.seconds(3))
        assert patch.enabled and model.transitions[-1].result == "completed", model.transitions
        m.drain()
        traces.append((m.trace.raw(), m.log))
        m.engine.close()
    assert traces[0] == traces[1]


@pytest.mark.parametrize("name,machine,words", [
    ("livepatch", None, ["livepatch", "machine"]), ("kgraft", "m", ["kgraft", "machine"]),
    (None, "ok", ["unknown model"]), ("nosuch", "ok", ["nosuch"]),
])
def test_make_model_names_what_is_wrong(base, sources, name, machine, words):
    m, _ = new_machine(base, sources, start=False)
    with pytest.raises((TypeError, ValueError)) as info:
        make_model(name, m if machine == "ok" else machine)
    clear(info, *words)
    assert m.listeners == []


@pytest.mark.parametrize("kw,exc,words", [
    (dict(functions=None), TypeError, ["functions"]), (dict(functions="bar"), TypeError, ["functions", "str"]),
    (dict(functions=[None]), TypeError, ["functions[0]"]), (dict(functions=["bar", 5]), TypeError, ["functions[1]"]),
    (dict(functions=["nosuch"]), PatchError, ["nosuch"]), (dict(functions=["bar", "bar"]), PatchError, ["twice"]),
    (dict(machine=None), TypeError, ["machine"]), (dict(image="p"), TypeError, ["image"]),
    (dict(name=None), TypeError, ["name"]), (dict(replace=1), TypeError, ["replace"]),
    (dict(states=[(1, "x")]), TypeError, ["states[0]", "version"]), (dict(states=[1]), TypeError, ["states[0]"]),
    (dict(states=[(-1, 0)]), ValueError, ["states[0]", "id"]), (dict(states=5), TypeError, ["states"]),
    (dict(callbacks=5), TypeError, ["callbacks"]), (dict(callbacks={"vmlinux": 5}), TypeError, ["callbacks"]),
    (dict(callbacks={"vmlinux": {"pre_patch": 5}}), TypeError, ["pre_patch", "callable"]),
    (dict(callbacks={"vmlinux": {"nosuch": lambda *a: 0}}), PatchError, ["nosuch"]),
    (dict(new_names=5), TypeError, ["new_names"]), (dict(new_names={"bar": 5}), TypeError, ["new_names"]),
    (dict(force=5), TypeError, ["force"]), (dict(force="bar"), TypeError, ["force"]),
])
def test_make_patch_names_the_argument_at_fault(shared, kw, exc, words):
    m, pimg = shared
    args = dict(machine=m, name="p", image=pimg, functions=["bar", "baz"])
    args.update(kw)
    with pytest.raises(exc) as info:
        make_patch(args.pop("machine"), args.pop("name"), args.pop("image"), args.pop("functions"), **args)
    clear(info, *words)


# ---- the runner, scenarios, building and diffing ----------------------------------------------------


@pytest.fixture(scope="module")
def runner():
    scn = emu.load_scenario(emu.__file__.rsplit("/", 1)[0] + "/seed/scenario.toml")
    with Runner(emu.build_scenario(scn)) as r:
        yield r


SPEC_ROWS = [("model", None), ("model", "nosuch"), ("seed", -1), ("seed", 2**63), ("seed", "1"), ("strategy", "x"),
             ("strategy", None), ("start", -1), ("start", 10**12), ("start", 1.5), ("schedule", "x"),
             ("sched_seed", None), ("sched_seed", -1), ("depth", 0), ("depth", "x"), ("preempt", "x"),
             ("tasks", "user0"), ("tasks", ["user0"]), ("tasks", (5,)), ("kernel", 5), ("draws", -1),
             ("draws", "0"), ("draws", 2**63)]


@pytest.mark.parametrize("field,value", SPEC_ROWS, ids=[f"{f}={v!r}" for f, v in SPEC_ROWS])
def test_a_runspec_that_is_no_run_is_refused_when_made(runner, field, value):
    """start = 10**12 once ran until the host ran out of memory."""
    from dataclasses import replace
    good = runner.plan("livepatch", 0)
    with pytest.raises((TypeError, ValueError)) as info:
        replace(good, **{field: value})
    clear(info, f"RunSpec.{field}")
    if not isinstance(value, list):         # (a record's list of tasks is a tuple once read)
        with pytest.raises((TypeError, ValueError)):
            RunSpec.from_json({**good.to_json(), field: value})


@pytest.mark.parametrize("call,words", [
    (lambda r: r.plan(None, 0), ["plan", "model"]), (lambda r: r.plan("nosuch", 0), ["plan", "model"]),
    (lambda r: r.plan("livepatch", -1), ["plan", "seed"]), (lambda r: r.plan("livepatch", None), ["plan", "seed"]),
    (lambda r: r.plan("livepatch", 2**64), ["plan", "seed"]),
    (lambda r: r.plan("livepatch", 0, strategy="x"), ["plan", "strategy"]),
    (lambda r: r.execute(None), ["execute", "spec"]), (lambda r: r.execute("spec"), ["execute", "spec"]),
    (lambda r: RunSpec.from_json(None), ["from_json"]),
])
def test_the_runner_called_wrongly_names_the_argument_and_runs_on(runner, call, words):
    with pytest.raises((TypeError, ValueError)) as info:
        call(runner)
    clear(info, *words)
    assert runner.execute(runner.plan("livepatch", 0)).outcome == "completed"


@pytest.mark.parametrize("program,kw,words", [
    (None, {}, ["Runner", "program"]), ("scenario.toml", {}, ["Runner", "program"]),
    ("ok", dict(cycle=-1), ["cycle"]), ("ok", dict(cycle="x"), ["cycle"]), ("ok", dict(sched="x"), ["sched"]),
])
def test_a_runner_made_wrongly_says_what_is_wrong(runner, program, kw, words):
    with pytest.raises((TypeError, ValueError)) as info:
        Runner(runner.program if program == "ok" else program, **kw)
    clear(info, *words)


@pytest.mark.parametrize("scn", [None, "scenario.toml", 5])
def test_build_scenario_of_no_scenario_names_it(scn):
    with pytest.raises(TypeError) as info:
        emu.build_scenario(scn)
    clear(info, "Scenario", "load_scenario")


@pytest.mark.parametrize("kw,exc,words", [
    (dict(base=None), TypeError, ["base"]), (dict(base="0x400000"), TypeError, ["base"]),
    (dict(base=-1), EmuError, ["base"]), (dict(base=2**64), EmuError, ["base"]),
    (dict(name=None), TypeError, ["build_c", "name"]), (dict(name=5), TypeError, ["build_c", "name"]),
    (dict(cflags="-O2"), TypeError, ["build_c", "cflags"]), (dict(cflags=[5]), TypeError, ["cflags[0]"]),
    (dict(link_against="base"), TypeError, ["link_against"]), (dict(keep="bar"), TypeError, ["keep"]),
    (dict(cpu_features=5), TypeError, ["cpu_features"]),
])
def test_build_c_names_the_argument_at_fault(sources, kw, exc, words):
    args = dict(base=0x400000)
    args.update(kw)
    with pytest.raises(exc) as info:
        build_c([sources / "base.c"], **args)
    clear(info, *words)


@pytest.mark.parametrize("cflags,words", [("-O2", ["cflags", "str"]), (5, ["cflags"]), ([None], ["cflags[0]"])])
def test_diff_names_cflags_that_are_no_list_of_flags(sources, cflags, words):
    for fn in (diff.diff_files, diff.diff_sources, diff.patch_plan):
        with pytest.raises(TypeError) as info:
            fn(sources / "base.c", sources / "patch.c", cflags=cflags)
        clear(info, "diff", *words)


def test_the_limits_the_machine_checks_are_the_c_cores(base):
    """core.MAX_TASKS and MAX_CPUS are csrc/sched.c's bounds (emu_sched_bytes):
    one past either is out of range there too."""
    m = Machine(base)
    for n, cpus in ((core.MAX_TASKS + 1, 1), (1, core.MAX_CPUS + 1), (2**40, 1), (None, 1)):
        with pytest.raises(CoreError, match="out of range"):
            m.engine.sched_init(n, cpus)
    m.engine.close()


# ---- campaigns, shadow variables, ftrace users -------------------------------------------------


@pytest.mark.parametrize("kw,exc,words", [
    (dict(models=None), TypeError, ["Plan.models"]), (dict(models="livepatch"), TypeError, ["Plan.models"]),
    (dict(models=[]), ValueError, ["Plan.models", "no model"]), (dict(models=["nosuch"]), ValueError, ["nosuch"]),
    (dict(seeds=None), TypeError, ["Plan.seeds"]), (dict(seeds=range(0)), ValueError, ["Plan.seeds"]),
    (dict(seeds=[-1]), ValueError, ["Plan.seeds"]), (dict(seeds=["x"]), TypeError, ["Plan.seeds"]),
    (dict(seeds=range(2**63, 2**63 + 2)), ValueError, ["Plan.seeds"]),
    (dict(seeds=range(10**7)), ValueError, ["runs"]), (dict(strategy=None), ValueError, ["Plan.strategy"]),
    (dict(kernels=["9.9"]), ValueError, ["9.9"]), (dict(kernels="6.1"), TypeError, ["Plan.kernels"]),
    (dict(scenario=None), TypeError, ["Plan.scenario"]),
])
def test_a_campaign_plan_no_campaign_can_run_is_refused_when_made(kw, exc, words):
    from emu.runs.campaign import Plan
    args = dict(scenario="s.toml", models=["livepatch"], seeds=range(2), strategy="exhaustive")
    args.update(kw)
    with pytest.raises(exc) as info:
        Plan(**args)
    clear(info, *words)


@pytest.mark.parametrize("kw,words", [
    (dict(program=None), ["Campaign", "program"]), (dict(plan="plan"), ["Campaign", "plan"]),
    (dict(jobs=None), ["jobs"]), (dict(jobs=0), ["jobs"]), (dict(jobs=2**64), ["jobs"]),
    (dict(batch=0), ["batch"]), (dict(batch="x"), ["batch"]), (dict(out=5), ["out"]),
    (dict(resume="yes"), ["resume"]), (dict(force=1), ["force"]), (dict(scheduler=5), ["scheduler"]),
])
def test_a_campaign_made_wrongly_names_the_argument_and_writes_nothing(runner, tmp_path, kw, words):
    from emu.runs.campaign import Campaign, Plan
    args = dict(program=runner.program, plan=Plan("s.toml", ["livepatch"], range(2), "exhaustive"),
                out=tmp_path / "c")
    args.update(kw)
    with pytest.raises((TypeError, ValueError)) as info:
        Campaign(args.pop("program"), args.pop("plan"), **args)
    clear(info, *words)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("call,words", [
    (lambda sh: sh.alloc(None, 1, 8), ["shadow alloc", "obj"]), (lambda sh: sh.alloc(0, None, 8), ["id"]),
    (lambda sh: sh.alloc(0, 1, -1), ["size"]), (lambda sh: sh.alloc(0, 1, 2**64), ["size"]),
    (lambda sh: sh.alloc(2**64, 1, 8), ["obj"]), (lambda sh: sh.alloc(0, 1, 8, ctor=5), ["ctor"]),
    (lambda sh: sh.get_or_alloc(0, 1, "8"), ["get_or_alloc", "size"]), (lambda sh: sh.get(None, 1), ["get", "obj"]),
    (lambda sh: sh.free(0, 2**64), ["free", "id"]), (lambda sh: sh.free(0, 1, dtor=5), ["dtor"]),
    (lambda sh: sh.free_all(None), ["free_all", "id"]), (lambda sh: sh.read_word(None), ["addr"]),
])
def test_shadow_variables_called_wrongly_name_the_argument_and_change_nothing(shared, call, words):
    m, _ = shared
    before = (dict(m.shadow.vars), list(m.shadow.heap.free_blocks))
    with pytest.raises((TypeError, ValueError)) as info:
        call(m.shadow)
    clear(info, *words)
    assert (dict(m.shadow.vars), list(m.shadow.heap.free_blocks)) == before


def test_a_shadow_size_too_large_for_the_heap_is_null_as_kzalloc_fails(shared):
    """klp_shadow_alloc returns NULL when the allocation fails: a size of
    2**64 - 1 (a guest's -1) or one past the heap is no variable."""
    m, _ = shared
    assert m.shadow.alloc(0x1234, 7, 2**64 - 1) == 0 and m.shadow.alloc(0x1234, 7, 2**40) == 0
    assert m.shadow.get(0x1234, 7) == 0


def test_ftrace_users_called_wrongly_name_the_argument(shared):
    from emu.kernel.ftrace import Ftrace, Ops
    from emu.kernel.tracer import FunctionTracer
    m, _ = shared
    ft = Ftrace(m)
    for call, words in [(lambda: ft.register(None, [m.function("foo")]), ["register", "ops"]),
                        (lambda: ft.register(Ops("x"), None), ["register", "functions"]),
                        (lambda: ft.register(Ops("x"), ["foo"]), ["functions[0]", "Machine.function"]),
                        (lambda: ft.unregister(None), ["unregister", "ops"]),
                        (lambda: ft.set_enabled("no"), ["set_enabled"]), (lambda: Ops(None), ["Ops", "name"]),
                        (lambda: Ops("x", ipmodify="yes"), ["ipmodify"]),
                        (lambda: FunctionTracer(None, ft), ["FunctionTracer", "machine"]),
                        (lambda: FunctionTracer(m, None), ["FunctionTracer", "ftrace"])]:
        with pytest.raises(TypeError) as info:
            call()
        clear(info, *words)
    assert ft.registered() == []
    tracer = FunctionTracer(m, ft)
    m.spawn(tracer.start([m.function("foo")]))
    runs_on(m, 3000)
    on = list(tracer.on)
    with pytest.raises(StateError, match="current tracer already"):
        tracer.start([m.function("foo")])
    assert tracer.on == on and tracer.current_tracer == "function"      # still tracing, as it was
    m.spawn(tracer.stop())
    runs_on(m, 3000)


@pytest.mark.parametrize("call,words", [
    (lambda d: emu.load_scenario(None), ["load", "path"]), (lambda d: emu.load_scenario(5), ["load", "path"]),
    (lambda d: build_c(None, base=0x400000), ["build_c", "sources"]),
    (lambda d: build_c([d / "base.c", None], base=0x400000), ["build_c", "sources[1]"]),
    (lambda d: diff.diff_files(None, d / "patch.c"), ["diff: old"]),
    (lambda d: diff.diff_sources(d / "base.c", 5), ["diff: new"]),
    (lambda d: diff.diff_objects([None], [None]), ["diff: old[0]"]),
    (lambda d: diff.patch_plan(d / "base.c", [d / "patch.c", 5]), ["diff: new[1]"]),
])
def test_paths_that_are_no_paths_are_named(sources, call, words):
    with pytest.raises(TypeError) as info:
        call(sources)
    clear(info, *words)


def test_the_python_twins_machine_answers_the_rows_alike(base, sources):
    """accel="python" (the redirect's and the text writes' Python twins)
    answers every row above with the same exception."""
    m = Machine(base, cpus=2, quantum=300, accel="python", sched="python")
    for i in range(3):
        m.add_task(f"user{i}", "user_entry", (i,))
    m.load(build_c([sources / "patch.c"], base=m.module_base(), name="p", link_against=base, keep={"bar", "baz"}))
    m.run(until=3000)
    wrong = []
    for label, call, exc, words in MACHINE_ROWS:
        if label.startswith(("restore", "engine", "sched")):
            continue        # (snapshots need the C scheduler; the engine is the same one)
        try:
            call(m)
        except exc as err:
            if not all(w in str(err) for w in words):
                wrong.append((label, err))
        except Exception as err:
            wrong.append((label, err))
        else:
            wrong.append((label, "no exception"))
    assert wrong == [], "\n".join(f"{l}: {e!r}" for l, e in wrong)
    runs_on(m)
    m.engine.close()


def test_a_shadow_variable_is_one_whether_its_obj_is_read_signed_or_not(shared):
    """A guest's pointer arrives as a register's signed word; a Python
    callback names it unsigned: the same <obj, id>, printed as the kernel
    prints it."""
    m, _ = shared
    obj = 0xffff_8880_0000_1000
    data = m.shadow.alloc(obj - 2**64, 3, 16)
    assert data and m.shadow.get(obj, 3) == data and m.shadow.get(obj - 2**64, 3) == data
    assert m.shadow.alloc(obj, 3, 16) == 0 and m.log[-1][1] == f"Duplicate shadow variable <{obj:016x}, 3>"
    m.shadow.free(obj, 3)
    assert m.shadow.get(obj - 2**64, 3) == 0


def test_a_snapshot_goes_back_only_into_its_own_machine(base, sources):
    """Two machines alike (same layout, so the C core would take it): the
    snapshot's hypercalls and shadow variables are bound to the machine it
    was taken of, so the other refuses it and runs on untouched."""
    a, _ = new_machine(base, sources)
    b, _ = new_machine(base, sources)
    snap = a.snapshot()
    b.run(until=6000)
    before = (b.now, b.trace.raw(), dict(b.hypercalls))
    with pytest.raises(StateError, match="another machine"):
        b.restore(snap)
    assert (b.now, b.trace.raw(), dict(b.hypercalls)) == before
    a.run(until=6000)
    a.restore(snap)
    assert a.now == 3000
    for m in (a, b):
        runs_on(m)
        m.engine.close()


@pytest.mark.parametrize("ret,exc", [("x", TypeError), ([1], TypeError), (1.5, TypeError), (True, TypeError),
                                     (2**70, ValueError), (-2**70, ValueError)])
def test_a_pre_patch_callback_returning_no_errno_is_named(base, sources, ret, exc):
    m, pimg = new_machine(base, sources, start=False)
    model = make_model("livepatch", m)
    patch = model.add(make_patch(m, "p", pimg, ["bar"], callbacks={"vmlinux": {"pre_patch": lambda *a: ret}}))
    m.at(3000, lambda: model.enable(patch))
    with pytest.raises(exc) as info:
        m.run(until=m.seconds(1))
    clear(info, "patch 'p'", "vmlinux", "pre_patch")
    m.engine.close()


def test_a_shadow_constructor_that_fails_keeps_nothing(shared):
    m, _ = shared
    used = dict(m.shadow.heap.used)
    with pytest.raises(ZeroDivisionError):
        m.shadow.alloc(0x55, 9, 32, ctor=lambda obj, data, arg: 1 // 0)
    with pytest.raises(TypeError, match="constructor"):
        m.shadow.alloc(0x55, 9, 32, ctor=lambda obj, data, arg: "x")
    assert m.shadow.alloc(0x55, 9, 32, ctor=lambda obj, data, arg: -12) == 0      # -ENOMEM: refused
    assert m.shadow.get(0x55, 9) == 0 and m.shadow.heap.used == used


#: per RunSpec field: what a run can have
SPEC_FIELDS = {
    "model": lambda v: v in MODEL_NAMES,
    "seed": lambda v: type(v) is int and 0 <= v < 2**63,
    "strategy": lambda v: v in ("directed", "exhaustive", "random", "pct"),
    "start": lambda v: type(v) is int and 0 <= v <= 2 * 10**8,
    "schedule": lambda v: v in ("rr", "random", "pct"),
    "sched_seed": lambda v: type(v) is int and 0 <= v < 2**63,
    "depth": lambda v: type(v) is int and 1 <= v <= 1000,
    "preempt": lambda v: v is None or v in ("none", "voluntary", "full"),
    "tasks": lambda v: v is None or (type(v) is tuple and all(type(t) is str for t in v)),
    "kernel": lambda v: v is None or type(v) is str,
    "draws": lambda v: v is None or (type(v) is int and 0 <= v < 2**63),
}
ANY = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12),
                st.sampled_from(["livepatch", "rr", "pct", "exhaustive", "full", "6.1"]),
                st.tuples(st.text(max_size=4)), st.lists(st.integers(), max_size=2))


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(sorted(SPEC_FIELDS)), value=st.one_of(ANY, wide(0, 2 * 10**8)))
def test_a_runspec_is_a_run_or_a_clear_error_naming_its_field(field, value):
    good = dict(model="livepatch", seed=0, strategy="exhaustive", start=20_000)
    try:
        RunSpec(**{**good, field: value})
    except (TypeError, ValueError) as exc:
        assert f"RunSpec.{field}" in str(exc) and not SPEC_FIELDS[field](value)
    else:
        assert SPEC_FIELDS[field](value), value
