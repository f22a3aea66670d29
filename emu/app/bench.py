"""`lpemu bench`: what a patch switch costs, and what the emulator costs.

run_bench() measures everything in one process and returns one JSON-able
dict: each target ratio with the raw figures behind it, measured in the
same run (absolute host times vary by +-15 % between runs on these
machines, ratios much less), the per-call cost of a redirect per model, and
the scaling tables (stop_machine pause, transition latency) as the number of
tasks and the stack depth grow. format_bench() renders it for a terminal,
write_scaling_plot() draws the scaling tables.

Every workload is a small C program compiled here, run on a fresh Machine;
nothing depends on files outside the package. Host times are the best of a
few repeats (the least disturbed by the rest of the system), each side of a
ratio measured the same way, interleaved.

The sections, in order, are SECTIONS: each is fn(result, ctx) and fills its
keys. The campaign figures (fuzz_runs_per_s, rss_growth) belong to the
campaign runner and are filled by its own section (see _campaign).
"""
from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from emu import __version__
from emu.engine import core
from emu.engine import unwind
from emu.images.build import build_c
from emu.machine.machine import Machine
from emu.machine.task import PATCHED, RunState
from emu.models import DEFAULT_MODELS

__all__ = ["run_bench", "format_bench", "write_scaling_plot", "TARGETS", "SECTIONS"]

#: name -> (comparison, bound): what `lpemu bench` checks.
TARGETS = {
    "redirect_ratio": ("<=", 0.05),
    "unwind_ratio": ("<=", 0.005),
    "throughput_ratio": (">=", 0.5),
    "fuzz_runs_per_s": (">=", 1000.0),
    "rss_growth": ("<=", 1.10),
}

# ---- workloads -----------------------------------------------------------------------------

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
    PATCH_BASE = 0x0100_0000       # emu.machine.MODULE_BASE: where the first module goes

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
            base = build_c([d / f"{name}.c"], base=0x400000, name="vmlinux")
            patch = build_c([d / f"{name}_patch.c"], base=self.PATCH_BASE, name=f"{name}_patch",
                            link_against=base, keep=set(funcs))
            self._built[name] = (base, patch, sorted(funcs))
        return self._built[name]

    def close(self) -> None:
        self._tmp.cleanup()


@dataclass
class Sizes:
    """How much work each measurement does (quick: a smoke run, not figures to quote)."""
    repeats: int = 5
    redirect_calls_c: int = 400_000
    redirect_calls_py: int = 20_000
    model_calls: int = 200_000
    unwind_tasks: int = 64
    unwind_reps_c: int = 400
    unwind_reps_py: int = 2
    throughput_instructions: int = 40_000_000
    raw_outer: int = 4_000
    scaling_tasks: tuple = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    scaling_depths: tuple = (1, 2, 4, 8, 16, 32)
    scaling_depth_tasks: int = 8
    scaling_offsets: tuple = (0, 1777, 3511, 5333, 7919)   # the patch is enabled at these offsets

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(repeats=1, redirect_calls_c=20_000, redirect_calls_py=2_000, model_calls=10_000,
                   unwind_tasks=8, unwind_reps_c=20, unwind_reps_py=1, throughput_instructions=1_000_000,
                   raw_outer=100, scaling_tasks=(1, 4, 16), scaling_depths=(1, 8), scaling_depth_tasks=2,
                   scaling_offsets=(0,))


@dataclass
class Context:
    """What the sections share: sizes, compiled workloads, progress reports."""
    quick: bool
    sizes: Sizes
    work: Workloads
    progress: object = None
    notes: list = field(default_factory=list)

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)


def _timed(fn) -> float:
    """Host seconds fn() takes, with the cyclic GC held off (its pauses land
    on whichever side of a ratio happens to allocate the millionth tuple)."""
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    finally:
        if gc_was:
            gc.enable()


# ---- redirect: C fast path and Python twin --------------------------------------------------

_SLEEP1, _SLEEP2 = 50, 300          # ticks before the safe point, and before the loop


def _calls_machine(ctx: Context, *, accel: str, model: str | None, blocker: bool, calls: int,
                   trace_entries: bool = True):
    """A machine whose kthread `caller` sleeps while `model` (None: no patch)
    switches the patch, then calls target() `calls` times and exits. With
    blocker, a second kthread sleeps inside the patched hold(), so the
    transition stays pending. Returns (machine, model object, caller)."""
    from emu.models import make_model
    from emu.kernel.patch import make_patch

    base, patch_img, funcs = ctx.work.get("calls")
    m = Machine(base, cpus=1, quantum=10_000_000, tick=1000, accel=accel, lockup_ticks=10**7)
    caller = m.add_task("caller", "calls_entry", (calls, _SLEEP1, _SLEEP2), kind="kthread")
    if blocker:
        m.add_task("blocker", "blocker_entry", (0,), kind="kthread")
    m.load(patch_img)
    if not trace_entries:
        m.engine.set_event_mask([k for k in range(64) if k != core.EV_ENTRY])
    mod = None
    if model is not None:
        mod = make_model(model, m)
        p = mod.add(make_patch(m, "bench", patch_img, funcs))
        m.at(1000, lambda: mod.enable(p))
    return m, mod, caller


def _run_calls(ctx: Context, **kw) -> dict:
    """Run _calls_machine up to the caller's loop, then time the loop.
    Returns host seconds, virtual instructions and the transition state."""
    m, mod, caller = _calls_machine(ctx, **kw)
    try:
        m.run(until=(_SLEEP1 + _SLEEP2 - 20) * m.tick)
        state = "none"
        if mod is not None:
            t = mod.transitions[-1] if mod.transitions else None
            state = "during" if t is not None and t.result == "pending" else (t.result if t else "none")
        t0 = m.now
        host = _timed(lambda: m.run(stop_when=lambda: caller.state is RunState.EXITED))
        if caller.state is not RunState.EXITED:
            raise RuntimeError("the bench caller did not finish")
        return {"host_s": host, "instructions": m.now - t0, "state": state,
                "dropped_events": m.engine.events_dropped}
    finally:
        m.engine.close()


def _per_call(ctx: Context, calls: int, **kw) -> dict:
    """Added host ns and virtual instructions per call of a redirected
    function: the patched loop against the same loop with no patch."""
    reps = ctx.sizes.repeats
    base, runs = [], []
    for _ in range(reps):          # interleaved, so drift hits both alike
        base.append(_run_calls(ctx, model=None, calls=calls, **{k: v for k, v in kw.items() if k != "model"}))
        runs.append(_run_calls(ctx, calls=calls, **kw))
    b = min(base, key=lambda r: r["host_s"])
    r = min(runs, key=lambda r: r["host_s"])
    return {
        "calls": calls,
        "state": r["state"],
        "entry_events": "on" if kw.get("trace_entries", True) else "off",
        "added_ns_per_call": round((r["host_s"] - b["host_s"]) / calls * 1e9, 2),
        "added_instructions_per_call": round((r["instructions"] - b["instructions"]) / calls, 3),
        "ns_per_call_patched": round(r["host_s"] / calls * 1e9, 2),
        "ns_per_call_unpatched": round(b["host_s"] / calls * 1e9, 2),
        "instructions_patched": r["instructions"],
        "instructions_unpatched": b["instructions"],
    }


def bench_redirect(result: dict, ctx: Context) -> None:
    """redirect_ratio: added host time of a redirected call, C / Python twin
    (immediate model, patch switched, every entry traced as usual)."""
    s = ctx.sizes
    ctx.say("redirect: C fast path")
    c = _per_call(ctx, s.redirect_calls_c, accel="c", model="immediate", blocker=False)
    ctx.say("redirect: Python twin")
    py = _per_call(ctx, s.redirect_calls_py, accel="python", model="immediate", blocker=False)
    ctx.say("redirect: C fast path, entry events off")
    c_quiet = _per_call(ctx, s.redirect_calls_c, accel="c", model="immediate", blocker=False,
                        trace_entries=False)
    result["redirect"] = {"c": c, "python": py, "c_untraced": c_quiet,
                          "in_guest_trampoline": _in_guest_trampoline(ctx)}
    result["redirect_ratio"] = _ratio(c["added_ns_per_call"], py["added_ns_per_call"])


def _in_guest_trampoline(ctx: Context) -> dict:
    """The floor to approach: the site is `jmp stub`, and the stub reads the
    task's patch state from guest memory and jumps to the old or the new
    code. Raw Unicorn, no hooks at all (so no virtual time either); added ns
    per call against the same loop with the NOP site."""
    from emu.images.asm import assemble

    base, patch_img, _ = ctx.work.get("calls")
    target, new, loop = base.functions["target"], patch_img.functions["target"], base.functions["call_loop"]
    n = ctx.sizes.redirect_calls_c
    state_at = 0x301000
    stub = assemble(f"""
stub:
    cmp byte ptr [{state_at:#x}], 0
    jne .Lnew
    jmp {target.site + 5:#x}
.Lnew:
    jmp {new.site + 5:#x}
driver:
    mov rdi, {n}
    call {loop.start:#x}
.Ldone:
    hlt
""", base=0x300000, name="stub")
    code = b"".join(seg.data for seg in stub.segments)
    hlt = next(a for a in stub.insn_starts() if code[a - stub.lo] == 0xF4)
    plain = jumped = math.inf
    for _ in range(ctx.sizes.repeats):
        plain = min(plain, _raw_stub_run(base, patch_img, stub, target.site, state_at, hlt, jump=False))
        jumped = min(jumped, _raw_stub_run(base, patch_img, stub, target.site, state_at, hlt, jump=True))
    return {"calls": n, "added_ns_per_call": round((jumped - plain) / n * 1e9, 2),
            "ns_per_call_plain": round(plain / n * 1e9, 2),
            "what": "raw Unicorn: site `jmp stub`, the stub tests the task's patch state in guest memory"}


def _raw_stub_run(base, patch_img, stub, site: int, state_at: int, hlt: int, *, jump: bool) -> float:
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    from unicorn.x86_const import UC_X86_REG_RSP

    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    for img in (base, patch_img, stub):
        for seg in img.segments:
            uc.mem_map(seg.addr, (len(seg.data) + 0xFFF) & ~0xFFF)
            uc.mem_write(seg.addr, seg.data)
    uc.mem_map(state_at, 0x1000)
    uc.mem_write(state_at, b"\x01")              # the task is PATCHED
    uc.mem_map(0x7000_0000, 0x10000)
    uc.reg_write(UC_X86_REG_RSP, 0x7000_F000)
    if jump:
        rel = stub.symbols["stub"] - (site + 5)
        uc.mem_write(site, b"\xe9" + rel.to_bytes(4, "little", signed=True))
    return _timed(lambda: uc.emu_start(stub.symbols["driver"], hlt))


def bench_models(result: dict, ctx: Context) -> None:
    """Per-call redirect overhead of the patched function per model, in
    virtual instructions and host ns (with the per-call entry event traced
    as by default, and without), while the transition is pending (another
    kthread sleeps inside a patched function) and after it completed.
    Immediate has no `during`: it completes at once."""
    out = {}
    for model in DEFAULT_MODELS:
        row = {}
        for phase, blocker in (("during", True), ("after", False)):
            if model == "immediate" and phase == "during":
                continue
            ctx.say(f"redirect per model: {model}, {phase} the transition")
            row[phase] = _per_call(ctx, ctx.sizes.model_calls, accel="c", model=model, blocker=blocker)
            quiet = _per_call(ctx, ctx.sizes.model_calls, accel="c", model=model, blocker=blocker,
                              trace_entries=False)
            row[phase]["added_ns_per_call_untraced"] = quiet["added_ns_per_call"]
        out[model] = row
    result["models"] = out


# ---- stack checks: one C call for many tasks, and the Python twin --------------------------

def _sleepers(ctx: Context, n: int, depth: int) -> Machine:
    """n user tasks asleep at the bottom of `depth` frames of sink_down()."""
    base, _, _ = ctx.work.get("depth")
    m = Machine(base, cpus=2, tick=10**9)
    for i in range(n):
        m.add_task(f"t{i}", "sleeper_entry", (depth,))
    m.run(stop_when=lambda: all(t.state is RunState.SLEEPING for t in m.tasks))
    return m


def bench_unwind(result: dict, ctx: Context) -> None:
    """unwind_ratio: a reliable-stack check of a task at depth 16, per task,
    on the path the models take (emu.models.stacks, as livepatch's
    try-complete pass and stop_machine's activeness check make it: the walk,
    then the check of every entry against the patched ranges): C (every task
    in one emu_check_stacks call, registers from the saved contexts) / the
    Python twin (registers through the binding, the stack copied,
    emu.engine.unwind.check_stack per task)."""
    from emu.models.stacks import StackChecks

    s = ctx.sizes
    depth = 16
    ctx.say(f"stack checks: {s.unwind_tasks} tasks at depth {depth}")
    m = _sleepers(ctx, s.unwind_tasks, depth)
    try:
        checked = ((m.function("leaf").start, m.function("leaf").end),)
        checks = StackChecks(m)
        out = {"depth": depth, "tasks_per_call": len(m.tasks)}
        for kind in ("orc", "fp"):
            def check(accel, kind=kind):
                return checks.check(checked, kind=kind, max_entries=99, reliable=True, accel=accel)

            res, twin = check("c"), check("python")
            if [res[i] for i in range(len(res))] != twin.checks:
                raise RuntimeError(f"{kind}: the C stack check and its Python twin disagree")
            if res.failed or twin.failed:
                raise RuntimeError(f"{kind}: a bench stack failed its check: {twin.checks[0]}")

            def c_run(check=check):
                def go():
                    for _ in range(s.unwind_reps_c):
                        # what a model reads: how many failed (failing() only then)
                        if check("c").failed:
                            raise RuntimeError("a bench stack failed its check")
                return _timed(go) / (s.unwind_reps_c * len(m.tasks))

            def py_run(check=check):
                def go():
                    for _ in range(s.unwind_reps_py):
                        if check("python").failed:
                            raise RuntimeError("a bench stack failed its check")
                return _timed(go) / (s.unwind_reps_py * len(m.tasks))

            c_s = py_s = math.inf
            for _ in range(s.repeats):
                c_s = min(c_s, c_run())
                py_s = min(py_s, py_run())
            out[kind] = {"c_ns_per_stack": round(c_s * 1e9, 1), "python_ns_per_stack": round(py_s * 1e9, 1),
                         "entries_per_stack": len(twin[0].entries), "ratio": _ratio(c_s, py_s)}
        out["unwinder"] = m.unwinder
        result["unwind"] = out
        result["unwind_ratio"] = out[m.unwinder]["ratio"]
    finally:
        m.engine.close()


# ---- throughput: the Machine against raw Unicorn -----------------------------------------------

_ITERS = 100          # loop iterations per kernel entry


def _raw_loop(ctx: Context, outer: int, *, count: bool = False) -> tuple[float, int]:
    """Raw Unicorn (the binding, no hooks, no patch) running bench_entry(100)
    `outer` times from a driver: (host seconds, instructions retired when
    count, else 0)."""
    from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_MODE_64, Uc
    from unicorn.x86_const import UC_X86_REG_RSP

    from emu.images.asm import assemble

    base, _, _ = ctx.work.get("loop")
    driver = assemble(f"""
driver:
    mov rbx, {outer}
.Lagain:
    mov rdi, {_ITERS}
    call {base.functions['bench_entry'].start:#x}
    dec rbx
    jnz .Lagain
    hlt
""", base=0x300000, name="driver")
    code = b"".join(seg.data for seg in driver.segments)
    hlt = next(a for a in driver.insn_starts() if code[a - driver.lo] == 0xF4)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    for img in (base, driver):
        for seg in img.segments:
            uc.mem_map(seg.addr, (len(seg.data) + 0xFFF) & ~0xFFF)
            uc.mem_write(seg.addr, seg.data)
    uc.mem_map(0x7000_0000, 0x10000)
    uc.reg_write(UC_X86_REG_RSP, 0x7000_F000)
    n = [0]
    if count:
        def tick(*_):
            n[0] += 1
        uc.hook_add(UC_HOOK_CODE, tick)
    return _timed(lambda: uc.emu_start(driver.symbols["driver"], hlt)), n[0]


def _throughput_machine(ctx: Context, *, trace_entries: bool, quantum: int):
    """8 user tasks running bench_entry(100) on 2 CPUs, a kthread asleep in
    the patched hold(): the livepatch transition stays pending."""
    from emu.models import make_model
    from emu.kernel.patch import make_patch

    base, patch_img, funcs = ctx.work.get("loop")
    m = Machine(base, cpus=2, quantum=quantum, tick=1000)
    # the blocker first: it is asleep in hold() before the transition starts
    m.add_task("blocker", "blocker_entry", (0,), kind="kthread")
    for i in range(8):
        m.add_task(f"worker{i}", "bench_entry", (_ITERS,))
    m.load(patch_img)
    if not trace_entries:
        m.engine.set_event_mask([k for k in range(64) if k != core.EV_ENTRY])
    mod = make_model("livepatch", m)
    p = mod.add(make_patch(m, "bench", patch_img, funcs))
    m.at(20_000, lambda: mod.enable(p))
    # The text changes wait for every CPU to end a slice (text_poke_bp's syncs).
    m.run(until=m.seconds(20), stop_when=lambda: mod.transition is not None
          and mod.transition.started_at is not None)
    t = mod.transition
    if t is None or t.started_at is None:
        raise RuntimeError("the livepatch transition of the throughput bench did not start")
    return m, mod


def _machine_rate(ctx: Context, *, trace_entries: bool, quantum: int) -> dict:
    m, mod = _throughput_machine(ctx, trace_entries=trace_entries, quantum=quantum)
    try:
        t0 = m.now
        host = _timed(lambda: m.run(until=t0 + ctx.sizes.throughput_instructions))
        pending = mod.transition is not None
        workers = [t for t in m.tasks if t.name.startswith("worker")]
        patched = sum(t.patch_state == PATCHED for t in workers)
        return {"instructions": m.now - t0, "host_s": round(host, 6),
                "instructions_per_s": (m.now - t0) / host, "transition_pending": pending,
                "workers_switched": patched, "events": len(m.trace)}
    finally:
        m.engine.close()


def bench_throughput(result: dict, ctx: Context) -> None:
    """throughput_ratio: instructions/s of the loop on the Machine (8 tasks, 2
    CPUs, livepatch transition pending) / raw Unicorn on one task."""
    s = ctx.sizes
    _, per_outer1 = _raw_loop(ctx, 1, count=True)
    _, per_outer2 = _raw_loop(ctx, 2, count=True)
    per_outer = per_outer2 - per_outer1          # the driver's own few instructions cancel
    quantum = 100_000
    raw = best = best_q = None
    for _ in range(s.repeats):
        ctx.say("throughput: raw Unicorn")
        host, _ = _raw_loop(ctx, s.raw_outer)
        rate = s.raw_outer * per_outer / host
        raw = rate if raw is None else max(raw, rate)
        ctx.say("throughput: Machine")
        r = _machine_rate(ctx, trace_entries=False, quantum=quantum)
        best = r if best is None or r["instructions_per_s"] > best["instructions_per_s"] else best
        r = _machine_rate(ctx, trace_entries=True, quantum=quantum)
        best_q = r if best_q is None or r["instructions_per_s"] > best_q["instructions_per_s"] else best_q
    result["throughput"] = {
        "raw_instructions_per_s": round(raw),
        "instructions_per_iteration": per_outer / _ITERS,
        "machine": {**best, "instructions_per_s": round(best["instructions_per_s"]),
                    "entry_events": "off (Engine.set_event_mask)"},
        "machine_traced": {**best_q, "instructions_per_s": round(best_q["instructions_per_s"]),
                           "entry_events": "on", "ratio": _ratio(best_q["instructions_per_s"], raw)},
        "config": {"tasks": 8, "cpus": 2, "quantum": quantum, "model": "livepatch",
                   "iterations_per_kernel_entry": _ITERS},
    }
    result["throughput_ratio"] = _ratio(best["instructions_per_s"], raw)


# ---- scaling: stop_machine pause and transition latency -----------------------------------------



def _scale_start(tasks: int) -> int:
    """When to enable the patch: once every task has run a kernel entry or
    so (2 CPUs, about 3000 instructions an entry), so that what the models
    meet is the steady state, not tasks that have not started yet."""
    return 20_000 + 1500 * tasks


def _scale_run(ctx: Context, model: str, tasks: int, depth: int, at: int) -> dict:
    """One transition of the leaf() patch under model, enabled at `at`, with
    `tasks` user tasks `depth` frames deep: its figures in virtual
    instructions."""
    from emu.machine.machine import EV_PATCH_STATE
    from emu.models import make_model
    from emu.kernel.patch import make_patch

    base, patch_img, funcs = ctx.work.get("depth")
    m = Machine(base, cpus=2, quantum=1000, tick=1000)
    try:
        for i in range(tasks):
            m.add_task(f"t{i}", "scale_entry", (depth,))
        m.load(patch_img)
        mod = make_model(model, m)
        p = mod.add(make_patch(m, "bench", patch_img, funcs))
        m.at(at, lambda: mod.enable(p))

        def done():
            return bool(mod.transitions) and mod.transitions[-1].result != "pending"

        m.run(until=at + m.seconds(40), stop_when=done)
        t = mod.transitions[-1]
        row = {"model": model, "tasks": tasks, "depth": depth, "result": t.result, "attempts": t.attempts,
               "latency": t.latency}
        if model == "stop_machine":
            pauses = [b - a for a, b in t.pauses]
            row["pause"] = pauses[-1] if pauses else None
            row["pause_total"] = sum(pauses)
            if m.last_stop_machine is not None:
                requested, stopped, _ = m.last_stop_machine
                row["stop_wait"] = stopped - requested
        else:
            switches = [e[0] for e in m.trace
                        if e[1] == EV_PATCH_STATE and e[2] >= 0 and e[3] == PATCHED and e[0] >= t.requested_at]
            row["last_switch"] = max(switches) - t.requested_at if switches else None
        return row
    finally:
        m.engine.close()


def bench_scaling(result: dict, ctx: Context) -> None:
    """stop_machine pause and livepatch/kGraft transition latency (virtual
    instructions) as the number of tasks grows (depth 8) and as the stack
    depth grows."""
    s = ctx.sizes
    by_tasks, by_depth = [], []
    for n in s.scaling_tasks:
        ctx.say(f"scaling: {n} tasks")
        by_tasks.append(_scale_row(ctx, n, 8))
    for d in s.scaling_depths:
        ctx.say(f"scaling: depth {d}")
        by_depth.append(_scale_row(ctx, s.scaling_depth_tasks, d))
    result["scaling"] = {
        "unit": "virtual instructions", "instructions_per_second": 100 * 1000,
        "workload": "user tasks, each kernel entry `depth` frames deep calling the patched leaf() 150 "
                    "times, then cond_resched() and a return to user; 2 CPUs, quantum 1000, voluntary "
                    "preemption; each figure the mean of runs enabling the patch at a few start times",
        "by_tasks": by_tasks, "by_depth": by_depth,
    }


def _scale_row(ctx: Context, tasks: int, depth: int) -> dict:
    """The mean over the start offsets of each model's figures (None when a
    run did not complete), and each model's results."""
    row = {"tasks": tasks, "depth": depth, "starts": len(ctx.sizes.scaling_offsets)}
    fields = {"stop_machine": ("pause", "stop_wait", "latency"),
              "livepatch": ("latency", "last_switch"), "kgraft": ("latency", "last_switch")}
    names = {"stop_wait": "wait"}
    for model, keys in fields.items():
        runs = [_scale_run(ctx, model, tasks, depth, _scale_start(tasks) + off)
                for off in ctx.sizes.scaling_offsets]
        for key in keys:
            vals = [r.get(key) for r in runs]
            row[f"{model}_{names.get(key, key)}"] = \
                None if any(v is None for v in vals) else round(sum(vals) / len(vals))
        row[f"{model}_results"] = sorted({r["result"] for r in runs})
    return row


# ---- the campaign figures ----------------------------------------------------------------------

def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _campaign(result: dict, ctx: Context) -> None:
    """fuzz_runs_per_s: runs per second on one core of the seed scenario
    (its four models in turn, the runner a campaign worker uses, one
    process); rss_growth: resident memory after `many` runs in that process
    over after `few` (100 000 over 1 000; quick: 500 over 100)."""
    from emu.app import demo
    from emu.runs import scenario
    from emu.runs.fuzz import Runner
    runner = Runner(scenario.build(scenario.load(demo.VARIANTS["bar+baz"])))
    runner.cycle()
    few, many = (100, 500) if ctx.quick else (1_000, 100_000)
    models = demo.DEMO_MODELS
    rss_few = None
    t0 = time.perf_counter()
    t_few = 0.0
    for i in range(many):
        runner.execute(runner.plan(models[i % len(models)], i))
        if i + 1 == few:
            rss_few, t_few = _rss_kib(), time.perf_counter() - t0
    elapsed = time.perf_counter() - t0
    rss_many = _rss_kib()
    runner.close()
    result["fuzz_runs_per_s"] = round(many / elapsed, 1)
    result["rss_growth"] = round(rss_many / rss_few, 3)
    result["campaign"] = {"scenario": "examples/seed/scenario.toml", "models": list(models),
                          "runs": many, "seconds": round(elapsed, 2),
                          "runs_per_s_first": round(few / t_few, 1) if t_few else None,
                          "rss_kib_after": {str(few): rss_few, str(many): rss_many}}


#: The sections run_bench runs, in order: name -> fn(result, ctx).
SECTIONS = {
    "redirect": bench_redirect,
    "unwind": bench_unwind,
    "throughput": bench_throughput,
    "models": bench_models,
    "scaling": bench_scaling,
    "campaign": _campaign,
}


# ---- the whole run ----------------------------------------------------------------------------

def _ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 6)


def _meets(name: str, value) -> bool | None:
    if value is None:
        return None
    op, bound = TARGETS[name]
    return value <= bound if op == "<=" else value >= bound


def run_bench(*, quick: bool = False, sections=None, progress=None) -> dict:
    """Measure everything in one run; return one JSON-able dict.

    Keys: each ratio of TARGETS (None when not measured), `meets` (ratio ->
    True/False/None), the raw figures behind each ratio under `redirect`,
    `unwind`, `throughput`, the per-model redirect costs under `models`, the
    scaling tables under `scaling`, and `host`/`seconds`. quick=True does
    little work (a smoke run: the figures are not worth quoting). sections:
    names from SECTIONS to run (default all). progress: fn(text) called as
    each measurement starts. Raises BuildError when gcc is missing."""
    names = list(SECTIONS) if sections is None else list(sections)
    for name in names:
        if name not in SECTIONS:
            raise ValueError(f"unknown bench section {name!r} (one of {', '.join(SECTIONS)})")
    ctx = Context(quick, Sizes.quick() if quick else Sizes(), Workloads(), progress)
    result = {
        "version": __version__,
        "quick": quick,
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "processor": platform.processor() or None},
        "targets": {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()},
        "redirect_ratio": None,
        "unwind_ratio": None,
        "throughput_ratio": None,
        # Filled by the campaign runner's section (see _campaign).
        "fuzz_runs_per_s": None,
        "rss_growth": None,
    }
    t = time.perf_counter()
    try:
        for name in names:
            SECTIONS[name](result, ctx)
    finally:
        ctx.work.close()
    result["meets"] = {k: _meets(k, result.get(k)) for k in TARGETS}
    result["seconds"] = round(time.perf_counter() - t, 1)
    return result


# ---- the table and the plot ------------------------------------------------------------------

def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        text = f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    elif isinstance(v, int):
        text = f"{v:,}"
    else:
        text = str(v)
    return f"{text} {unit}".rstrip()


def format_bench(result: dict, *, width: int = 110) -> str:
    """The bench result as plain-text tables (rich, no colour)."""
    import io

    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=width, color_system=None, force_terminal=False)

    t = Table(title="Targets (ratios measured in this run)", title_justify="left")
    for col in ("figure", "value", "target", "met", "measured from"):
        t.add_column(col)
    red, unw, thr = result.get("redirect", {}), result.get("unwind", {}), result.get("throughput", {})
    basis = {
        "redirect_ratio": red and f"C {_fmt(red['c']['added_ns_per_call'], 'ns')} / Python twin "
                                  f"{_fmt(red['python']['added_ns_per_call'], 'ns')} added per call",
        "unwind_ratio": unw and (lambda u: f"{unw['unwinder']}, depth {unw['depth']}: C "
                                           f"{_fmt(u['c_ns_per_stack'], 'ns')} / Python "
                                           f"{_fmt(u['python_ns_per_stack'], 'ns')} per stack")(unw[unw["unwinder"]]),
        "throughput_ratio": thr and f"Machine {_fmt(thr['machine']['instructions_per_s'] / 1e6)} M/s / raw "
                                    f"{_fmt(thr['raw_instructions_per_s'] / 1e6)} M/s",
    }
    for name, (op, bound) in TARGETS.items():
        t.add_row(name, _fmt(result.get(name)), f"{op} {bound}", _fmt(result.get("meets", {}).get(name)),
                  basis.get(name) or "")
    con.print(t)

    if red:
        con.print(f"redirect, entry events off: C {_fmt(red['c_untraced']['added_ns_per_call'], 'ns')} added "
                  f"per call; in-guest `jmp` trampoline (raw Unicorn): "
                  f"{_fmt(red['in_guest_trampoline']['added_ns_per_call'], 'ns')}")
    if thr:
        q = thr["machine_traced"]
        con.print(f"throughput with every entry traced: {_fmt(q['instructions_per_s'] / 1e6)} M/s "
                  f"(ratio {_fmt(q['ratio'])}); config {thr['config']}")

    models = result.get("models")
    if models:
        t = Table(title="Redirect cost of a patched function, per call (C fast path)", title_justify="left")
        for col in ("model", "phase", "added instructions", "added host ns", "ns, entry events off", "state"):
            t.add_column(col)
        for model, phases in models.items():
            for phase, r in phases.items():
                t.add_row(model, phase, _fmt(r["added_instructions_per_call"]), _fmt(r["added_ns_per_call"]),
                          _fmt(r.get("added_ns_per_call_untraced")), r["state"])
        con.print(t)

    sc = result.get("scaling")
    if sc:
        for key, label in (("by_tasks", "tasks (depth 8)"), ("by_depth", "stack depth")):
            rows = sc[key]
            if not rows:
                continue
            t = Table(title=f"Scaling with {label}, virtual instructions (1 s = "
                            f"{sc['instructions_per_second']:,})", title_justify="left")
            for col in ("tasks", "depth", "stop_machine pause", "wait for stop", "livepatch latency",
                        "last switch", "kgraft latency", "last migration"):
                t.add_column(col, justify="right")
            for r in rows:
                t.add_row(str(r["tasks"]), str(r["depth"]), _fmt(r["stop_machine_pause"]),
                          _fmt(r["stop_machine_wait"]), _fmt(r["livepatch_latency"]),
                          _fmt(r["livepatch_last_switch"]), _fmt(r["kgraft_latency"]),
                          _fmt(r["kgraft_last_switch"]))
            con.print(t)
    con.print(f"({result.get('seconds', '?')} s{', quick run: not figures to quote' if result.get('quick') else ''})")
    return buf.getvalue().rstrip() + "\n"


def write_scaling_plot(result: dict, path) -> Path:
    """Draw the scaling tables (two panels: against tasks, against depth) to
    path; the suffix (.png or .svg) picks the format. Returns the path.
    Raises ValueError when the result has no scaling tables."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"{path}: the plot is written as .png or .svg")
    fig = scaling_figure(result)
    try:
        fig.savefig(path)
    finally:
        fig.clear()
    return path


def _median_spread(value) -> tuple[float, float, float] | None:
    """(median, low, high) of a figure: one number (no spread), or a list of
    samples over start points (low and high: the 10th and 90th percentiles)."""
    if isinstance(value, (int, float)):
        return (value, value, value) if value else None
    samples = sorted(v for v in value or () if v)
    if not samples:
        return None

    def pct(q):
        return samples[min(len(samples) - 1, int(q * (len(samples) - 1) + 0.5))]
    return statistics.median(samples), pct(0.1), pct(0.9)


def scaling_figure(result: dict):
    """The scaling plot as a matplotlib Figure (Agg canvas, no pyplot state).
    A figure given as a list of samples over start points is drawn as its
    median with the 10-90% band shaded; one number as a point. The 1 s
    retry period (livepatch's retry, kGraft's check) is a dashed line.
    Raises ValueError when the result has no scaling tables."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sc = result.get("scaling")
    if not sc or not (sc.get("by_tasks") or sc.get("by_depth")):
        raise ValueError("the bench result has no scaling tables (run the 'scaling' section)")
    series = (("stop_machine_pause", "stop_machine pause", "tab:red", "-"),
              ("stop_machine_wait", "wait for stop_machine", "tab:red", ":"),
              ("livepatch_latency", "livepatch latency", "tab:blue", "-"),
              ("livepatch_last_switch", "livepatch: last task switched", "tab:blue", ":"),
              ("kgraft_latency", "kGraft latency", "tab:green", "-"),
              ("kgraft_last_switch", "kGraft: last task migrated", "tab:green", ":"))
    second = sc["instructions_per_second"]
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    spread = False
    for ax, key, xname, label in ((axes[0], "by_tasks", "tasks", "tasks (stack depth 8)"),
                                  (axes[1], "by_depth", "depth", "stack depth (frames)")):
        rows = sc.get(key) or []
        xs = [r[xname] for r in rows]
        for field_, name, colour, style in series:
            pts = [(x, m) for x, r in zip(xs, rows) if (m := _median_spread(r.get(field_)))]
            if not pts:
                continue
            x = [p[0] for p in pts]
            ax.plot(x, [p[1][0] for p in pts], style, marker="o", ms=3, color=colour, label=name)
            if any(lo != hi for _, (_, lo, hi) in pts):
                spread = True
                ax.fill_between(x, [p[1][1] for p in pts], [p[1][2] for p in pts], color=colour, alpha=0.15,
                                linewidth=0)
        ax.axhline(second, color="black", linestyle="--", linewidth=0.8, alpha=0.6)
        ax.annotate("1 s: livepatch retry, kGraft check", (0, second), xycoords=("axes fraction", "data"),
                    xytext=(3, 2), textcoords="offset points", fontsize=7, va="bottom")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"virtual instructions (1 s = {second:,})")
        ax.grid(True, which="major", alpha=0.3)
        if xs:
            ax.set_xticks(xs, [str(x) for x in xs])
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("What a patch switch costs as the system grows" +
                 (" (median over start points, 10-90% shaded)" if spread else ""))
    return fig
