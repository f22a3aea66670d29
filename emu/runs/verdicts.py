"""What the trace alone says of a finished run, besides its units: whether
the model kept its promise (emu/runs/promise.py; a breach is the
emulator's error) and which values crossed versions (emu/runs/handover.py;
a finding about the patch). One call for every place that judges a run."""
from __future__ import annotations

from dataclasses import dataclass, field

from emu.kernel.patch import Patch
from emu.machine.machine import Machine
from emu.runs import handover, promise

MAX_REPORTED = 20


@dataclass
class Verdicts:
    breaches: int = 0
    promise: list = field(default_factory=list)       # the first MAX_REPORTED breaches, as JSON
    handover_count: int = 0
    handovers: list = field(default_factory=list)     # the first MAX_REPORTED handovers, as JSON


def verdicts(m: Machine, patches: list[Patch], *, spec_model: str, arity: dict | None = None,
             cache: dict | None = None, unlinked=frozenset()) -> Verdicts:
    """The promise breaches and value handovers of m's finished run under
    spec_model (arity: handover.find's cache; cache: promise.check's and
    handover.find's, kept for patches made alike; both kept by whoever
    judges many runs; unlinked: promise.check's)."""
    bad = promise.check(m, patches, spec_model, cache=cache, unlinked=unlinked)
    handed = handover.find(m, patches, arity=arity, cache=cache)
    return Verdicts(len(bad), [b.to_json() | {"text": str(b)} for b in bad[:MAX_REPORTED]],
                    len(handed), [h.to_json() for h in handed[:MAX_REPORTED]])
