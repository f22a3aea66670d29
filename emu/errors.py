"""The exception hierarchy of livepatch-emu.

Every error the package raises on purpose is an EmuError. The command line turns
UserError (and its children) into one message and exit status 2; anything else
is a bug in livepatch-emu.
"""


class EmuError(Exception):
    """Base of every error raised by livepatch-emu."""


class UserError(EmuError):
    """Bad input from the user: a scenario, a source file, an option."""


class ScenarioError(UserError):
    """A scenario file is malformed; the message names the file, line and key."""


class BuildError(UserError):
    """Compiling, assembling, linking or loading code failed."""


class ToolMissing(BuildError):
    """An external tool (gcc, ld) is not installed."""


class EventBound(UserError):
    """A run reached the bound on the events it keeps in memory
    (emu/runs/fuzz.py MAX_EVENTS): the scenario asks for a longer or denser
    run than one may hold. A refusal of the input, never a fault of the run."""


class PatchError(UserError):
    """A patch cannot be built or applied (no fentry site, data change, ...)."""


class CoreError(EmuError):
    """The C core reported a failure (mapped from its negative error codes)."""


class EngineClosed(CoreError):
    """An engine was used after Engine.close()."""


class EngineBusy(CoreError):
    """An engine (a machine) was used from a second thread while one ran it."""


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
