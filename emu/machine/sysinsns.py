"""Instructions of a machine's images whose answer is not the guest's: time
stamps and random numbers the emulator answers, privileged instructions that
fault, far moves of rsp after which rsp is checked (emu/engine/sysinsn.py
finds them; csrc/sysinsn.c hooks them, and its Python twin on a machine
built with accel="python")."""
from __future__ import annotations

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from emu.engine import core, sysinsn
from emu.images.image import Image
from emu.machine.layout import GUARD


class SysInsns:
    """The hooks of one machine. tasks: the machine's task list (read for
    the loaded task's CPU and each task's stack). sink: the redirect twin
    whose error slot the scheduler raises (None with accel="c")."""

    def __init__(self, engine: core.Engine, tasks: list, sink=None):
        self.engine = engine
        self.tasks = tasks
        self.twin = None
        if sink is not None:
            self.twin = sysinsn.PySysInsn(engine, self._current_cpu, self._stack_of, sink)

    def hook(self, image: Image) -> None:
        """Answer or refuse image's time stamps, random numbers and
        privileged instructions, and check rsp after far moves of it."""
        md = Cs(CS_ARCH_X86, CS_MODE_64)
        for fn in image.functions.values():
            for s in sysinsn.classify(md, image.read(fn.start, fn.end - fn.start), fn.start, guard=GUARD):
                self.engine.add_sysinsn(s.addr, s.size, s.kind, s.arg)
                if self.twin is not None:
                    self.twin.add(s)

    def seed(self, seed: int) -> None:
        """Seed what rdrand and rdseed return from here on."""
        self.engine.rng = seed
        if self.twin is not None:
            self.twin.rng = seed & (2**64 - 1)

    def _current_cpu(self) -> int:
        tid = self.engine.current
        return self.tasks[tid].cpu if 0 <= tid < len(self.tasks) else 0

    def _stack_of(self, tid: int) -> tuple[int, int] | None:
        if 0 <= tid < len(self.tasks) and self.tasks[tid].stack_hi:
            return self.tasks[tid].stack_lo, self.tasks[tid].stack_hi
        return None
