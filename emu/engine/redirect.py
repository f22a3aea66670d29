"""The pure-Python twin of csrc/redirect.c: the same hooks through the
Unicorn binding (the sites' trampolines, the site watch, the int3 of a
text_poke_bp, the return trampoline of function exits), the same choice of
target, the same return stacks (in guest memory, csrc/emu.h "function
exits") and the same events.

It runs when a machine is built with accel="python". Where the C core lets
a site's trampoline run (it pops the fentry return and jumps to the target
the core wrote into it), this twin writes RSP and RIP through the binding
at its first instruction (the trampoline's code never runs): it is one
instruction of virtual time either way, so the traces are the same. The
twin watches every site all the time; the C core only those that are not
the call to their trampoline, where the watch does nothing.

Exceptions never propagate out of a hook: the first one is kept, the run is
stopped, and the machine raises it (the binding's own re-raise lives in
Uc.emu_start, which the C core does not use).
"""
from __future__ import annotations

from unicorn import UC_HOOK_CODE, UC_HOOK_INTR
import struct

from unicorn.x86_const import (UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDI,
                               UC_X86_REG_RDX, UC_X86_REG_RIP, UC_X86_REG_RSI, UC_X86_REG_RSP)

from emu.engine import core
from emu.engine.core import UNPATCHED
from emu.images.image import FENTRY_NOP

_Q = struct.Struct("<Q")
_REC = struct.Struct("<QQqq")        # slot, ret, function id, version


class PyRedirect:
    def __init__(self, machine):
        self.m = machine
        self.engine = machine.engine
        self.uc = machine.engine.uc
        self.entries: dict[int, list] = {}    # site index -> [(target, version, nop, transition)]
        self.poke: dict[int, int] = {}
        self.addr: dict[int, int] = {}         # site address -> site index
        self.func: dict[int, int] = {}         # site index -> function id
        self.error: BaseException | None = None
        lo, hi = machine.runtime.regs
        self._hooks = [self.uc.hook_add(UC_HOOK_CODE, self._tramp, None, lo, hi - 1),
                       self.uc.hook_add(UC_HOOK_INTR, self._intr)]
        self.uc.ctl_remove_cache(lo, hi)

    def add_site(self, idx: int, addr: int, func_id: int) -> None:
        self.addr[addr] = idx
        self.func[idx] = func_id
        self.entries[idx] = []
        self.poke[idx] = core.POKE_NONE
        self._hooks.append(self.uc.hook_add(UC_HOOK_CODE, self._watch, idx, addr, addr))
        self.uc.ctl_remove_cache(addr, addr + 1)

    def graph_init(self) -> None:
        """Hook the return trampoline (after Engine.graph_init)."""
        ret = self.engine.graph[0]
        self._hooks.append(self.uc.hook_add(UC_HOOK_CODE, self._graph_ret, None, ret, ret))
        self.uc.ctl_remove_cache(ret, ret + 1)

    def _graph_stack(self):
        """The current task's return stack (a writable view), or None, as
        graph_stack() in csrc/redirect.c."""
        ret, base, stride = self.engine.graph
        cur = self.engine.current
        if not ret or not 0 <= cur < len(self.m.tasks) or not self.engine.records(core.EV_RETURN):
            return None
        return self.engine.view(base + cur * stride, stride)

    def _graph_push(self, func: int, version: int, rsp: int, clock: int) -> None:
        """prepare_ftrace_return, as graph_push() in csrc/redirect.c."""
        g = self._graph_stack()
        if g is None:
            return
        try:
            retp = self.engine.view(rsp, 8)
        except core.CoreError:
            return
        cap = (len(g) - core.GRAPH_HEADER) // core.GRAPH_RECORD
        depth = _Q.unpack_from(g, 0)[0]
        if depth >= cap:
            _Q.pack_into(g, 8, (_Q.unpack_from(g, 8)[0] + 1) & _MASK)
            self.engine.push_event(core.EV_RET_UNTRACED, self.engine.current, func, version, rsp, clock)
            return
        _REC.pack_into(g, core.GRAPH_HEADER + depth * core.GRAPH_RECORD, rsp, _Q.unpack_from(retp, 0)[0],
                       func, version)
        _Q.pack_into(g, 0, depth + 1)
        _Q.pack_into(retp, 0, self.engine.graph[0])

    def _graph_ret(self, uc, addr, size, _):
        """return_to_handler, as hook_graph() in csrc/redirect.c."""
        try:
            cur = self.engine.current
            stride = self.engine.graph[2]
            g = (self.engine.view(self.engine.graph[1] + cur * stride, stride)
                 if 0 <= cur < len(self.m.tasks) else None)
            now = self.engine.now(addr)
            slot = (uc.reg_read(UC_X86_REG_RSP) - 8) & _MASK
            if g is not None:
                cap = (len(g) - core.GRAPH_HEADER) // core.GRAPH_RECORD
                depth = _Q.unpack_from(g, 0)[0]
                if depth > cap:
                    depth = 0
                while depth > 0:
                    rslot, _, func, version = _REC.unpack_from(g, core.GRAPH_HEADER + (depth - 1) * core.GRAPH_RECORD)
                    if rslot >= slot:
                        break
                    self.engine.push_event(core.EV_UNWOUND, cur, func, version, rslot, now)
                    depth -= 1
                _Q.pack_into(g, 0, depth)
                if depth > 0:
                    rslot, real, func, version = _REC.unpack_from(g, core.GRAPH_HEADER + (depth - 1) * core.GRAPH_RECORD)
                    if rslot == slot:
                        _Q.pack_into(g, 0, depth - 1)
                        self.engine.push_event(core.EV_RETURN, cur, func, version, uc.reg_read(UC_X86_REG_RAX), now)
                        uc.reg_write(UC_X86_REG_RIP, real)
                        return
            raise core.CoreError(f"the return trampoline was reached with no return stack record for the "
                                 f"slot {slot:#x}")
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.engine.request_stop()

    def choose(self, idx: int) -> tuple[int, int]:
        """klp_ftrace_handler's choice, as csrc/redirect.c choose()."""
        entries = self.entries[idx]
        site = self.m.functions[self.func[idx]].site
        if not entries:
            return site + 5, 0
        i = 0
        if entries[0][3]:
            cur = self.engine.current
            if cur >= 0 and self.m.tasks[cur].patch_state == UNPATCHED:
                i = 1
        if i >= len(entries) or entries[i][2]:
            return site + 5, 0
        return entries[i][0], entries[i][1]

    def _enter(self, idx: int, rsp: int, clock: int) -> None:
        target, version = self.choose(idx)
        self.uc.reg_write(UC_X86_REG_RSP, rsp)
        self.uc.reg_write(UC_X86_REG_RIP, target)
        self._entry(self.func[idx], version, rsp, clock)

    def _entry(self, func: int, version: int, rsp: int, clock: int) -> None:
        """A traced entry, as entry_event() in csrc/redirect.c: the event,
        the argument registers (EV_ARGS, EV_ARGS_HI), the return diverted."""
        cur = self.engine.current
        self.engine.push_event(core.EV_ENTRY, cur, func, version, rsp, clock)
        rdi, rsi, rdx, rcx, r8, r9 = (self.uc.reg_read(r) for r in _ARG_REGS)
        self.engine.push_event(core.EV_ARGS, cur, _signed(rdi), _signed(rsi), rdx, clock)
        self.engine.push_event(core.EV_ARGS_HI, cur, _signed(rcx), _signed(r8), r9, clock)
        self._graph_push(func, version, rsp, clock)

    def _tramp(self, uc, addr, size, _):
        """A site's trampoline, as __emu_stub_enter() in csrc/redirect.c
        (its code never runs here, so only its start is ever reached)."""
        try:
            rt = self.m.runtime
            idx = rt.trampoline_at(addr)
            rsp = uc.reg_read(UC_X86_REG_RSP)
            ret = int.from_bytes(uc.mem_read(rsp, 8), "little") if addr == rt.trampoline(idx) else None
            if idx not in self.func or ret != self.m.functions[self.func[idx]].site + 5:
                raise core.CoreError(f"the ftrace trampoline at {addr:#x} was reached from no call at its "
                                     f"fentry site")
            self._enter(idx, rsp + 8, self.engine.now(addr))
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised by the machine
            self._fail(exc)

    def _watch(self, uc, addr, size, idx):
        try:
            code = bytes(self.engine.view(addr, 5))
            if code == FENTRY_NOP:
                rsp, now = uc.reg_read(UC_X86_REG_RSP), self.engine.now(addr)
                self._entry(self.func[idx], 0, rsp, now)
            elif code[0] != 0xCC and not _is_call_to(code, addr, self.m.runtime.trampoline(idx)):
                self.engine.push_event(core.EV_TORN, self.engine.current, self.func[idx], 0, addr,
                                       self.engine.now(addr))
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _intr(self, uc, intno, _):
        try:
            if intno != 3:
                return
            rip = uc.reg_read(UC_X86_REG_RIP)
            idx = self.addr.get(rip - 1)
            if idx is None or self.poke[idx] == core.POKE_NONE:
                return      # a real fault: the C core reports it
            rsp = uc.reg_read(UC_X86_REG_RSP)
            if self.poke[idx] == core.POKE_TO_CALL:
                self._enter(idx, rsp, self.engine.now(rip - 1))
            else:
                uc.reg_write(UC_X86_REG_RIP, rip - 1 + 5)
                now = self.engine.now(rip - 1)
                self._entry(self.func[idx], 0, rsp, now)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)


_MASK = (1 << 64) - 1
_ARG_REGS = (UC_X86_REG_RDI, UC_X86_REG_RSI, UC_X86_REG_RDX, UC_X86_REG_RCX, UC_X86_REG_R8, UC_X86_REG_R9)


def _signed(v: int) -> int:
    """A register as the int64 bit pattern events carry in a and b."""
    return v - (1 << 64) if v >> 63 else v


def _is_call_to(code: bytes, site: int, target: int) -> bool:
    return code[0] == 0xE8 and site + 5 + int.from_bytes(code[1:5], "little", signed=True) == target
