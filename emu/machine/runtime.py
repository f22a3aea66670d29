"""The runtime page: the guest code every machine has besides its images.

- `task_user`: a user task's loop: enter the kernel, call the entry function
  with its arguments, return to user (the RETURN_TO_USER hypercall), again.
- `task_kthread`: a kthread calls its entry function once; if it returns,
  the kthread exits with the returned value.
- `task_once`: a user task born to make one system call (a module's
  loader: insmod or rmmod, Machine.fork): it calls its entry function (the
  module's init or exit) once, reports the result (FUNCTION_DONE), returns
  to user (a kernel exit) and exits with the result.
- each fentry site's own trampoline (as each ftrace_ops has its own, and
  livepatch one ops per function): an enabled site calls it. The C core
  writes it (csrc/redirect.c): it pops the fentry call's return address
  and jumps through its slot, which the core keeps the function
  klp_ftrace_handler would choose for the loaded task. The hooks (C, or
  its Python twin) see each call at its first instruction; it is one
  instruction of virtual time. The trampolines lie in their own region
  (`regs`), outside this page.
- `ftrace_return`: the return trampoline (the kernel's return_to_handler).
  A traced function's return address is diverted here at its entry; the
  hook at this jump (C, or its Python twin) records the exit and sends the
  task to the real return address, kept on the task's return stack
  (csrc/emu.h, "function exits"). It takes no virtual time.

Unwind information, as the kernel gives its own assembly (ORC_TABLE):
between kernel entries (the task loops) a task has no kernel frame at all
(`empty`); a trampoline is entered by the fentry call, so at its first
instruction the frame is CFA = rsp + 8 with rbp untouched, and a walk goes
on into the traced function at its first instruction (as
ftrace_regs_caller's unwind hints let the kernel's ORC unwinder do); no
task stops further in (its first block holds the one instruction of
virtual time). The return trampoline runs after the function's frame is
gone and before the caller's is found again: its unwind information is
undefined (as return_to_handler's UNWIND_HINT_UNDEFINED), so a walk from
there is unreliable. A task never stops there anyway.

r12 points at the task block at the top of the task's stack: the entry
address and six argument words. It is callee-saved, so it survives the call.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from emu.images.orc import REG_SP, REG_UNDEFINED, TYPE_TRAMPOLINES, TYPE_UNDEFINED, OrcEntry, OrcTable
from emu.engine import core
from emu.machine import hypercall

# The entry function called with the six argument words of the task block.
_CALL_ENTRY = """\
    mov rdi, qword ptr [r12 + 0x8]
    mov rsi, qword ptr [r12 + 0x10]
    mov rdx, qword ptr [r12 + 0x18]
    mov rcx, qword ptr [r12 + 0x20]
    mov r8, qword ptr [r12 + 0x28]
    mov r9, qword ptr [r12 + 0x30]
    call qword ptr [r12]
"""

SOURCE = f"""
task_user:
{_CALL_ENTRY}    mov eax, {hypercall.RETURN_TO_USER}
    syscall
    jmp task_user
task_kthread:
{_CALL_ENTRY}    mov rdi, rax
    mov eax, {hypercall.EXIT}
    syscall
    ud2
task_once:
{_CALL_ENTRY}    mov rbx, rax
    mov rdi, rax
    mov eax, {hypercall.FUNCTION_DONE}
    syscall
    mov eax, {hypercall.RETURN_TO_USER}
    syscall
    mov rdi, rbx
    mov eax, {hypercall.EXIT}
    syscall
    ud2
ftrace_return:
    jmp qword ptr [rip + ftrace_return_target]
.Lreturn_stray:
    ud2
ftrace_return_target:
    .quad .Lreturn_stray
"""

TASK_BLOCK = 64      # bytes at the top of a stack: entry + 6 args, padded
FRAME_GAP = 128      # initial rsp = stack top - FRAME_GAP (16-byte aligned)


@dataclass(frozen=True)
class Runtime:
    base: int
    size: int
    code: bytes
    insn_starts: tuple[int, ...]
    task_user: int
    task_kthread: int
    task_once: int
    user_ret: int       # return address of a user task's entry frame
    kthread_ret: int
    once_ret: int
    ret_trampoline: int     # the return trampoline (return_to_handler)
    empty: tuple[int, int]  # the task loops: a rip here has no kernel frame
    regs: tuple[int, int]   # the sites' trampolines: register frames (fp walks cannot vouch for them)
    orc: OrcTable           # unwind information of the page and of the trampolines

    def contains(self, addr: int) -> bool:
        return self.base <= addr < self.base + len(self.code)

    def trampoline(self, site: int) -> int:
        """The trampoline of the C core's site index site."""
        return self.regs[0] + site * core.STUB_SIZE

    def trampoline_at(self, addr: int) -> int | None:
        """The site index whose trampoline holds addr, or None."""
        if not self.regs[0] <= addr < self.regs[1]:
            return None
        return (addr - self.regs[0]) // core.STUB_SIZE


@functools.lru_cache(maxsize=4)
def build(base: int, stubs: tuple[int, int]) -> Runtime:
    """Assemble the runtime page at base (every instruction checked by
    capstone), with the unwind information of the sites' trampolines in
    stubs = (address, size). A pure function of its arguments, so machines
    share the result (Runtime is frozen)."""
    from emu.images.asm import assemble

    image = assemble(SOURCE, base=base, name="runtime", source="<runtime>")
    code = b"".join(seg.data for seg in image.segments)
    starts = tuple(image.insn_starts())
    sym = image.symbols

    def after_call(label):
        # the instruction after the entry call: its return address
        call_at = [a for a in starts if a >= sym[label] and code[a - base:a - base + 2] == b"\x41\xff"][0]
        return starts[starts.index(call_at) + 1]

    ret = sym["ftrace_return"]
    lo, hi = stubs[0], stubs[0] + stubs[1] // core.STUB_SIZE * core.STUB_SIZE
    # ORC_TABLE: every instruction of the page undefined; the trampolines,
    # one entry by rule: at each one's first instruction CFA = rsp + 8 (rbp
    # unchanged), anywhere else undefined.
    undefined = OrcEntry(REG_UNDEFINED, 0, REG_UNDEFINED, 0, TYPE_UNDEFINED)
    orc = OrcTable([base, base + len(code), lo, hi],
                   [undefined, undefined, OrcEntry(REG_SP, 8, REG_UNDEFINED, 0, TYPE_TRAMPOLINES), undefined])
    return Runtime(base, len(code), code, starts, sym["task_user"], sym["task_kthread"], sym["task_once"],
                   after_call("task_user"), after_call("task_kthread"), after_call("task_once"), ret,
                   (base, ret), (lo, hi), orc)
