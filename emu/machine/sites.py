"""The fentry sites of a machine's functions and the writes to its code,
kept alike in the C core and, on a machine built with accel="python", in
the core's Python twin (emu/engine/redirect.py, emu/engine/text.py): every
change goes to both through here. emu/kernel/ftrace.py drives it."""
from __future__ import annotations

from emu.engine import core
from emu.errors import PatchError
from emu.machine.symbols import FunctionRef


class Sites:
    """Function id -> site index in the C core, and the twin to keep equal
    (None with accel="c")."""

    def __init__(self, engine: core.Engine, twin=None):
        self.engine = engine
        self.twin = twin
        self.by_func: dict[int, int] = {}             # function id -> site index
        self.funcs: dict[int, FunctionRef] = {}       # site index -> function

    def site(self, fn: FunctionRef) -> int:
        """The C core's index of fn's fentry site, registering it on first use."""
        idx = self.by_func.get(fn.id)
        if idx is None:
            if fn.site is None:
                raise PatchError(f"function '{fn.name}' has no fentry site (not compiled with -mfentry, "
                                 f"or notrace): it cannot be patched")
            idx = self.engine.add_site(fn.site, fn.id)
            if self.twin is not None:
                self.twin.add_site(idx, fn.site, fn.id)
            self.by_func[fn.id] = idx
            self.funcs[idx] = fn
        return idx

    def set_entries(self, fn: FunctionRef, entries) -> None:
        """fn's stack of replacements, newest first: (target, version, nop, transition)."""
        idx = self.site(fn)
        entries = [tuple(e) for e in entries]
        self.engine.set_site_entries(idx, entries)
        if self.twin is not None:
            self.twin.entries[idx] = entries

    def set_poke(self, fn: FunctionRef, poke: int) -> None:
        """The instruction a text_poke_bp is writing at fn's site (core.Poke)."""
        idx = self.site(fn)
        self.engine.set_site_poke(idx, poke)
        if self.twin is not None:
            self.twin.poke[idx] = poke

    def text_write(self, addr: int, data: bytes) -> None:
        """The one way to change guest code: also drops stale translations."""
        if self.twin is None:
            self.engine.text_write(addr, data)
        else:
            from emu.engine import text
            text.write(self.engine.uc, addr, data)

    def hook_error(self) -> BaseException | None:
        """The exception a Python hook of the twin kept during the last run
        (taken: it is raised once), or None."""
        twin = self.twin
        if twin is None or twin.error is None:
            return None
        err, twin.error = twin.error, None
        return err

    def state(self) -> tuple[dict, dict]:
        """What a snapshot keeps (the C core keeps the sites themselves)."""
        return dict(self.by_func), dict(self.funcs)

    def set_state(self, state: tuple[dict, dict]) -> None:
        self.by_func, self.funcs = dict(state[0]), dict(state[1])
