"""The machine's guest memory layout: where the runtime page, the sites'
trampolines, the base image, modules, task stacks, the heap and the tasks' return stacks lie. The images are linked at these
addresses (emu/runs/scenario.py places modules with MODULE_BASE and
MODULE_ALIGN), so they must agree with it."""
from __future__ import annotations

RUNTIME_BASE = 0x0010_0000
FTRACE_STUBS = 0x0018_0000  # each fentry site's own trampoline (csrc/redirect.c)
FTRACE_STUBS_SIZE = 0x2_0000  # room for 4096 sites
BASE_IMAGE = 0x0040_0000
MODULE_BASE = 0x0100_0000
MODULE_ALIGN = 0x0010_0000
STACK_BASE = 0x1000_0000
STACK_SIZE = 0x4000          # THREAD_SIZE on x86-64
GUARD = 0x1000               # an unmapped page below every stack
HEAP_BASE = 0x2000_0000
HEAP_SIZE = 0x0010_0000
PERCPU_BASE = 0x3000_0000    # one per-CPU area per task (emu/images/percpu.py), behind %gs
GRAPH_BASE = 0x4000_0000     # each task's function-graph return stack (csrc/emu.h, "function exits")
GRAPH_STRIDE = 0x1000        # one page: 127 records


def stack_of(tid: int) -> tuple[int, int]:
    """Task tid's stack [lo, hi), above its guard page."""
    lo = STACK_BASE + tid * (STACK_SIZE + GUARD) + GUARD
    return lo, lo + STACK_SIZE


def in_guard(addr: int, stack_lo: int) -> bool:
    """Whether addr lies in the guard page below the stack that starts at stack_lo."""
    return stack_lo - GUARD <= addr < stack_lo


def page_up(n: int) -> int:
    return (n + 0xfff) & ~0xfff


def align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a
