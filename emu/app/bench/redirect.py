"""The redirect_ratio section: the added host time of a redirected call,
the C fast path against the Python twin (immediate model, patch switched,
every entry traced as usual); and redirect_floor_ratio: the C path with
its per-call events off (the redirect alone) against the floor an in-guest
`jmp` trampoline gives in raw Unicorn; the same trampoline on a
core.Engine (in_guest_trampoline.on_the_engine) shows what the engine's own
block hook costs it. per_call is the measure the models section
(models.py) shares.

Host times here are CPU time (measure.cpu_time): the loops are short,
their differences small. Workload: workloads.CALLS_C, a kthread that
sleeps while the patch is switched and then calls target() in a loop.
"""
from __future__ import annotations

import math

from emu.app.bench.measure import Context, cpu_time, ratio, timed
from emu.engine import core
from emu.machine.machine import Machine
from emu.machine.task import RunState

SLEEP1, SLEEP2 = 50, 300          # ticks before the safe point, and before the loop


#: The per-call event kinds: a traced entry, its arguments, its return.
CALL_EVENTS = (core.EV_ENTRY, core.EV_ARGS, core.EV_ARGS_HI, core.EV_RETURN)


def calls_machine(ctx: Context, *, accel: str, model: str | None, blocker: bool, calls: int,
                   trace_entries: bool = True, trace_calls: bool = True):
    """A machine whose kthread `caller` sleeps while `model` (None: no patch)
    switches the patch, then calls target() `calls` times and exits. With
    blocker, a second kthread sleeps inside the patched hold(), so the
    transition stays pending. trace_entries=False masks the entry events;
    trace_calls=False every per-call event (CALL_EVENTS: with no return
    events the returns are not diverted either), which leaves the redirect
    alone. Returns (machine, model object, caller)."""
    from emu.models import make_model
    from emu.kernel.patch import make_patch

    base, patch_img, funcs = ctx.work.get("calls")
    # (the timed run goes until the caller exits: its bound on the events it
    # keeps must hold every call's, 4 a call with the entries traced)
    m = Machine(base, cpus=1, quantum=10_000_000, tick=1000, accel=accel, lockup_ticks=10**7,
                max_events=8 * calls + 100_000)
    caller = m.add_task("caller", "calls_entry", (calls, SLEEP1, SLEEP2), kind="kthread")
    if blocker:
        m.add_task("blocker", "blocker_entry", (0,), kind="kthread")
    m.load(patch_img)
    if not trace_calls:
        m.engine.set_event_mask([k for k in range(64) if k not in CALL_EVENTS])
    elif not trace_entries:
        m.engine.set_event_mask([k for k in range(64) if k != core.EV_ENTRY])
    mod = None
    if model is not None:
        mod = make_model(model, m)
        p = mod.add(make_patch(m, "bench", patch_img, funcs))
        m.at(1000, lambda: mod.enable(p))
    return m, mod, caller


def run_calls(ctx: Context, **kw) -> dict:
    """Run _calls_machine up to the caller's loop, then time the loop.
    Returns host seconds, virtual instructions and the transition state."""
    m, mod, caller = calls_machine(ctx, **kw)
    try:
        m.run(until=(SLEEP1 + SLEEP2 - 20) * m.tick)
        state = "none"
        if mod is not None:
            t = mod.transitions[-1] if mod.transitions else None
            state = "during" if t is not None and t.result == "pending" else (t.result if t else "none")
        t0 = m.now
        host = timed(lambda: m.run(stop_when=lambda: caller.state is RunState.EXITED), cpu_time)
        if caller.state is not RunState.EXITED:
            raise RuntimeError("the bench caller did not finish")
        return {"host_s": host, "instructions": m.now - t0, "state": state,
                "dropped_events": m.engine.events_dropped}
    finally:
        m.engine.close()


def per_call(ctx: Context, calls: int, **kw) -> dict:
    """Added host ns and virtual instructions per call of a redirected
    function: the patched loop against the same loop with no patch."""
    reps = ctx.sizes.repeats
    base, runs = [], []
    for _ in range(reps):          # interleaved, so drift hits both alike
        base.append(run_calls(ctx, model=None, calls=calls, **{k: v for k, v in kw.items() if k != "model"}))
        runs.append(run_calls(ctx, calls=calls, **kw))
    b = min(base, key=lambda r: r["host_s"])
    r = min(runs, key=lambda r: r["host_s"])
    return {
        "calls": calls,
        "state": r["state"],
        "entry_events": "on" if kw.get("trace_entries", True) and kw.get("trace_calls", True) else "off",
        "call_events": "on" if kw.get("trace_calls", True) else "off",
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
    c = per_call(ctx, s.redirect_calls_c, accel="c", model="immediate", blocker=False)
    ctx.say("redirect: Python twin")
    py = per_call(ctx, s.redirect_calls_py, accel="python", model="immediate", blocker=False)
    ctx.say("redirect: C fast path, entry events off")
    c_quiet = per_call(ctx, s.redirect_calls_c, accel="c", model="immediate", blocker=False,
                        trace_entries=False)
    ctx.say("redirect: C fast path, every per-call event off")
    c_bare = per_call(ctx, s.redirect_calls_c, accel="c", model="immediate", blocker=False,
                      trace_calls=False)
    floor = in_guest_trampoline(ctx)
    floor["on_the_engine"] = in_guest_trampoline(ctx, engine=True)
    result["redirect"] = {"c": c, "python": py, "c_untraced": c_quiet, "c_redirect_only": c_bare,
                          "in_guest_trampoline": floor}
    result["redirect_ratio"] = ratio(c["added_ns_per_call"], py["added_ns_per_call"])
    # The floor traces nothing: it is held to the redirect alone, the C
    # path with its per-call events (and so its exit tracing) off.
    # A floor at or below 0 ns was lost in the noise: no ratio then.
    if floor["added_ns_per_call"] > 0:
        result["redirect_floor_ratio"] = ratio(c_bare["added_ns_per_call"], floor["added_ns_per_call"])


def in_guest_trampoline(ctx: Context, *, engine: bool = False) -> dict:
    """The floor to approach: the site is `jmp stub`, and the stub reads the
    task's patch state from guest memory and jumps to the old or the new
    code. Raw Unicorn, no hooks at all (so no virtual time either); added ns
    per call against the same loop with the NOP site. engine=True runs the
    same code on a core.Engine instead (not the floor: its block hook counts
    virtual time, its memory is the Machine's mode), which tells what a
    redirect done in guest code would cost here."""
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
    # Raw runs are short (tens of ms) and their difference small: more
    # repeats than elsewhere keep one disturbed pair from setting the floor.
    run = engine_stub_run if engine else raw_stub_run
    for _ in range(3 * ctx.sizes.repeats):
        plain = min(plain, run(base, patch_img, stub, target.site, state_at, hlt, jump=False))
        jumped = min(jumped, run(base, patch_img, stub, target.site, state_at, hlt, jump=True))
    return {"calls": n, "added_ns_per_call": round((jumped - plain) / n * 1e9, 2),
            "ns_per_call_plain": round(plain / n * 1e9, 2),
            "what": ("core.Engine (its block hook, the virtual TLB)" if engine else "raw Unicorn") +
                    ": site `jmp stub`, the stub tests the task's patch state in guest memory"}


def raw_stub_run(base, patch_img, stub, site: int, state_at: int, hlt: int, *, jump: bool) -> float:
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
    return timed(lambda: uc.emu_start(stub.symbols["driver"], hlt), cpu_time)


def engine_stub_run(base, patch_img, stub, site: int, state_at: int, hlt: int, *, jump: bool) -> float:
    """raw_stub_run on a core.Engine: one task, one emu_run up to the hlt."""
    from unicorn.x86_const import UC_X86_REG_RIP, UC_X86_REG_RSP

    from emu.images.image import PROT_R, PROT_W, PROT_X

    e = core.Engine()
    try:
        for img in (base, patch_img, stub):
            for seg in img.segments:
                size = (len(seg.data) + 0xFFF) & ~0xFFF
                e.map(seg.addr, size, seg.prot)[:len(seg.data)] = seg.data
                if seg.prot & PROT_X:
                    e.add_code(seg.addr, size, [a for a in img.insn_starts() if seg.addr <= a < seg.addr + size])
        e.map(state_at, 0x1000, PROT_R | PROT_W)[0] = 1          # the task is PATCHED
        e.map(0x7000_0000, 0x10000, PROT_R | PROT_W)
        e.init_tasks(1)
        e.switch(0)
        e.uc.reg_write(UC_X86_REG_RSP, 0x7000_F000)
        e.uc.reg_write(UC_X86_REG_RIP, stub.symbols["driver"])
        if jump:
            rel = stub.symbols["stub"] - (site + 5)
            e.view(site, 5)[:] = b"\xe9" + rel.to_bytes(4, "little", signed=True)
        stop = []
        host = timed(lambda: stop.append(e.run(1 << 40)), cpu_time)
        if stop[0].rip != hlt + 1:         # the hlt ran: the run came back after it
            raise RuntimeError(f"the engine's stub loop stopped at {stop[0].rip:#x}, not after its hlt")
        return host
    finally:
        e.close()
