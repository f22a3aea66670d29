"""Which argument registers a function takes (emu/images/argregs.py), held
to gcc: for generated C functions, the registers live at entry are exactly
those of the parameters the body uses (every parameter at -O0, which spills
them all), and a caller that passes its parameters on takes at least those
its callee uses."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.images import argregs

NAMES = "abcdef"


def takes(img, name):
    fns = img.functions

    def callee(addr):
        for fn in fns.values():
            if fn.start == addr:
                return takes(img, fn.name)
        return None
    fn = fns[name]
    return argregs.live_arguments(img.read(fn.start, fn.end - fn.start), fn.start, fn.end, callee=callee)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 6), data=st.data(), opt=st.sampled_from(["-O0", "-O1", "-O2"]),
       callee_first=st.booleans())
def test_the_live_registers_are_the_parameters_used(compile_c, n, data, opt, callee_first):
    used = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=0, max_size=n)))
    params = ", ".join(f"long {NAMES[i]}" for i in range(n))
    body = " ^ ".join(f"({NAMES[i]} * {i + 3})" for i in used) or "sink"
    # a callee taking the used ones in another order, called or tail-called
    callee = f"__attribute__((noinline)) long g({params}) {{ return {body} + sink; }}\n"
    args = ", ".join(NAMES[i] for i in reversed(range(n)))
    caller = f"__attribute__((noinline)) long h({params}) {{ return g({args}){' + 1' if callee_first else ''}; }}\n"
    img = compile_c("volatile long sink;\n" + callee + caller, cflags=[opt])
    want = frozenset(range(n)) if opt == "-O0" else frozenset(used)   # -O0 spills every parameter
    assert takes(img, "g") == want
    # h passes its parameter i as g's parameter n-1-i: it takes at least
    # those g uses, and at most its own (moving one into place reads it)
    got = takes(img, "h")
    assert frozenset(n - 1 - i for i in used) <= got <= frozenset(range(n)), (params, body, args, got)


def test_a_hypercall_takes_rdi_rsi_rdx_and_unknown_calls_take_everything(compile_c):
    img = compile_c("""
    long (*hook)(long);
    __attribute__((noinline)) long obs(long a, long b, long c) { lpemu_observe(7, 0); return 0; }
    __attribute__((noinline)) long through(long a) { return hook(1); }
    __attribute__((noinline)) long passes(long a, long b) { return hook(a); }
    """)
    assert takes(img, "obs") == frozenset()            # rdi, rsi set before the syscall
    # a call through a pointer may take all six: rdi is set for it, the rest may be
    assert takes(img, "through") == argregs.ALL - {0}
    assert takes(img, "passes") == argregs.ALL


@pytest.mark.parametrize("code", [b"", b"\xff\xff", b"\x0f\x0b", bytes(range(64))])
def test_hostile_code_never_crashes_and_errs_towards_all(code):
    got = argregs.live_arguments(code, 0x1000, 0x1000 + max(len(code), 1))
    assert got <= argregs.ALL
