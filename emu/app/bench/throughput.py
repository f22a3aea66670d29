"""The throughput_ratio section: instructions per second of a loop on the
Machine (8 tasks, 2 CPUs, a livepatch transition pending) against raw
Unicorn running the same loop on one task with no hooks (Unicorn as it
comes: its CPU TLB). The Machine runs with Unicorn's virtual TLB
(core.Engine's fast_memory), which lets guest stores take Unicorn's fast
path; throughput.raw_virtual_tlb shows raw Unicorn in that mode too, the
like-for-like comparison.

Workload: workloads.LOOP_C.
"""
from __future__ import annotations

from emu.app.bench.measure import Context, ratio, timed
from emu.engine import core
from emu.machine.machine import Machine
from emu.machine.task import PATCHED

ITERS = 100          # loop iterations per kernel entry


def raw_loop(ctx: Context, outer: int, *, count: bool = False, virtual_tlb: bool = False) -> tuple[float, int]:
    """Raw Unicorn (the binding, no hooks, no patch) running bench_entry(100)
    `outer` times from a driver: (host seconds, instructions retired when
    count, else 0). virtual_tlb=True runs it in the Machine's memory mode
    instead: Unicorn's virtual TLB, filled by a (Python) hook with each
    page's own permissions; the hook runs on TLB misses only."""
    from unicorn import (UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_TLB_FILL, UC_MODE_64, UC_PROT_READ,
                         UC_PROT_WRITE, UC_TLB_VIRTUAL, Uc)
    from unicorn.x86_const import UC_X86_REG_RSP

    from emu.images.asm import assemble

    base, _, _ = ctx.work.get("loop")
    driver = assemble(f"""
driver:
    mov rbx, {outer}
.Lagain:
    mov rdi, {ITERS}
    call {base.functions['bench_entry'].start:#x}
    dec rbx
    jnz .Lagain
    hlt
""", base=0x300000, name="driver")
    code = b"".join(seg.data for seg in driver.segments)
    hlt = next(a for a in driver.insn_starts() if code[a - driver.lo] == 0xF4)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    prot = {}
    for img in (base, driver):
        for seg in img.segments:
            size = (len(seg.data) + 0xFFF) & ~0xFFF
            uc.mem_map(seg.addr, size)
            uc.mem_write(seg.addr, seg.data)
            prot.update({page: seg.prot for page in range(seg.addr >> 12, (seg.addr + size) >> 12)})
    uc.mem_map(0x7000_0000, 0x10000)
    if virtual_tlb:
        def fill(uc, vaddr, access, entry, _):
            entry.paddr = vaddr & ~0xFFF
            entry.perms = prot.get(vaddr >> 12, UC_PROT_READ | UC_PROT_WRITE)
            return True
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        uc.hook_add(UC_HOOK_TLB_FILL, fill)
    uc.reg_write(UC_X86_REG_RSP, 0x7000_F000)
    n = [0]
    if count:
        def tick(*_):
            n[0] += 1
        uc.hook_add(UC_HOOK_CODE, tick)
    return timed(lambda: uc.emu_start(driver.symbols["driver"], hlt)), n[0]


def throughput_machine(ctx: Context, *, trace_entries: bool, quantum: int):
    """8 user tasks running bench_entry(100) on 2 CPUs, a kthread asleep in
    the patched hold(): the livepatch transition stays pending."""
    from emu.models import make_model
    from emu.kernel.patch import make_patch

    base, patch_img, funcs = ctx.work.get("loop")
    m = Machine(base, cpus=2, quantum=quantum, tick=1000)
    # the blocker first: it is asleep in hold() before the transition starts
    m.add_task("blocker", "blocker_entry", (0,), kind="kthread")
    for i in range(8):
        m.add_task(f"worker{i}", "bench_entry", (ITERS,))
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


def machine_rate(ctx: Context, *, trace_entries: bool, quantum: int) -> dict:
    m, mod = throughput_machine(ctx, trace_entries=trace_entries, quantum=quantum)
    try:
        t0 = m.now
        host = timed(lambda: m.run(until=t0 + ctx.sizes.throughput_instructions))
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
    _, per_outer1 = raw_loop(ctx, 1, count=True)
    _, per_outer2 = raw_loop(ctx, 2, count=True)
    per_outer = per_outer2 - per_outer1          # the driver's own few instructions cancel
    quantum = 100_000
    raw = raw_v = best = best_q = None
    for _ in range(s.repeats):
        ctx.say("throughput: raw Unicorn")
        host, _ = raw_loop(ctx, s.raw_outer)
        rate = s.raw_outer * per_outer / host
        raw = rate if raw is None else max(raw, rate)
        host, _ = raw_loop(ctx, s.raw_outer, virtual_tlb=True)
        rate = s.raw_outer * per_outer / host
        raw_v = rate if raw_v is None else max(raw_v, rate)
        ctx.say("throughput: Machine")
        r = machine_rate(ctx, trace_entries=False, quantum=quantum)
        best = r if best is None or r["instructions_per_s"] > best["instructions_per_s"] else best
        r = machine_rate(ctx, trace_entries=True, quantum=quantum)
        best_q = r if best_q is None or r["instructions_per_s"] > best_q["instructions_per_s"] else best_q
    result["throughput"] = {
        "raw_instructions_per_s": round(raw),
        # Not the floor (that is Unicorn with no hook at all): the same loop
        # in the Machine's memory mode, against which the Machine's own
        # overhead shows undiluted by the TLB's gain.
        "raw_virtual_tlb": {"instructions_per_s": round(raw_v),
                            "machine_ratio": ratio(best["instructions_per_s"], raw_v)},
        "instructions_per_iteration": per_outer / ITERS,
        "machine": {**best, "instructions_per_s": round(best["instructions_per_s"]),
                    "entry_events": "off (Engine.set_event_mask)"},
        "machine_traced": {**best_q, "instructions_per_s": round(best_q["instructions_per_s"]),
                           "entry_events": "on", "ratio": ratio(best_q["instructions_per_s"], raw)},
        "config": {"tasks": 8, "cpus": 2, "quantum": quantum, "model": "livepatch",
                   "iterations_per_kernel_entry": ITERS},
    }
    result["throughput_ratio"] = ratio(best["instructions_per_s"], raw)
