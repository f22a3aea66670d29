"""The models section: per-call redirect overhead of a patched function
under each model (emu.models.DEFAULT_MODELS), during and after its
transition, measured as redirect.py's per_call."""
from __future__ import annotations

from emu.app.bench.measure import Context
from emu.app.bench.redirect import per_call
from emu.models import DEFAULT_MODELS


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
            row[phase] = per_call(ctx, ctx.sizes.model_calls, accel="c", model=model, blocker=blocker)
            quiet = per_call(ctx, ctx.sizes.model_calls, accel="c", model=model, blocker=blocker,
                              trace_entries=False)
            row[phase]["added_ns_per_call_untraced"] = quiet["added_ns_per_call"]
        out[model] = row
    result["models"] = out
