"""Findings and expectations: what a run found, and whether a campaign did
what its scenario's [expect] table says.

A run record (Result.to_json(), a line of runs.jsonl) has findings of these
kinds (FINDINGS, in the order reports list them):

- inconsistent: a unit of work ran a mix of versions (emu/runs/oracle.py);
- assertion:    a [check] value assertion failed;
- handover:     a value produced by one version of a patched function reached
                a function of another version (records that carry a
                non-empty "handovers" list; runs without that analysis have none);
- fault:        the guest faulted, or its worker died (outcome fault, crash);
- failed:       a transition failed, or an action was refused (outcome failed,
                error: the run could not be set up under that model);
- stalled:      a transition was still pending at the horizon.

The first three say the patch ran unsafely; the last three say what the
transition or the guest did. `--fail-on` picks the kinds that make a run
fail; DEFAULT_FAIL_ON leaves out failed and stalled transitions, which a
model may do by design (kpatch gives up on a busy function).

An expectation is a word about one model over a whole campaign (every run of
that model in it):

- safe:      no run is unsafe (no inconsistent unit, failed assertion or handover);
- unsafe:    at least one run is unsafe;
- completes: every run's transitions completed (no failed, stalled or faulted run);
- stalls:    at least one run stalled;
- fails:     at least one run's transition failed;
- faults:    at least one run faulted.

A model may carry several (`livepatch = ["safe", "completes"]`): all must hold.

A campaign interrupted before a model's last run judges that model only
where its runs so far settle it (a run that breaks `safe` or `completes`, a
finding that fails it): else the model is interrupted, not run or run in
part, never ok (judge's planned).
"""
from __future__ import annotations

from dataclasses import dataclass

#: finding kind -> does a run record have it
FINDINGS = {
    "inconsistent": lambda r: bool(r.get("inconsistent")),
    "assertion": lambda r: bool(r.get("violation_count")),
    "handover": lambda r: bool(r.get("handovers")),
    "fault": lambda r: r.get("outcome") in ("fault", "crash"),
    "failed": lambda r: r.get("outcome") in ("failed", "error"),
    "stalled": lambda r: r.get("outcome") == "stalled",
}
UNSAFE = ("inconsistent", "assertion", "handover")
DEFAULT_FAIL_ON = ("inconsistent", "assertion", "handover", "fault")

#: expectation -> its definition (the words [expect] takes)
EXPECTATIONS = {
    "safe": "no run is unsafe (no inconsistent unit, failed assertion or value handover)",
    "unsafe": "at least one run is unsafe (an inconsistent unit, a failed assertion or a value handover)",
    "completes": "every run's transitions complete (no failed, stalled or faulted run)",
    "stalls": "at least one run's transition stalls (still pending at the horizon)",
    "fails": "at least one run's transition fails (or the model refuses the patch)",
    "faults": "at least one run faults",
}
_SHOWN_BY = {"safe": UNSAFE, "unsafe": UNSAFE, "completes": ("failed", "stalled", "fault"),
             "stalls": ("stalled",), "fails": ("failed",), "faults": ("fault",)}
_NONE_WANTED = ("safe", "completes")        # the others want at least one run that shows them


def findings(record: dict) -> list[str]:
    """The finding kinds of one run record, in FINDINGS order."""
    return [kind for kind, has in FINDINGS.items() if has(record)]


def parse_fail_on(text: str) -> tuple[str, ...]:
    """'inconsistent,fault' -> ('inconsistent', 'fault'); 'all' and 'none' too.
    Raises ValueError naming the unknown kind."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if words == ["all"]:
        return tuple(FINDINGS)
    if words == ["none"]:
        return ()
    unknown = [w for w in words if w not in FINDINGS]
    if unknown or not words:
        raise ValueError(f"unknown finding kind '{unknown[0] if unknown else text}' "
                         f"(kinds: {', '.join(FINDINGS)}, or all, or none)")
    return tuple(k for k in FINDINGS if k in words)


def failing(record: dict, fail_on) -> list[str]:
    """The kinds of record's findings that fail_on counts."""
    return [k for k in findings(record) if k in fail_on]


@dataclass
class Verdict:
    """A model's campaign judged: ok, why (one line), and the first seed
    whose run fails it (None when no single run shows it). interrupted:
    the campaign stopped before the model's runs could settle it (not ok,
    and no failure either)."""
    model: str
    ok: bool
    why: str
    seed: int | None = None
    expected: tuple[str, ...] = ()
    interrupted: bool = False

    def to_json(self) -> dict:
        return {"model": self.model, "ok": self.ok, "interrupted": self.interrupted, "why": self.why,
                "first_failing_seed": self.seed, "expected": list(self.expected)}


def _sorted(records) -> list[dict]:
    return sorted(records, key=lambda r: r["seed"])


def _count(records, kinds) -> tuple[int, dict | None]:
    hit = [r for r in _sorted(records) if any(k in kinds for k in findings(r))]
    return len(hit), (hit[0] if hit else None)


def summary_line(record: dict) -> str:
    """What one run found, in a line: 'seed 7: inconsistent, assertion (outcome completed)'."""
    kinds = findings(record)
    return f"seed {record['seed']}: {', '.join(kinds) if kinds else 'no finding'} (outcome {record.get('outcome')})"


def judge_expectations(model: str, expected, records) -> Verdict:
    """Whether a model's records meet every expectation in `expected`
    (words of EXPECTATIONS). For a broken `safe`/`completes` the seed is the
    first run that breaks it; for a missing `unsafe`/`stalls`/... there is none."""
    records = list(records)
    n = len(records)
    for word in expected:
        kinds = _SHOWN_BY[word]
        hits, first = _count(records, kinds)
        if word in _NONE_WANTED and hits:
            return Verdict(model, False, f"{model}: expected {word}, but {hits} of {n} runs were not "
                                         f"(first: {summary_line(first)})", first["seed"], tuple(expected))
        if word not in _NONE_WANTED and not hits:
            return Verdict(model, False, f"{model}: expected {word}, but none of {n} runs "
                                         f"{'was unsafe' if word == 'unsafe' else 'showed it'}", None,
                           tuple(expected))
    return Verdict(model, True, f"{model}: {', '.join(expected)} as expected ({n} runs)", None, tuple(expected))


def judge_fail_on(model: str, fail_on, records) -> Verdict:
    """Whether none of a model's records has a finding fail_on counts."""
    records = list(records)
    hits, first = _count(records, tuple(fail_on))
    if hits:
        return Verdict(model, False, f"{model}: {hits} of {len(records)} runs with findings "
                                     f"(first: {summary_line(first)})", first["seed"])
    return Verdict(model, True, f"{model}: no findings in {len(records)} runs")


def judge(model: str, expected, fail_on, records, planned: int | None = None) -> Verdict:
    """A model's campaign: by its expectations when the scenario has some
    for it, else by fail_on. planned: the runs the campaign meant to make
    of the model, when it was interrupted; with fewer records than that,
    the verdict stands only if a run settles it (a failing seed), and is
    otherwise interrupted."""
    records = list(records)
    verdict = judge_expectations(model, expected, records) if expected else judge_fail_on(model, fail_on, records)
    if planned is None or len(records) >= planned or verdict.seed is not None:
        return verdict
    if not records:
        why = f"{model}: not run (the campaign was interrupted before its first run)"
    else:
        why = (f"{model}: interrupted after {len(records)} of {planned} runs, not judged "
               f"({verdict.why.removeprefix(model + ': ')})")
    return Verdict(model, False, why, None, verdict.expected, interrupted=True)
