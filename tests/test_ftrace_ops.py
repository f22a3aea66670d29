"""ftrace's ops and the kernel.ftrace_enabled sysctl (emu/kernel/ftrace.py),
held on generated sequences of operations to the kernel's rules
(kernel/trace/ftrace.c):

- a site calls the trampoline iff ftrace is enabled and some ops uses it,
  and is the 5-byte NOP otherwise;
- a second IP-modifying ops on a function is refused (-EBUSY), and so is a
  PERMANENT ops while ftrace_enabled is off, and turning ftrace_enabled off
  while a PERMANENT ops is registered; a refusal changes nothing;
- ftrace calls an ops' handler exactly while it is registered and ftrace
  is enabled (what a tracer records)."""
import pytest
from hypothesis import given, settings, strategies as st

from emu.errors import Busy
from emu.images.build import build_c
from emu.images.image import FENTRY_NOP
from emu.kernel.ftrace import Ftrace, Ops
from emu.machine.machine import Machine

BASE = """
#include "lpemu.h"
volatile long zero;
__attribute__((noinline)) long f0(void) { return zero; }
__attribute__((noinline)) long f1(void) { return zero + 1; }
__attribute__((noinline)) long f2(void) { return zero + 2; }
long caller(long x) { f0(); f1(); f2(); lpemu_sleep(1); return 0; }
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    src = tmp_path_factory.mktemp("ftrace") / "base.c"
    src.write_text(BASE)
    return build_c([src], base=0x400000, name="base")


STEP = st.one_of(
    st.tuples(st.just("register"), st.integers(0, 3), st.sets(st.integers(0, 2), min_size=1)),
    st.tuples(st.just("unregister"), st.integers(0, 3), st.just(frozenset())),
    st.tuples(st.just("sysctl"), st.booleans(), st.just(frozenset())))


@given(steps=st.lists(STEP, max_size=14))
@settings(max_examples=40, deadline=None)
def test_ops_and_the_sysctl_follow_the_kernel(base, steps):
    m = Machine(base, cpus=1, quantum=300)
    m.add_task("t", "caller")
    ft = Ftrace(m)
    fns = [m.function(f"f{i}") for i in range(3)]
    ops = [Ops("tracer"), Ops("kprobe-post", ipmodify=True), Ops("klp", ipmodify=True, permanent=True),
           Ops("perm-tracer", permanent=True)]
    # the reference: who uses what, and whether ftrace is on
    users = {i: set() for i in range(3)}
    enabled = True
    calling_at = []             # (clock, index of each ops ftrace calls then)
    m.run(until=m.ticks(2))
    for kind, arg, funcs in steps:
        before = {k: list(v) for k, v in ft.users.items()}
        if kind == "sysctl":
            permanent_in = any(ops[j].permanent for i in users for j in users[i])
            refuse = enabled and not arg and permanent_in
            try:
                update = ft.set_enabled(arg)
            except Busy:
                assert refuse
                assert ft.users == before and ft.enabled == enabled
            else:
                assert not refuse
                enabled = arg
                m.spawn(update)
        elif kind == "register":
            o = ops[arg]
            owners = {j for i in funcs for j in users[i] if ops[j].ipmodify and j != arg}
            refuse = (o.permanent and not enabled) or (o.ipmodify and bool(owners))
            try:
                update = ft.register(o, [fns[i] for i in sorted(funcs)])
            except Busy:
                assert refuse
                assert ft.users == before
            else:
                assert not refuse
                for i in funcs:
                    users[i].add(arg)
                m.spawn(update)
        else:
            m.spawn(ft.unregister(ops[arg]))
            for i in users:
                users[i].discard(arg)
        calling_at.append((m.now, {j for i in users for j in users[i]} if enabled else set()))
        m.run(until=m.now + m.ticks(3))          # the text update and its syncs
        for i, fn in enumerate(fns):
            call = enabled and bool(users[i])
            assert (ft.site_bytes(fn) != FENTRY_NOP) == call, (fn.name, users[i], enabled)
            if call:
                assert ft.site_bytes(fn) == ft.call_bytes(fn)
        assert ft.enabled == enabled
    for clock, calling in calling_at:
        for j, o in enumerate(ops):
            assert o.called_at(clock) == (j in calling), (clock, o, calling)


def test_a_refused_sysctl_write_leaves_ftrace_on_and_the_sites_calling(base):
    m = Machine(base, cpus=1)
    m.add_task("t", "caller")
    ft = Ftrace(m)
    klp = Ops("klp", ipmodify=True, permanent=True)
    m.spawn(ft.register(klp, [m.function("f0")]))
    m.run(until=m.ticks(3))
    with pytest.raises(Busy, match="permanent"):
        ft.set_enabled(False)
    assert ft.enabled and ft.site_bytes(m.function("f0")) == ft.call_bytes(m.function("f0"))
    m.spawn(ft.unregister(klp))
    m.spawn(ft.set_enabled(False))       # nothing permanent left: it goes off
    m.run(until=m.ticks(6))
    assert not ft.enabled and ft.site_bytes(m.function("f0")) == FENTRY_NOP
    with pytest.raises(Busy, match="ftrace_enabled is 0"):
        ft.register(klp, [m.function("f0")])
