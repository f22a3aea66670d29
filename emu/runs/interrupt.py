"""The signals that stop a command, taken as one interrupt.

SIGINT (Ctrl-C), SIGTERM (kill, a CI job's timeout) and SIGHUP (the
terminal closed) each raise a KeyboardInterrupt wherever the program is
(Interrupted, for the two that Python does not raise itself), so that what
keeps its work on an interrupt keeps it alike: a campaign's finished runs
(emu/runs/campaign.py), an output written whole or not at all
(emu/runs/output.py). `lpemu` then exits 128 + the signal's number, the
status a shell gives a process that signal killed: 130, 143 and 129
(status()).

A signal the process inherited as ignored (nohup's SIGHUP, a background
job's SIGINT) stays ignored.
"""
from __future__ import annotations

import signal

#: the stop signals Python does not raise itself (SIGINT is its KeyboardInterrupt)
RAISED = (signal.SIGTERM, signal.SIGHUP)
#: every signal that stops a command (a campaign holds them back while its pool forks)
STOP_SIGNALS = frozenset({signal.SIGINT, *RAISED})


class Interrupted(KeyboardInterrupt):
    """A stop signal other than Ctrl-C, raised as Ctrl-C is; signum says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum, frame):
    raise Interrupted(signum)


def install() -> dict:
    """From here on, SIGTERM and SIGHUP raise Interrupted (those not
    ignored). Returns the handlers replaced, for restore(); none outside
    the main thread, where no handler can be set."""
    old = {}
    for sig in RAISED:
        try:
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue
            old[sig] = signal.signal(sig, _raise)
        except ValueError:              # not the main thread
            break
    return old


def restore(old: dict) -> None:
    """Put back the handlers install() replaced."""
    for sig, handler in old.items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)   # None: one set from C


def status(exc: KeyboardInterrupt) -> int:
    """The exit status of a command exc stopped: 128 + its signal's number
    (SIGINT's for a KeyboardInterrupt of Python's own)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))
