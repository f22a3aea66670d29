"""The pure-Python twin of csrc/redirect.c: the same three hooks through the
Unicorn binding (the trampoline, the site watch, the int3 of a text_poke_bp),
the same choice of target and the same events.

It runs when a machine is built with accel="python". Where the C hook stores
the target in the trampoline's jump slot and lets the jump run, this twin
writes RIP through the binding (the jump never runs): the trampoline is one
instruction of virtual time either way, so the traces are the same.

Exceptions never propagate out of a hook: the first one is kept, the run is
stopped, and the machine raises it (the binding's own re-raise lives in
Uc.emu_start, which the C core does not use).
"""
from __future__ import annotations

from unicorn import UC_HOOK_CODE, UC_HOOK_INTR
from unicorn.x86_const import UC_X86_REG_RIP, UC_X86_REG_RSP

from emu.engine import core
from emu.engine.core import UNPATCHED
from emu.images.image import FENTRY_NOP


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
        self._hooks = [self.uc.hook_add(UC_HOOK_CODE, self._tramp, None, machine.runtime.trampoline,
                                        machine.runtime.trampoline),
                       self.uc.hook_add(UC_HOOK_INTR, self._intr)]
        self.uc.ctl_remove_cache(machine.runtime.trampoline, machine.runtime.trampoline + 1)

    def add_site(self, idx: int, addr: int, func_id: int) -> None:
        self.addr[addr] = idx
        self.func[idx] = func_id
        self.entries[idx] = []
        self.poke[idx] = core.POKE_NONE
        self._hooks.append(self.uc.hook_add(UC_HOOK_CODE, self._watch, idx, addr, addr))
        self.uc.ctl_remove_cache(addr, addr + 1)

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
        self.engine.push_event(core.EV_ENTRY, self.engine.current, self.func[idx], version, rsp, clock)

    def _tramp(self, uc, addr, size, _):
        try:
            rsp = uc.reg_read(UC_X86_REG_RSP)
            ret = int.from_bytes(uc.mem_read(rsp, 8), "little")
            idx = self.addr.get(ret - 5)
            if idx is None:
                raise core.CoreError(f"the ftrace trampoline was called from {ret - 5:#x}, which is no fentry site")
            self._enter(idx, rsp + 8, self.engine.now(addr))
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised by the machine
            self._fail(exc)

    def _watch(self, uc, addr, size, idx):
        try:
            code = bytes(self.engine.view(addr, 5))
            if code == FENTRY_NOP:
                self.engine.push_event(core.EV_ENTRY, self.engine.current, self.func[idx], 0,
                                       uc.reg_read(UC_X86_REG_RSP), self.engine.now(addr))
            elif code[0] != 0xCC and not _is_call_to(code, addr, self.m.runtime.trampoline):
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
                self.engine.push_event(core.EV_ENTRY, self.engine.current, self.func[idx], 0, rsp,
                                       self.engine.now(rip - 1))
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)


def _is_call_to(code: bytes, site: int, target: int) -> bool:
    return code[0] == 0xE8 and site + 5 + int.from_bytes(code[1:5], "little", signed=True) == target
