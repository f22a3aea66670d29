"""The scaling tables of a bench result drawn as a picture (`lpemu bench --plot`):
scaling_figure builds it, write_scaling_plot writes it."""
from __future__ import annotations

import statistics
from pathlib import Path

from emu.models.kgraft import KGR_TIMEOUT
from emu.app.report import save_figure
from emu.runs import output


#: the suffixes write_scaling_plot writes (its format is chosen by the suffix)
PLOT_SUFFIXES = (".png", ".svg")


def write_scaling_plot(result: dict, path, *, replace: bool = True) -> Path:
    """Draw the scaling tables (three panels: against tasks, CPUs, depth) to
    path; the suffix (.png or .svg) picks the format. Returns the path.
    Raises ValueError when the result has no scaling tables, FileExistsError
    when path exists and replace is false, OSError when it cannot be written
    (the file is then as it was)."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"{path}: the plot is written as .png or .svg")
    fig = scaling_figure(result)
    try:
        with output.writing(path, replace=replace, binary=True) as f:     # whole or not at all
            save_figure(fig, f, path.suffix.lower()[1:])
    finally:
        fig.clear()
    return path


def median_spread(value) -> tuple[float, float, float] | None:
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
    median with the 10-90% band shaded; one number as a point. The retry
    periods (livepatch's retry, 1 s; kGraft's check, KGR_TIMEOUT) are dashed
    lines.
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
    fig = Figure(figsize=(16, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    spread = False
    on = f" on {sc['cpus']} CPUs" if sc.get("cpus") else ""
    for ax, key, xname, label in ((axes[0], "by_tasks", "tasks", f"tasks{on} (stack depth 8)"),
                                  (axes[1], "by_cpus", "cpus", f"CPUs ({sc.get('cpus_tasks', '?')} tasks, depth 8)"),
                                  (axes[2], "by_depth", "depth", "stack depth (frames)")):
        rows = sc.get(key) or []
        xs = [r[xname] for r in rows]
        for field_, name, colour, style in series:
            pts = [(x, m) for x, r in zip(xs, rows) if (m := median_spread(r.get(field_)))]
            if not pts:
                continue
            x = [p[0] for p in pts]
            ax.plot(x, [p[1][0] for p in pts], style, marker="o", ms=3, color=colour, label=name)
            if any(lo != hi for _, (_, lo, hi) in pts):
                spread = True
                ax.fill_between(x, [p[1][1] for p in pts], [p[1][2] for p in pts], color=colour, alpha=0.15,
                                linewidth=0)
        for period, what in ((1, "livepatch retry"), (KGR_TIMEOUT, "kGraft check")):
            ax.axhline(period * second, color="black", linestyle="--", linewidth=0.8, alpha=0.6)
            ax.annotate(f"{period} s: {what}", (0, period * second), xycoords=("axes fraction", "data"),
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
