"""The programs `lpemu bench` and benchmarks/ measure: small C programs
(base image and patch of each) compiled on first use into a private
temporary directory, so nothing depends on files outside the package.

Each section's module says which workload it runs and how; the figures
in README.md's performance section come from these very programs.
"""
from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

from emu.images.build import build_c
from emu.machine.layout import BASE_IMAGE, MODULE_BASE

#: Throughput: ~50 instructions per iteration with one call of a patched
#: function; the entry returns (a kernel exit) every `iters` iterations.
LOOP_C = """
volatile long sink;
long table[64];
volatile long released;

__attribute__((noinline)) long work(long x) { return (x * 7 + 3) ^ (x >> 2); }

long bench_entry(long iters)
{
    long acc = 0;
    for (long i = 0; i < iters; i++) {
        long a = table[i & 63], b = table[(i + 7) & 63];
        a = a * 3 + b; b ^= a >> 3; a += i; b -= a;
        a = (a << 2) ^ (b >> 1); b = b * 5 + 1;
        a += b >> 5; b ^= a << 1; a -= i >> 1;
        table[i & 63] = a; table[(i + 3) & 63] = b;
        acc += work(a ^ b);
        acc ^= acc >> 7;
    }
    sink = acc;
    return acc;
}

/* Keeps a transition pending: it sleeps inside a patched function. */
__attribute__((noinline)) long hold(long x)
{
    while (!released)
        lpemu_sleep(-1);
    return x;
}
long blocker_entry(long x) { long r = hold(x); sink = r; return r; }
"""

LOOP_PATCH_C = """
extern volatile long released;
__attribute__((noinline)) long work(long x) { return (x * 7 + 5) ^ (x >> 2); }
__attribute__((noinline)) long hold(long x)
{
    while (!released)
        lpemu_sleep(-1);
    return x + 1;
}
"""

#: Redirect cost: a loop of calls to target(); the kthread sleeps first (the
#: patch is switched meanwhile), passes a safe point (kGraft migrates it
#: there), sleeps again and then calls target() n times.
CALLS_C = """
volatile long sink;
volatile long released;

__attribute__((noinline)) long target(long x) { return x + sink; }

__attribute__((noinline)) long call_loop(long n)
{
    long acc = 0;
    for (long i = 0; i < n; i++)
        acc += target(i);
    return acc;
}

long calls_entry(long n, long first, long second)
{
    lpemu_sleep(first);
    lpemu_safe_point();
    lpemu_sleep(second);
    sink = call_loop(n);
    lpemu_exit(0);
}

__attribute__((noinline)) long hold(long x)
{
    while (!released)
        lpemu_sleep(-1);
    return x;
}
long blocker_entry(long x) { for (;;) { sink = hold(x); lpemu_safe_point(); } }
"""

CALLS_PATCH_C = """
extern volatile long sink;
extern volatile long released;
__attribute__((noinline)) long target(long x) { return x + sink + 1; }
__attribute__((noinline)) long hold(long x)
{
    while (!released)
        lpemu_sleep(-1);
    return x + 1;
}
"""

#: Stacks and scaling: each kernel entry goes `depth` frames deep, calls
#: the patched leaf() `loops` times at the bottom, passes a cond_resched()
#: there and returns to user. descend() is not a tail call (it adds to a
#: volatile after the call), so every level is a frame.
DEPTH_C = """
volatile long sink;
volatile long loops = 150;

__attribute__((noinline)) long leaf(long x) { return x * 3 + sink; }

__attribute__((noinline)) long descend(long d, long x)
{
    long r = 0;
    if (d <= 1) {
        for (long i = 0; i < loops; i++)
            r += leaf(x + i);
        lpemu_yield();
        return r;
    }
    r = descend(d - 1, x + 1);
    sink += r;
    return r + 1;
}

long scale_entry(long depth) { return descend(depth, 0); }

/* For the stack-check benchmark: asleep at the bottom of `depth` frames. */
__attribute__((noinline)) long sink_down(long d)
{
    long r;
    if (d <= 1) {
        lpemu_sleep(-1);
        return 0;
    }
    r = sink_down(d - 1);
    sink += r;
    return r + 1;
}
long sleeper_entry(long depth) { return sink_down(depth); }
"""

DEPTH_PATCH_C = """
extern volatile long sink;
__attribute__((noinline)) long leaf(long x) { return x * 3 + sink + 1; }
"""


class Workloads:
    """The compiled workloads (base image and patch image of each), built on
    first use into a private temporary directory."""

    SOURCES = {"loop": (LOOP_C, LOOP_PATCH_C, {"work", "hold"}),
               "calls": (CALLS_C, CALLS_PATCH_C, {"target", "hold"}),
               "depth": (DEPTH_C, DEPTH_PATCH_C, {"leaf"})}

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="lpemu-bench-")
        self._built: dict[str, tuple] = {}

    def get(self, name: str):
        """(base image, patch image, patched function names) of a workload."""
        if name not in self._built:
            base_src, patch_src, funcs = self.SOURCES[name]
            d = Path(self._tmp.name)
            (d / f"{name}.c").write_text('#include "lpemu.h"\n' + textwrap.dedent(base_src))
            (d / f"{name}_patch.c").write_text('#include "lpemu.h"\n' + textwrap.dedent(patch_src))
            base = build_c([d / f"{name}.c"], base=BASE_IMAGE, name="vmlinux")
            patch = build_c([d / f"{name}_patch.c"], base=MODULE_BASE, name=f"{name}_patch",
                            link_against=base, keep=set(funcs))
            self._built[name] = (base, patch, sorted(funcs))
        return self._built[name]

    def close(self) -> None:
        self._tmp.cleanup()
