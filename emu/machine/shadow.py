"""Shadow variables (kernel/livepatch/shadow.c): data a patch attaches to an
existing object without changing its layout, keyed by (object address, id).

The API is the kernel's own (klp_shadow_* are functions of vmlinux, there
whether or not a patch is loaded), so every machine has it from the start
(Machine.shadow): guest code may call it before any model exists (the
probe, a run's prefix) and under every model alike; a machine's snapshot
takes its state with the heap's memory.

- alloc() of a pair that exists warns "Duplicate shadow variable" and
  returns NULL (0); get_or_alloc() returns the existing data instead and
  does not call the constructor; a new variable's data is zeroed, then the
  constructor (if any) fills it, and if the constructor fails nothing is
  attached.
- free() and free_all() detach the variable, call the destructor (if any)
  with the object and the data, then release the memory.

Data lives in guest memory (the machine's heap, HEAP_BASE..+HEAP_SIZE), so
guest code reads and writes it directly. Guest code reaches the API through
hypercalls (lpemu.h: lpemu_shadow_alloc and friends, without constructors
or destructors); Python callers (callbacks, tests) call the methods, whose
constructors are `ctor(obj, data, ctor_data) -> 0 or -errno` and
destructors `dtor(obj, data)`, with guest addresses.
"""
from __future__ import annotations

from bisect import insort
from typing import TYPE_CHECKING

from emu.errors import check_callable, check_int
from emu.machine import hypercall
from emu.machine.layout import HEAP_BASE, HEAP_SIZE

if TYPE_CHECKING:
    from emu.machine.machine import Machine

ALIGN = 16
_WORD = (1 << 64) - 1


class Heap:
    """First-fit allocator over the machine's heap; blocks are zeroed when
    handed out (kzalloc). Returns 0 when no block is large enough."""

    def __init__(self, machine: "Machine", base: int = HEAP_BASE, size: int = HEAP_SIZE):
        self.m = machine
        self.base = base
        self.size = size
        self.free_blocks: list[tuple[int, int]] = [(base, size)]   # sorted (addr, size)
        self.used: dict[int, int] = {}                            # addr -> size

    def alloc(self, size: int) -> int:
        size = max(ALIGN, -(-size // ALIGN) * ALIGN)
        for i, (addr, avail) in enumerate(self.free_blocks):
            if avail >= size:
                if avail == size:
                    del self.free_blocks[i]
                else:
                    self.free_blocks[i] = (addr + size, avail - size)
                self.used[addr] = size
                self.view(addr, size)[:] = bytes(size)
                return addr
        return 0

    def free(self, addr: int) -> None:
        """Release a block from alloc(); ValueError for anything else (a
        double free is a bug in the caller, not in the guest)."""
        size = self.used.pop(addr, None)
        if size is None:
            raise ValueError(f"heap: {addr:#x} is not an allocated block")
        insort(self.free_blocks, (addr, size))
        merged: list[tuple[int, int]] = []
        for a, s in self.free_blocks:
            if merged and merged[-1][0] + merged[-1][1] == a:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((a, s))
        self.free_blocks = merged

    def view(self, addr: int, size: int) -> memoryview:
        if not (self.base <= addr and addr + size <= self.base + self.size):
            raise ValueError(f"heap: {addr:#x}+{size:#x} is outside the heap")
        off = addr - HEAP_BASE
        return self.m.heap[off:off + size]


class ShadowVars:
    """The shadow variables of one machine (Machine.shadow, made with the
    machine). Registers the guest's hypercalls unless hypercalls=False."""

    def __init__(self, machine: "Machine", *, hypercalls: bool = True):
        self.m = machine
        self.heap = Heap(machine)
        self.vars: dict[tuple[int, int], tuple[int, int]] = {}   # (obj, id) -> (data, size)
        if hypercalls:
            machine.hypercalls[hypercall.SHADOW_ALLOC] = self._hc_alloc
            machine.hypercalls[hypercall.SHADOW_GET] = self._hc_get
            machine.hypercalls[hypercall.SHADOW_GET_OR_ALLOC] = self._hc_get_or_alloc
            machine.hypercalls[hypercall.SHADOW_FREE] = self._hc_free
            machine.hypercalls[hypercall.SHADOW_FREE_ALL] = self._hc_free_all

    # ---- snapshots (emu/machine/snapshot.py) ---------------------------------------------
    def state(self) -> tuple:
        """What a snapshot keeps: the variables and the heap's bookkeeping
        (the heap's bytes are guest memory, which the C core's snapshot takes)."""
        return dict(self.vars), list(self.heap.free_blocks), dict(self.heap.used)

    def set_state(self, state: tuple) -> None:
        variables, free_blocks, used = state
        self.vars, self.heap.free_blocks, self.heap.used = dict(variables), list(free_blocks), dict(used)

    # ---- the API (klp_shadow_*) ----------------------------------------------------
    # obj and id are guest words (a pointer, an unsigned long: signed or not,
    # as a register holds them; one variable either way, kept unsigned), a
    # size one of size_t; TypeError or ValueError naming the one that is
    # not, before anything changes.
    @staticmethod
    def _check(what: str, obj=0, sid=0, size=0, fns=()) -> tuple[int, int]:
        check_int(obj, f"shadow {what}: obj", -2**63, 2**64 - 1)
        check_int(sid, f"shadow {what}: id", -2**63, 2**64 - 1)
        check_int(size, f"shadow {what}: size", 0, 2**64 - 1)
        for key, fn in fns:
            if fn is not None:
                check_callable(fn, f"shadow {what}: {key}")
        return obj & _WORD, sid & _WORD

    def get(self, obj: int, sid: int) -> int:
        """The data address of <obj, sid>, or 0."""
        obj, sid = self._check("get", obj, sid)
        var = self.vars.get((obj, sid))
        return var[0] if var else 0

    def alloc(self, obj: int, sid: int, size: int, ctor=None, ctor_data=None) -> int:
        """Attach a new variable: its data address, or 0 when <obj, sid>
        exists (with a warning), memory is short or the constructor fails."""
        obj, sid = self._check("alloc", obj, sid, size, (("ctor", ctor),))
        return self._get_or_alloc(obj, sid, size, ctor, ctor_data, warn_on_exist=True)

    def get_or_alloc(self, obj: int, sid: int, size: int, ctor=None, ctor_data=None) -> int:
        """The existing variable's data (the constructor is not called), or a
        new one as alloc(); 0 on failure."""
        obj, sid = self._check("get_or_alloc", obj, sid, size, (("ctor", ctor),))
        return self._get_or_alloc(obj, sid, size, ctor, ctor_data, warn_on_exist=False)

    def free(self, obj: int, sid: int, dtor=None) -> None:
        obj, sid = self._check("free", obj, sid, fns=(("dtor", dtor),))
        var = self.vars.pop((obj, sid), None)
        if var is not None:
            self._release(obj, var, dtor)

    def free_all(self, sid: int, dtor=None) -> None:
        """Free every <*, sid> variable."""
        _, sid = self._check("free_all", sid=sid, fns=(("dtor", dtor),))
        for key in [k for k in self.vars if k[1] == sid]:
            self._release(key[0], self.vars.pop(key), dtor)

    # ---- guest memory helpers for Python callers -------------------------------------------
    def read_word(self, addr: int) -> int:
        return int.from_bytes(self.m.engine.view(addr, 8), "little")

    def write_word(self, addr: int, value: int) -> None:
        self.m.engine.view(addr, 8)[:] = (value & (2**64 - 1)).to_bytes(8, "little")

    # ---- internals ---------------------------------------------------------------------------
    def _get_or_alloc(self, obj, sid, size, ctor, ctor_data, *, warn_on_exist):
        existing = self.get(obj, sid)
        if existing:
            if warn_on_exist:
                self.m.printk(f"Duplicate shadow variable <{obj:016x}, {sid:x}>")
                return 0
            return existing
        data = self.heap.alloc(size)
        if not data:
            return 0
        if ctor is not None:
            try:
                err = ctor(obj, data, ctor_data)
                if err is not None:
                    check_int(err, f"shadow <{obj:016x}, {sid:x}>: the constructor's return value (0 or -errno)",
                              -2**31, 2**31 - 1)
            except BaseException:
                self.heap.free(data)        # nothing attached, nothing kept
                raise
            if err:
                self.heap.free(data)
                self.m.printk(f"livepatch: Failed to construct shadow variable <{obj:016x}, {sid:x}> ({err})")
                return 0
        self.vars[(obj, sid)] = (data, size)
        return data

    def _release(self, obj: int, var: tuple[int, int], dtor) -> None:
        # Detached first, then the destructor sees the data, then it is freed.
        if dtor is not None:
            dtor(obj, var[0])
        self.heap.free(var[0])

    # a guest's size is a size_t: the register's bits, unsigned (a -1 from C
    # asks for 2**64 - 1 bytes, which kzalloc refuses: the call returns NULL)
    def _hc_alloc(self, machine, task, args) -> int:
        obj, sid, size = args
        return self.alloc(obj, sid, size & (2**64 - 1))

    def _hc_get(self, machine, task, args) -> int:
        return self.get(args[0], args[1])

    def _hc_get_or_alloc(self, machine, task, args) -> int:
        obj, sid, size = args
        return self.get_or_alloc(obj, sid, size & (2**64 - 1))

    def _hc_free(self, machine, task, args) -> int:
        self.free(args[0], args[1])
        return 0

    def _hc_free_all(self, machine, task, args) -> int:
        self.free_all(args[0])
        return 0
