"""Progress of long work, on stderr: runs done of total, the rate, findings
so far and an ETA.

The ETA weighs the runs left by what each model's runs have cost so far
(models differ: a kpatch run that retries five times costs more than an
immediate one); a model with no finished run yet is costed at the average.
On a terminal the line is rewritten in place; elsewhere (a CI log) a line
is printed at most every `every` seconds, and a last one at the end.
"""
from __future__ import annotations

import sys
import time


class Progress:
    """Call done(model, n, findings) as runs finish; close() at the end."""

    def __init__(self, label: str, totals: dict[str, int], *, stream=None, enabled: bool = True,
                 every: float = 10.0, clock=time.monotonic):
        self.label = label
        self.totals = dict(totals)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.every = every
        self.clock = clock
        self.start = self.last_event = clock()
        self.last_line = None
        self.done_by: dict[str, int] = {m: 0 for m in totals}
        self.cost_by: dict[str, float] = {m: 0.0 for m in totals}
        self.findings = 0
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False

    @property
    def done(self) -> int:
        return sum(self.done_by.values())

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    def eta(self) -> float | None:
        """Seconds left, or None before the first run."""
        done = self.done
        if not done:
            return None
        spent = sum(self.cost_by.values())
        average = spent / done
        left = 0.0
        for m, total in self.totals.items():
            per = self.cost_by[m] / self.done_by[m] if self.done_by[m] else average
            left += (total - self.done_by[m]) * per
        return left

    def advance(self, model: str, n: int = 1, findings: int = 0) -> None:
        now = self.clock()
        self.done_by[model] = self.done_by.get(model, 0) + n
        self.totals.setdefault(model, self.done_by[model])
        self.cost_by[model] = self.cost_by.get(model, 0.0) + (now - self.last_event)
        self.last_event = now
        self.findings += findings
        if self.enabled and (self.tty or self.last_line is None or now - self.last_line >= self.every):
            self._show(now)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        eta = self.eta()
        return (f"{self.label}: {self.done}/{self.total} runs, {self.done / elapsed:.1f} runs/s, "
                f"{self.findings} with findings, ETA {_clock(eta) if eta is not None else '?'}")

    def _show(self, now: float) -> None:
        self.last_line = now
        text = self.line(now)
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled or self.last_line is None:
            return
        if self.tty:
            self.stream.write("\r\x1b[K")
        elif self.done:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02}:{s:02}" if h else f"{m}:{s:02}"
