"""ftrace: users of fentry sites (ops) and the code modification they need.

A site is `nop` (0f 1f 44 00 00) while no ops uses it and `call
ftrace_trampoline` while any does. At most one ops per function may modify
the IP (FTRACE_OPS_FL_IPMODIFY, what live patching needs); a second one is
refused with -EBUSY, while ops that only observe coexist with it.

Changing the five bytes while other CPUs may run them follows text_poke_bp:
int3 on the first byte, sync, bytes 2..5, sync, the new first byte, sync. A
CPU that meets the int3 meanwhile is diverted by the redirect's interrupt
hook, which emulates the instruction being written, so no CPU runs a torn
instruction. The "bytewise" protocol writes the five bytes one at a time
with no int3, so a CPU can run a half-written site (the machine reports it
as a `torn` event) - the fuzzer uses it to show why the protocol exists.

register()/unregister() check and book-keep at once (raising Busy) and
return a generator that the caller's work runs (`yield from`) to change the
text with its syncs.

What must agree with this module: the C core's redirect (csrc/redirect.c,
its twin emu/engine/redirect.py) emulates the instruction the POKE_* state
says is being written, and the NOP is emu/images/image.py's FENTRY_NOP.
"""
from __future__ import annotations

from emu.engine import core
from emu.errors import Busy
from emu.images.image import FENTRY_NOP
from emu.machine.machine import FunctionRef, Machine, Sync

PROTOCOLS = ("text_poke_bp", "bytewise")


class Ops:
    """An ftrace_ops: a name, whether it modifies the IP, and its functions."""

    def __init__(self, name: str, *, ipmodify: bool = False):
        self.name = name
        self.ipmodify = ipmodify
        self.functions: set[int] = set()

    def __repr__(self):
        return f"<Ops {self.name}{' IPMODIFY' if self.ipmodify else ''}>"


class Ftrace:
    def __init__(self, machine: Machine, *, protocol: str = "text_poke_bp"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown text protocol {protocol!r} ({', '.join(PROTOCOLS)})")
        self.m = machine
        self.protocol = protocol
        self.users: dict[int, list[Ops]] = {}
        self.pokes = 0          # site updates done, for the benchmarks

    def call_bytes(self, fn: FunctionRef) -> bytes:
        rel = self.m.runtime.trampoline - (fn.site + 5)
        return b"\xe8" + rel.to_bytes(4, "little", signed=True)

    def owner(self, fn: FunctionRef) -> Ops | None:
        """The IPMODIFY ops of fn, if any."""
        return next((o for o in self.users.get(fn.id, ()) if o.ipmodify), None)

    def is_enabled(self, fn: FunctionRef) -> bool:
        return bool(self.users.get(fn.id))

    def register(self, ops: Ops, functions):
        """Add ops to functions. Raises Busy (nothing changed) if one of them
        already has an IPMODIFY owner and ops modifies the IP too. Returns
        the text-update generator."""
        functions = list(functions)
        for fn in functions:
            self.m.site(fn)         # PatchError if fn has no fentry site
            if ops.ipmodify and self.owner(fn) not in (None, ops):
                raise Busy(f"function '{fn.name}' already has an IP-modifying ftrace user "
                           f"({self.owner(fn).name})")
        start = []
        for fn in functions:
            users = self.users.setdefault(fn.id, [])
            if ops in users:
                continue
            if not users:
                start.append(fn)
            users.append(ops)
            ops.functions.add(fn.id)
        return self._update(start, on=True)

    def unregister(self, ops: Ops, functions=None):
        """Remove ops from functions (all of its functions by default);
        returns the text-update generator."""
        ids = set(ops.functions) if functions is None else {fn.id for fn in functions}
        stop = []
        for fid in sorted(ids):
            users = self.users.get(fid, [])
            if ops in users:
                users.remove(ops)
                ops.functions.discard(fid)
                if not users:
                    stop.append(self.m.functions[fid])
        return self._update(stop, on=False)

    def _update(self, functions: list[FunctionRef], *, on: bool):
        """Rewrite the sites of functions (a batch, as ftrace_replace_code)."""
        if not functions:
            return
        new = {fn.id: self.call_bytes(fn) if on else FENTRY_NOP for fn in functions}
        self.pokes += len(functions)
        m = self.m
        if self.protocol == "text_poke_bp":
            poke = core.POKE_TO_CALL if on else core.POKE_TO_NOP
            for fn in functions:
                m.set_poke(fn, poke)
                m.text_write(fn.site, b"\xcc")
            yield Sync()
            for fn in functions:
                m.text_write(fn.site + 1, new[fn.id][1:])
            yield Sync()
            for fn in functions:
                m.text_write(fn.site, new[fn.id][:1])
            yield Sync()
            for fn in functions:
                m.set_poke(fn, core.POKE_NONE)
        else:
            for i in range(5):
                for fn in functions:
                    m.text_write(fn.site + i, new[fn.id][i:i + 1])
                yield Sync()

    def site_bytes(self, fn: FunctionRef) -> bytes:
        return bytes(self.m.engine.view(fn.site, 5))
