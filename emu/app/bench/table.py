"""The bench result as plain-text tables (what `lpemu bench` prints)."""
from __future__ import annotations

from emu.app.bench.run import TARGETS
from emu.app.tables import format_table


def fmt(v, unit: str = "") -> str:
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


def format_bench(result: dict, *, width: int | None = None) -> str:
    """The bench result as plain-text tables (emu/app/tables.py): fitted to
    width (a terminal's), or without one (a pipe, a file) as wide as their
    content, every header whole on one line. No number is ever cut."""
    out: list[str] = []

    def table(title: str, headers, rows) -> None:
        out.extend([title, format_table(headers, rows, width=width), ""])

    red, unw, thr = result.get("redirect", {}), result.get("unwind", {}), result.get("throughput", {})
    basis = {
        "redirect_ratio": red and f"C {fmt(red['c']['added_ns_per_call'], 'ns')} / Python twin "
                                  f"{fmt(red['python']['added_ns_per_call'], 'ns')} added per call",
        "unwind_ratio": unw and (lambda u: f"{unw['unwinder']}, depth {unw['depth']}: C "
                                           f"{fmt(u['c_ns_per_stack'], 'ns')} / Python "
                                           f"{fmt(u['python_ns_per_stack'], 'ns')} per stack")(unw[unw["unwinder"]]),
        "throughput_ratio": thr and f"Machine {fmt(thr['machine']['instructions_per_s'] / 1e6)} M/s / raw "
                                    f"{fmt(thr['raw_instructions_per_s'] / 1e6)} M/s",
        "redirect_floor_ratio": red and red.get("in_guest_trampoline") and red.get("c_redirect_only") and
        f"C, per-call events off {fmt(red['c_redirect_only']['added_ns_per_call'], 'ns')} / in-guest `jmp` trampoline "
        f"{fmt(red['in_guest_trampoline']['added_ns_per_call'], 'ns')} added per call",
        "scale_throughput_ratio": result.get("scale") and (lambda sc: (
            f"{sc['large']['tasks']:,} tasks {fmt(sc['large']['instructions_per_s'] / 1e6)} M/s / 8 tasks "
            f"{fmt(sc['small']['instructions_per_s'] / 1e6)} M/s, {sc['large']['cpus']} CPUs"))(result["scale"]),
        "scale_rss_mib": result.get("scale") and
        f"process RSS with the {result['scale']['large']['tasks']:,}-task machine alive "
        f"(started in {fmt(result['scale']['large']['start_s'])} s)",
    }
    # (what each ratio is measured from goes under the table: a column of
    # sentences would leave a terminal's table no room for the figures' names)
    table("Targets (ratios measured in this run)", ("figure", "value", "target", "met"),
          [[name, fmt(result.get(name)), f"{op} {bound}", fmt(result.get("meets", {}).get(name))]
           for name, (op, bound) in TARGETS.items()])
    measured = [f"  {name}: {basis[name]}" for name in TARGETS if basis.get(name)]
    if measured:
        out.extend(["measured from:", *measured, ""])

    if red:
        out.append(f"redirect, entry events off: C {fmt(red['c_untraced']['added_ns_per_call'], 'ns')} added "
                   f"per call; in-guest `jmp` trampoline (raw Unicorn): "
                   f"{fmt(red['in_guest_trampoline']['added_ns_per_call'], 'ns')}")
    if thr:
        q = thr["machine_traced"]
        out.append(f"throughput with every entry traced: {fmt(q['instructions_per_s'] / 1e6)} M/s "
                   f"(ratio {fmt(q['ratio'])}); config {thr['config']}")
    if red or thr:
        out.append("")

    models = result.get("models")
    if models:
        table("Redirect cost of a patched function, per call (C fast path)",
              ("model", "phase", "added instructions", "added host ns", "ns, entry events off", "state"),
              [[model, phase, fmt(r["added_instructions_per_call"]), fmt(r["added_ns_per_call"]),
                fmt(r.get("added_ns_per_call_untraced")), r["state"]]
               for model, phases in models.items() for phase, r in phases.items()])

    sc = result.get("scaling")
    if sc:
        for key, label in (("by_tasks", f"tasks (depth 8, {sc.get('cpus', 2)} CPUs)"),
                           ("by_cpus", f"CPUs ({sc.get('cpus_tasks')} tasks, depth 8)"),
                           ("by_depth", "stack depth")):
            rows = sc.get(key)
            if not rows:
                continue
            table(f"Scaling with {label}, virtual instructions (1 s = {sc['instructions_per_second']:,})",
                  ("tasks", "CPUs", "depth", "stop_machine pause", "wait for stop", "livepatch latency",
                   "last switch", "kgraft latency", "last migration"),
                  [[str(r["tasks"]), str(r.get("cpus", "")), str(r["depth"]), fmt(r["stop_machine_pause"]),
                    fmt(r["stop_machine_wait"]), fmt(r["livepatch_latency"]), fmt(r["livepatch_last_switch"]),
                    fmt(r["kgraft_latency"]), fmt(r["kgraft_last_switch"])] for r in rows])
    out.append(f"({result.get('seconds', '?')} s{', quick run: not figures to quote' if result.get('quick') else ''})")
    return "\n".join(out).rstrip() + "\n"
