"""The redirect with hostile tables: whatever the stacks of replacements,
the transition flags, the task states and the site bytes hold, the C fast
path and its Python twin give the same run (the same events, the same fault)
and the host process survives."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.engine import core
from emu.errors import GuestFault
from emu.machine.machine import Machine

SRC = """
volatile long zero;
__attribute__((noinline)) long hot(long x) { return x + 1 + zero; }
__attribute__((noinline)) long other(long x) { return x + 100 + zero; }
long loop(long n) { long s = 0; for (int i = 0; i < 20; i++) s += hot(i); lpemu_observe(1, s); return s; }
"""


def targets(image):
    hot, other = image.functions["hot"], image.functions["other"]
    return st.sampled_from([0, hot.start, hot.start + 5, other.start, other.start + 5, other.start + 1,
                            other.end, 0x10, 0xdead0000, 2 ** 63, 2 ** 64 - 1])


def run(image, accel, entries, states, site_bytes, trampoline_call):
    m = Machine(image, cpus=2, quantum=97, accel=accel)
    for i in range(3):
        m.add_task(f"t{i}", "loop", (i,))
    m.start()
    hot = m.function("hot")
    m.set_entries(hot, entries)
    for task, state in zip(m.tasks, states):
        m.set_patch_state(task, state)
    if trampoline_call:
        rel = m.runtime.trampoline(m.site(hot)) - (hot.site + 5)
        m.text_write(hot.site, b"\xe8" + rel.to_bytes(4, "little", signed=True))
    elif site_bytes is not None:
        m.text_write(hot.site, site_bytes)
    fault = None
    try:
        m.run(until=30_000)
    except GuestFault as exc:
        fault = (exc.task, exc.kind, exc.rip)
    trace = [e for e in m.trace if e.kind in (core.EV_ENTRY, core.EV_OBSERVE, core.EV_TORN, core.EV_RETURN,
                                              core.EV_UNWOUND, core.EV_RET_UNTRACED)]
    m.engine.close()
    return trace, fault


@st.composite
def tables(draw, image):
    entry = st.tuples(targets(image), st.integers(0, 5), st.booleans(), st.booleans())
    entries = draw(st.lists(entry, max_size=5))
    states = draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=3, max_size=3))
    site = draw(st.one_of(st.none(), st.binary(min_size=5, max_size=5)))
    return entries, states, site, draw(st.booleans())


def test_c_and_python_redirects_agree_on_hostile_tables(compile_c):
    image = compile_c(SRC)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(tables(image))
    def check(case):
        entries, states, site, call = case
        c = run(image, "c", entries, states, site, call)
        py = run(image, "python", entries, states, site, call)
        assert c == py

    check()
