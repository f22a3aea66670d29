"""The per-CPU area kernel code finds behind %gs, as far as the emulator
provides one: what x86-64 kernel code reads there first.

- %gs:0x28, the stack protector's canary (fixed_percpu_data.stack_canary;
  also the symbol __stack_chk_guard that newer kernels name it by);
- pcpu_hot (Linux 6.2+; current_task before): the current task pointer at
  its start, then preempt_count (0: process context) and cpu_number.

Kernel objects bind these symbols to the absolute offsets below (as the
kernel links per-CPU symbols zero-based), so `mov %gs:sym` reads the area
whatever the addressing form. Each task's %gs base (saved with its context;
tasks do not migrate) points at an area that holds its CPU's canary and the
task itself as current, which is what those reads return in the kernel.
Other per-CPU variables are not provided: kobject refuses code that uses them.
"""

from __future__ import annotations

import struct

__all__ = ["AREA_SIZE", "CANARY", "CURRENT", "PREEMPT_COUNT", "CPU_NUMBER", "TASK_BLOCK",
           "SYMBOLS", "canary", "area"]

AREA_SIZE = 0x1000
CANARY = 0x28
CURRENT = 0x40
PREEMPT_COUNT = 0x48
CPU_NUMBER = 0x4C
TASK_BLOCK = 0x800          # a zeroed stand-in for the task_struct `current` points to

# per-CPU symbols a kernel object may use -> their offset in the area
SYMBOLS = {"__stack_chk_guard": CANARY, "fixed_percpu_data": 0, "pcpu_hot": CURRENT,
           "current_task": CURRENT, "__preempt_count": PREEMPT_COUNT, "cpu_number": CPU_NUMBER}


def canary(cpu: int) -> int:
    """The canary of a CPU: deterministic (runs are reproducible), low byte
    zero as the kernel's (a string overflow cannot write it)."""
    return (0x5CA1AB1E_00C0FF00 ^ (cpu << 40)) & ~0xFF


def area(cpu: int, base: int) -> bytes:
    """The AREA_SIZE bytes of an area mapped at base, for a task on cpu."""
    buf = bytearray(AREA_SIZE)
    struct.pack_into("<Q", buf, CANARY, canary(cpu))
    struct.pack_into("<Q", buf, CURRENT, base + TASK_BLOCK)
    struct.pack_into("<i", buf, CPU_NUMBER, cpu)
    return bytes(buf)
