"""The exception hierarchy of livepatch-emu, and the checks of a caller's
arguments that the public API shares.

Every error the package raises on purpose is an EmuError. The command line turns
UserError (and its children) into one message and exit status 2; anything else
is a bug in livepatch-emu. A wrong argument to the Python API (a type, a
value out of range) is a TypeError or ValueError naming the function and the
parameter (the checks below); a call the object's state does not allow now is
a StateError.
"""
import math


class EmuError(Exception):
    """Base of every error raised by livepatch-emu."""


class UserError(EmuError):
    """Bad input from the user: a scenario, a source file, an option."""


class ScenarioError(UserError):
    """A scenario file is malformed; the message names the file, line and key."""


class BuildError(UserError):
    """Compiling, assembling, linking or loading code failed. undefined: the
    symbols a failed link could not resolve (empty for other failures)."""

    def __init__(self, *args, undefined=()):
        super().__init__(*args)
        self.undefined = tuple(undefined)


class ToolMissing(BuildError):
    """An external tool (gcc, ld) is not installed."""


class EventBound(UserError):
    """A run reached the bound on the events it keeps in memory
    (emu/machine/machine.py MAX_EVENTS): the scenario asks for a longer or
    denser run than one may hold, or Machine.run was given no until and the
    tasks never exit. A refusal of the input, never a fault of the run."""


class PatchError(UserError):
    """A patch cannot be built or applied (no fentry site, data change, ...)."""


class CoreError(EmuError):
    """The C core reported a failure (mapped from its negative error codes)."""


class EngineClosed(CoreError):
    """An engine was used after Engine.close()."""


class EngineBusy(CoreError):
    """An engine (a machine) was used while it runs: from a second thread, or
    from inside its own run (run() or close() from an at() callback, a
    work, a model's hook or stop_when)."""


class StateError(EmuError, RuntimeError):
    """A call the object's state does not allow now (a snapshot of a machine
    a model listens to, a restore after images were loaded, ...); the
    object is unchanged."""


class StaleBuild(EmuError):
    """The compiled C core does not match the installed package."""


class GuestFault(EmuError):
    """Guest code faulted; the message names task, CPU, RIP and the backtrace."""

    def __init__(self, message, *, task=None, cpu=None, rip=None, kind=None, backtrace=()):
        super().__init__(message)
        self.task = task
        self.cpu = cpu
        self.rip = rip
        self.kind = kind
        self.backtrace = tuple(backtrace)


class Busy(EmuError):
    """-EBUSY from a patching operation (another transition, IPMODIFY owner, ...)."""

    errno = 16


# ---- a caller's arguments ----------------------------------------------------------------

def check_int(value, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """value, an int (not a bool) in lo..hi (None: unbounded); TypeError or
    ValueError naming `what` ("function: parameter") otherwise."""
    if type(value) is int and (lo is None or value >= lo) and (hi is None or value <= hi):
        return value            # (the common case, first: the models call through checked methods)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{what} = {value} is out of range ({_range(lo, hi)})")
    return value


def check_number(value, what: str, lo: float = 0, hi: float | None = None) -> float:
    """value, a finite int or float (not a bool) in lo..hi; TypeError or
    ValueError naming `what` otherwise."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} = {value} is not a finite number")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{what} = {value} is out of range ({_range(lo, hi)})")
    return value


def check_type(value, cls, what: str, hint: str = ""):
    """value, an instance of cls (a class or a tuple of them); TypeError
    naming `what` (and how to get one: hint) otherwise."""
    if not isinstance(value, cls):
        names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        article = "an" if names[0] in "AEIOUaeiou" else "a"
        raise TypeError(f"{what} must be {article} {names}, not {type(value).__name__}{hint and f' ({hint})'}")
    return value


def check_items(value, cls, what: str, kind: str, hint: str = "") -> list:
    """value, a collection (not a string) of instances of cls, as a list;
    TypeError naming `what` (which must be `kind`, "a list of flags") or
    the item at fault (what[i], and how to get one: hint) otherwise."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{what} must be {kind}, not {type(value).__name__}")
    value = list(value)
    for i, item in enumerate(value):
        check_type(item, cls, f"{what}[{i}]", hint)
    return value


def check_callable(value, what: str):
    """value, a callable; TypeError naming `what` otherwise (raised when the
    callable is handed over, not when it is called later)."""
    if not callable(value):
        raise TypeError(f"{what} must be callable, not {type(value).__name__}")
    return value


def _range(lo, hi) -> str:
    def show(v):
        if isinstance(v, float):
            return f"{v:g}"
        return f"2**{v.bit_length() - 1}" if v > 1 << 32 and v & (v - 1) == 0 else \
            f"2**{(v + 1).bit_length() - 1} - 1" if v > 1 << 32 and (v + 1) & v == 0 else \
            f"-2**{(-v).bit_length() - 1}" if v < -(1 << 32) and (-v) & (-v - 1) == 0 else str(v)
    if lo is None:
        return f"at most {show(hi)}"
    if hi is None:
        return f"at least {show(lo)}"
    return f"{show(lo)} .. {show(hi)}"
