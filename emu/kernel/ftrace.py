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

The `kernel.ftrace_enabled` sysctl (set_enabled): off, ftrace calls no
handler and every site is a NOP again (ftrace_shutdown_sysctl); ops still
register, but their sites stay NOPs until it is on again. An ops marked
PERMANENT (livepatch's, from Linux 5.5) cannot register while it is off,
and while one is registered it cannot be turned off: both -EBUSY.
Each ops keeps the windows of virtual time in which ftrace called its
handler (registered, and ftrace enabled): what a tracer recorded.

What must agree with this module: the C core's redirect (csrc/redirect.c,
its twin emu/engine/redirect.py) emulates the instruction the POKE_* state
says is being written, and the NOP is emu/images/image.py's FENTRY_NOP.
"""
from __future__ import annotations

from emu.engine import core
from emu.errors import Busy, check_items, check_type
from emu.images.image import FENTRY_NOP
from emu.machine.machine import FunctionRef, Machine, Sync

PROTOCOLS = ("text_poke_bp", "bytewise")


def _functions(functions, what: str) -> list[FunctionRef]:
    """functions as a list of FunctionRefs; TypeError naming the one that is not."""
    return check_items(functions, FunctionRef, f"{what}: functions",
                       "a list of functions (Machine.function gives them)", "Machine.function(name) gives one")


class Ops:
    """An ftrace_ops: a name, whether it modifies the IP, whether it is
    PERMANENT (ftrace_enabled must stay on while it is registered), its
    functions, and the [start, end) windows of virtual time in which ftrace
    called its handler (end None: still calling)."""

    def __init__(self, name: str, *, ipmodify: bool = False, permanent: bool = False):
        check_type(name, str, "Ops: name")
        check_type(ipmodify, bool, "Ops: ipmodify")
        check_type(permanent, bool, "Ops: permanent")
        self.name = name
        self.ipmodify = ipmodify
        self.permanent = permanent
        self.functions: set[int] = set()
        self.windows: list[list] = []

    @property
    def calling(self) -> bool:
        return bool(self.windows) and self.windows[-1][1] is None

    def called_at(self, clock: int) -> bool:
        """Whether ftrace called this ops' handler at virtual time clock."""
        return any(start <= clock and (end is None or clock < end) for start, end in self.windows)

    def __repr__(self):
        flags = (" IPMODIFY" if self.ipmodify else "") + (" PERMANENT" if self.permanent else "")
        return f"<Ops {self.name}{flags}>"


class Ftrace:
    def __init__(self, machine: Machine, *, protocol: str = "text_poke_bp"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown text protocol {protocol!r} ({', '.join(PROTOCOLS)})")
        self.m = machine
        self.protocol = protocol
        self.users: dict[int, list[Ops]] = {}
        self.enabled = True     # the kernel.ftrace_enabled sysctl
        self.pokes = 0          # site updates done, for the benchmarks

    def call_bytes(self, fn: FunctionRef) -> bytes:
        rel = self.m.runtime.trampoline(self.m.site(fn)) - (fn.site + 5)
        return b"\xe8" + rel.to_bytes(4, "little", signed=True)

    def owner(self, fn: FunctionRef) -> Ops | None:
        """The IPMODIFY ops of fn, if any."""
        return next((o for o in self.users.get(fn.id, ()) if o.ipmodify), None)

    def is_enabled(self, fn: FunctionRef) -> bool:
        return bool(self.users.get(fn.id))

    def registered(self) -> list[Ops]:
        """Every ops that uses a function now (each once)."""
        seen: dict[int, Ops] = {}
        for users in self.users.values():
            for o in users:
                seen.setdefault(id(o), o)
        return list(seen.values())

    def register(self, ops: Ops, functions):
        """Add ops to functions. Raises Busy (nothing changed) if one of them
        already has an IPMODIFY owner and ops modifies the IP too, or if ops
        is PERMANENT and ftrace_enabled is off. Returns the text-update
        generator (nothing to change while ftrace_enabled is off).
        TypeError for an ops or functions of the wrong type."""
        check_type(ops, Ops, "ftrace register: ops")
        functions = _functions(functions, "ftrace register")
        if ops.permanent and not self.enabled:
            raise Busy(f"{ops.name}: kernel.ftrace_enabled is 0, a permanent ftrace ops cannot register")
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
        if self.enabled and not ops.calling:
            ops.windows.append([self.m.now, None])
        return self._update(start if self.enabled else [], on=True)

    def unregister(self, ops: Ops, functions=None):
        """Remove ops from functions (all of its functions by default);
        returns the text-update generator."""
        check_type(ops, Ops, "ftrace unregister: ops")
        ids = set(ops.functions) if functions is None else {fn.id for fn in _functions(functions, "ftrace unregister")}
        stop = []
        for fid in sorted(ids):
            users = self.users.get(fid, [])
            if ops in users:
                users.remove(ops)
                ops.functions.discard(fid)
                if not users:
                    stop.append(self.m.functions[fid])
        if not ops.functions and ops.calling:
            ops.windows[-1][1] = self.m.now
        return self._update(stop if self.enabled else [], on=False)

    def set_enabled(self, value: bool):
        """Write the kernel.ftrace_enabled sysctl (ftrace_enable_sysctl).
        Raises Busy (nothing changed) when turning it off while a PERMANENT
        ops is registered. Off: no handler is called from now on and every
        used site goes back to a NOP; on: they call the trampoline again.
        Returns the text-update generator."""
        check_type(value, (bool, int), "ftrace set_enabled: value")
        value = bool(value)
        if value == self.enabled:
            return self._update([], on=value)
        ops = self.registered()
        if not value and any(o.permanent for o in ops):
            raise Busy("kernel.ftrace_enabled: a permanent ftrace ops is registered (livepatch)")
        self.enabled = value
        for o in ops:
            if value:
                o.windows.append([self.m.now, None])
            elif o.calling:
                o.windows[-1][1] = self.m.now
        used = [self.m.functions[fid] for fid in sorted(self.users) if self.users[fid]]
        return self._update(used, on=value)

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
