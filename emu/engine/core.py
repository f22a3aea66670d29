"""The engine: a Unicorn instance shared with the C core.

This is the only module that touches the cffi ``ffi``/``lib`` of the C core;
no cdata leaves it. C functions return codes, and ``_check`` turns them into
exceptions in this one place.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import operator
import struct
import threading
import weakref
from enum import IntEnum
from importlib import metadata
from pathlib import Path
from collections.abc import Sequence
from typing import NamedTuple

import unicorn  # must come before the extension: one libunicorn for both
from unicorn import Uc, UC_ARCH_X86, UC_MODE_64
from unicorn.unicorn_py3 import unicorn as _binding

from emu.errors import CoreError, EngineBusy, EngineClosed, StaleBuild, StateError, check_int, check_type
from emu.engine import unwind
from emu.engine.unwind import UNWINDERS, StackCheck

try:
    from emu._core_c import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise StaleBuild(f"the C core is not built ({exc}); run `make build`") from None

__all__ = ["Engine", "Stop", "Event", "EventLog", "Snapshot", "SchedState", "TaskRecord", "CpuRecord",
           "StopReason", "FaultKind", "EventKind", "TaskState", "TaskKind", "SchedReturn", "Poke",
           "Ranges", "OrcArrays", "StackTasks", "StackChecker", "TaskWalker", "walk_fp", "walk_orc", "ranges_hit",
           "stack_scan",
           "handover_find", "units_check", "promise_scan"]

# ---- build checks ---------------------------------------------------------


def _expected_stamp() -> tuple[str, str | None]:
    """Package version, and the hash of csrc/ when running from a source tree."""
    try:
        version = metadata.version("livepatch-emu")
    except metadata.PackageNotFoundError:  # pragma: no cover
        version = None
    csrc = Path(__file__).resolve().parent.parent.parent / "csrc"
    digest = None
    if csrc.is_dir():
        h = hashlib.sha256()
        for path in sorted(csrc.glob("*.[ch]")):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
        digest = h.hexdigest()[:12]
    return version, digest


def _check_build() -> None:
    stamp = ffi.string(lib.emu_build_stamp()).decode()
    built_version, _, built_digest = stamp.partition("+")
    version, digest = _expected_stamp()
    if (version and built_version != version) or (digest and built_digest != digest):
        raise StaleBuild(
            f"the C core was built from other sources (built {stamp}, expected "
            f"{version}+{digest}); rebuild it with `make build`")
    ours = lib.emu_uc_hook_add_address()
    theirs = ctypes.cast(_binding.uclib.uc_hook_add, ctypes.c_void_p).value
    if ours != theirs:
        raise StaleBuild("the C core and the unicorn binding loaded two different libunicorn "
                         "copies; reinstall with `make build`")


_check_build()

# ---- constants of emu.h -----------------------------------------------------------


def _enum(name: str, prefix: str, doc: str) -> type[IntEnum]:
    """An IntEnum of every lib constant named prefix + MEMBER (as brotlicffi's
    _api.py does): the header stays the one home of the numbers."""
    members = {k[len(prefix):]: getattr(lib, k) for k in sorted(dir(lib)) if k.startswith(prefix)}
    enum = IntEnum(name, members, module=__name__)
    enum.__doc__ = doc
    return enum


StopReason = _enum("StopReason", "EMU_STOP_", "Why emu_run came back (EMU_STOP_*).")
FaultKind = _enum("FaultKind", "EMU_FAULT_", "What a guest fault was (EMU_FAULT_*).")
EventKind = _enum("EventKind", "EMU_EV_", "What an event of the trace records (EMU_EV_*).")
TaskState = _enum("TaskState", "EMU_TS_", "A task's run state in the scheduler (EMU_TS_*).")
TaskKind = _enum("TaskKind", "EMU_TK_", "A task's kind in the scheduler (EMU_TK_*).")
SchedReturn = _enum("SchedReturn", "EMU_SR_", "Why the scheduler loop came back to Python (EMU_SR_*).")
Poke = _enum("Poke", "EMU_POKE_", "The instruction a text_poke_bp is writing at a site (EMU_POKE_*).")

# a task's patch state (klp_patch_state)
UNDEFINED, UNPATCHED, PATCHED = lib.EMU_UNDEFINED, lib.EMU_UNPATCHED, lib.EMU_PATCHED

STOP_BUDGET = lib.EMU_STOP_BUDGET
STOP_HYPERCALL = lib.EMU_STOP_HYPERCALL
STOP_FAULT = lib.EMU_STOP_FAULT
STOP_EVENTS_FULL = lib.EMU_STOP_EVENTS_FULL
STOP_REQUESTED = lib.EMU_STOP_REQUESTED

EV_ENTRY = lib.EMU_EV_ENTRY
EV_OBSERVE = lib.EMU_EV_OBSERVE
EV_TORN = lib.EMU_EV_TORN
EV_RETURN = lib.EMU_EV_RETURN
EV_UNWOUND = lib.EMU_EV_UNWOUND
EV_RET_UNTRACED = lib.EMU_EV_RET_UNTRACED
EV_ARGS = lib.EMU_EV_ARGS
EV_ARGS_HI = lib.EMU_EV_ARGS_HI
GRAPH_HEADER = lib.EMU_GRAPH_HEADER
GRAPH_RECORD = lib.EMU_GRAPH_RECORD
STUB_SIZE = lib.EMU_STUB_SIZE
EV_KERNEL_EXIT = lib.EMU_EV_KERNEL_EXIT
EV_SAFE_POINT = lib.EMU_EV_SAFE_POINT
EV_SLEEP = lib.EMU_EV_SLEEP
EV_WAKE = lib.EMU_EV_WAKE
EV_PATCH_STATE = lib.EMU_EV_PATCH_STATE
EV_YIELD = lib.EMU_EV_YIELD
EV_EXIT = lib.EMU_EV_EXIT
EV_SCHED_IN = lib.EMU_EV_SCHED_IN
EV_SCHED_OUT = lib.EMU_EV_SCHED_OUT
EV_TRANSITION = lib.EMU_EV_TRANSITION
EV_STOP_MACHINE = lib.EMU_EV_STOP_MACHINE
EV_MODULE = lib.EMU_EV_MODULE

# The hypercalls the C core handles itself (copies of emu/include/lpemu.h,
# held to it by tests/test_machine.py).
SCHED_HYPERCALLS = {k[len("EMU_HC_"):]: getattr(lib, k) for k in dir(lib) if k.startswith("EMU_HC_")}

POKE_NONE = lib.EMU_POKE_NONE
POKE_TO_CALL = lib.EMU_POKE_TO_CALL
POKE_TO_NOP = lib.EMU_POKE_TO_NOP

SITE_MAX_ENTRIES = lib.EMU_SITE_MAX_ENTRIES
#: the most tasks and CPUs a machine's scheduler holds (csrc/sched.c, emu_sched_bytes)
MAX_TASKS = lib.EMU_SCHED_MAX_TASKS
MAX_CPUS = lib.EMU_SCHED_MAX_CPUS
FAULT_INTERRUPT = lib.EMU_FAULT_INTERRUPT
FAULT_INVALID_INSN = lib.EMU_FAULT_INVALID_INSN
FAULT_PRIVILEGED = lib.EMU_FAULT_PRIVILEGED
FAULT_STACK_OVERFLOW = lib.EMU_FAULT_STACK_OVERFLOW
FAULT_NULL_CALL = lib.EMU_FAULT_NULL_CALL
FETCH_FAULTS = frozenset({lib.EMU_FAULT_UNMAPPED_FETCH, lib.EMU_FAULT_PROT_FETCH})
WRITE_FAULTS = frozenset({lib.EMU_FAULT_UNMAPPED_WRITE, lib.EMU_FAULT_PROT_WRITE})

# instructions whose answer is not the guest's (csrc/sysinsn.c, emu/engine/sysinsn.py)
SI_RDTSC, SI_RDTSCP, SI_RDRAND, SI_RDSEED = lib.EMU_SI_RDTSC, lib.EMU_SI_RDTSCP, lib.EMU_SI_RDRAND, lib.EMU_SI_RDSEED
SI_PRIVILEGED, SI_STACK_CHECK = lib.EMU_SI_PRIVILEGED, lib.EMU_SI_STACK_CHECK
DATA_FAULTS = frozenset({lib.EMU_FAULT_UNMAPPED_READ, lib.EMU_FAULT_UNMAPPED_WRITE,
                         lib.EMU_FAULT_UNMAPPED_FETCH, lib.EMU_FAULT_PROT_READ,
                         lib.EMU_FAULT_PROT_WRITE, lib.EMU_FAULT_PROT_FETCH})

FAULT_NAMES = {
    lib.EMU_FAULT_UNMAPPED_READ: "read of unmapped memory",
    lib.EMU_FAULT_UNMAPPED_WRITE: "write to unmapped memory",
    lib.EMU_FAULT_UNMAPPED_FETCH: "fetch from unmapped memory",
    lib.EMU_FAULT_PROT_READ: "read of protected memory",
    lib.EMU_FAULT_PROT_WRITE: "write to protected memory",
    lib.EMU_FAULT_PROT_FETCH: "fetch from non-executable memory",
    lib.EMU_FAULT_INVALID_INSN: "invalid instruction",
    lib.EMU_FAULT_INTERRUPT: "exception",
    lib.EMU_FAULT_BAD_TRAMPOLINE: "trampoline entered from no fentry site",
    lib.EMU_FAULT_BAD_RETURN: "return trampoline reached with no return stack record for its slot",
    lib.EMU_FAULT_OTHER: "emulation stopped",
    lib.EMU_FAULT_PRIVILEGED: "privileged instruction",
    lib.EMU_FAULT_STACK_OVERFLOW: "stack overflow",
    lib.EMU_FAULT_NULL_CALL: "call to address 0",
}

_ERRORS = {
    lib.EMU_ENOMEM: "out of memory",
    lib.EMU_EINVAL: "invalid argument",
    lib.EMU_EUC: "unicorn refused",
    lib.EMU_ENOENT: "not found",
    lib.EMU_EFULL: "table full",
    lib.EMU_ERANGE: "out of range",
}

_EVENT = struct.Struct("<QiiqqQ")
assert _EVENT.size == ffi.sizeof("struct emu_event")
_STACK_TASK = struct.Struct("<iiQQQQ")       # struct emu_stack_task
assert _STACK_TASK.size == ffi.sizeof("struct emu_stack_task")
_STACK_RESULT = struct.Struct("<iiiiQQQQ")   # struct emu_stack_result
assert _STACK_RESULT.size == ffi.sizeof("struct emu_stack_result")
for _kind, _value in (("fp", lib.EMU_UNWIND_FP), ("orc", lib.EMU_UNWIND_ORC), ("scan", lib.EMU_UNWIND_SCAN)):
    assert UNWINDERS[_kind] == _value, "emu/engine/unwind.py UNWINDERS disagrees with csrc/emu.h"


def _check(rc: int, what: str, core=None) -> int:
    """Map a negative C return code to CoreError; return rc otherwise."""
    if rc >= 0:
        return rc
    msg = _ERRORS.get(rc, f"error {rc}")
    if rc == lib.EMU_EUC and core is not None:
        err = lib.emu_last_uc_error(core)
        msg += f": {unicorn.UcError(err)}"
    raise CoreError(f"{what}: {msg}")


def _refused(what: str, func, args: dict) -> Exception:
    """What a lib call raises when cffi refused its arguments (an
    OverflowError or TypeError before any C ran): a TypeError or ValueError
    naming the argument at fault and the range of its C type. args: the
    call's arguments after the core, by name, in the order of func's C
    parameters. The check runs only after a refusal: the calls that work
    pay nothing for it."""
    for (name, value), t in zip(args.items(), ffi.typeof(func).args[1:]):
        if t.kind == "primitive" and t.cname not in ("float", "double", "_Bool"):
            bits = 8 * ffi.sizeof(t)
            signed = int(ffi.cast(t, -1)) < 0
            lo, hi = (-(1 << bits - 1), (1 << bits - 1) - 1) if signed else (0, (1 << bits) - 1)
            try:
                check_int(value if not isinstance(value, bool) else int(value), f"{what}: {name}", lo, hi)
            except (TypeError, ValueError) as exc:
                return exc
    return TypeError(f"{what}: the C core cannot take these arguments: "
                     f"{', '.join(f'{k}={v!r}' for k, v in args.items())}")


def _bytes(data, what: str) -> bytes:
    """data as bytes (bytes, bytearray or memoryview); TypeError otherwise."""
    if isinstance(data, bytes):
        return data
    return bytes(check_type(data, (bytes, bytearray, memoryview), what))


_PAGE = 0x1000


def _hold(memory, _ptr) -> None:
    """The destructor of a view's pointer: it does nothing, but holding it
    keeps the engine's memory alive as long as the view lives."""


class _Hold:
    """Engine.hold(): the engine's lock, taken without waiting."""

    __slots__ = ("_lock", "_engine", "_outermost")

    def __init__(self, engine, outermost):
        self._engine = engine
        self._lock = engine._lock
        self._outermost = outermost

    def __enter__(self):
        engine = self._engine
        if not self._lock.acquire(False):
            raise engine._busy(self._outermost or "machine")
        if self._outermost and engine._held:
            self._lock.release()
            raise EngineBusy(f"{self._outermost}: called from inside a run of this machine (an at() callback, "
                             f"a work, a hook or stop_when); return from it and let that run go on")
        engine._held += 1
        return engine

    def __exit__(self, *exc):
        self._engine._held -= 1
        self._lock.release()
        return False


class Snapshot:
    """A snapshot of an engine's core (csrc/snapshot.c), opaque outside this
    module; freed when collected."""

    __slots__ = ("_c",)

    def __init__(self, c):
        self._c = c


class Stop(NamedTuple):
    """Why emu_run came back (EMU_STOP_*), with what the reason carries.
    (A named tuple: the machine makes one per slice, and it must be cheap.)"""
    reason: int
    executed: int
    rip: int
    fault_kind: int = 0
    uc_err: int = 0
    intno: int = 0
    addr: int = 0
    hc_nr: int = 0
    hc_args: tuple[int, int, int] = (0, 0, 0)


_STOP = struct.Struct("<iiiiQQQq3q")      # struct emu_stop
assert _STOP.size == ffi.sizeof("struct emu_stop")


class Engine:
    """One Unicorn engine and the C core that drives it.

    accel="c" puts the redirect, the site watch and the int3 handling in C;
    accel="python" leaves them to the pure-Python twins (emu/engine/redirect.py),
    which hook the same engine through the binding.

    fast_memory=True (the default) selects Unicorn's virtual TLB with a C
    fill hook (csrc/tlb.c), which also reports every unmapped or protected
    access: with no memory hook installed, guest stores to data pages take
    Unicorn's fast path. With the CPU TLB, or with any memory hook, Unicorn
    2.1.4 sends every store down its slow path (a store-heavy loop measured
    about 10x slower). fast_memory=False keeps the CPU TLB and a
    UC_HOOK_MEM_INVALID hook; the tests hold both modes to the same runs.

    Lifetimes: the guest memory and the scheduler state are Python-owned
    buffers the core works on; a view of them (map(), view(),
    sched_init()) keeps them alive, so a view used after close() or after
    the engine was collected reads memory that is no longer the guest's but
    never freed memory. Every call after close() raises EngineClosed.

    Threads: one thread at a time. A call from a second thread while one
    is inside run(), sched_run() or a hold() section raises EngineBusy
    (close() included) instead of racing the C core.
    """

    def __init__(self, *, accel: str = "c", fast_memory: bool = True, event_capacity: int = 1 << 16):
        if accel not in ("c", "python"):
            raise ValueError(f"accel must be 'c' or 'python', not {accel!r}")
        self.accel = accel
        self.fast_memory = fast_memory
        self.event_capacity = event_capacity
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        flags = (lib.EMU_FLAG_ACCEL_C if accel == "c" else 0) | (lib.EMU_FLAG_FAST_MEMORY if fast_memory else 0)
        core = lib.emu_core_new(self.uc._uch.value, flags, event_capacity)
        if core == ffi.NULL:
            raise CoreError("could not create the C core (out of memory or unicorn refused its hooks)")
        self._core = core
        self._memory: list = []     # buffers the core works on (guest memory, scheduler state)
        self._keep = functools.partial(_hold, self._memory)
        self._lock = threading.RLock()
        self._held = 0              # hold() sections this thread is inside (a run is one)
        # The core must go before the Uc it hooks, and the memory after both:
        # the finalizer holds all three.
        self._finalizer = weakref.finalize(self, Engine._free, core, self.uc, self._memory)
        self._stop = ffi.new("struct emu_stop *")
        self._stop_buf = ffi.buffer(self._stop)
        self._ev_cap = 4096
        self._ev_buf = ffi.new("struct emu_event[]", self._ev_cap)
        self._entry_buf = ffi.new("struct emu_entry[]", SITE_MAX_ENTRIES)
        self.graph = (0, 0, 0)        # (return trampoline, base, stride): see graph_init
        self._ev_mask = (1 << 64) - 1

    @staticmethod
    def _free(core, uc, memory):
        lib.emu_core_free(core)
        # Close the engine now rather than when a reference cycle is collected:
        # each one holds its translation cache (megabytes). The binding's own
        # finalizer runs at most once, so this is the only uc_close.
        release = getattr(uc, "_Uc__finalizer", None)
        if release is not None:
            release()

    def close(self) -> None:
        """Free the C core and the engine now (also done when the Engine is
        collected). A closed Engine refuses further use (EngineClosed); views
        keep their memory. EngineBusy when another thread is running it."""
        if not self._lock.acquire(False):
            raise EngineBusy("close: another thread is running this engine")
        try:
            if self._held:
                raise EngineBusy("close: called from inside a run of this engine (an at() callback, a "
                                 "work, a hook or stop_when); close it after run() returns")
            self._finalizer()
            self._core = ffi.NULL
            self.uc = None
        finally:
            self._lock.release()

    @property
    def closed(self) -> bool:
        return self._core == ffi.NULL

    def _closed(self, what: str) -> None:
        if self._core == ffi.NULL:
            raise EngineClosed(f"{what}: the engine is closed")

    def hold(self, outermost: str | None = None):
        """A context in which this thread alone uses the engine: another
        thread's call raises EngineBusy (Machine.run holds it). outermost:
        the name of a call that must not come from inside another hold()
        section of this thread (run() from a callback of a run): EngineBusy
        naming it then."""
        return _Hold(self, outermost)

    def _busy(self, what: str) -> EngineBusy:
        return EngineBusy(f"{what}: another thread is using this engine")

    def _call(self, what: str, func, **args) -> int:
        """func(core, *args), for the calls made once or a few times: the
        arguments cffi refuses are a TypeError or ValueError naming them
        (_refused), a negative code is EngineClosed or CoreError (_check)."""
        try:
            rc = func(self._core, *args.values())
        except (OverflowError, TypeError):
            raise _refused(what, func, args) from None
        return self._check(rc, what)

    def _check(self, rc: int, what: str) -> int:
        """_check, naming a closed engine as such."""
        if rc >= 0:
            return rc
        if self._core == ffi.NULL:
            raise EngineClosed(f"{what}: the engine is closed")
        return _check(rc, what, self._core)

    # -- memory ------------------------------------------------------------
    def map(self, addr: int, size: int, prot: int) -> memoryview:
        """Map guest memory [addr, addr+size), backed by a buffer this engine
        owns; return a writable view of it (which keeps the buffer alive)."""
        check_int(addr, "map: addr", 0, (1 << 64) - 1)
        check_int(prot, "map: prot", 0, 7)
        if not (isinstance(size, int) and 0 < size < 1 << 40 and size % _PAGE == 0):
            raise CoreError(f"map {addr:#x}+{size!r}: invalid argument (size: a multiple of {_PAGE:#x} "
                            f"below 2**40)")
        if not self._lock.acquire(False):
            raise self._busy("map")
        try:
            try:
                buf = ffi.new("uint8_t[]", size + _PAGE)
            except MemoryError:
                raise CoreError(f"map {addr:#x}+{size:#x}: the host has no {size:_} bytes to give") from None
            pad = -int(ffi.cast("uintptr_t", buf)) & (_PAGE - 1)
            self._check(lib.emu_map_host(self._core, addr, size, prot, buf + pad), f"map {addr:#x}+{size:#x}")
            self._memory.append(buf)
        finally:
            self._lock.release()
        return memoryview(ffi.buffer(buf))[pad:pad + size]

    def view(self, addr: int, size: int) -> memoryview:
        """A writable view of mapped guest memory [addr, addr+size) (it keeps
        the engine's memory alive)."""
        self._closed("view")
        try:
            ptr = lib.emu_host_ptr(self._core, addr, size)
        except (OverflowError, TypeError):
            raise _refused("view", lib.emu_host_ptr, {"addr": addr, "size": size}) from None
        if ptr == ffi.NULL:
            raise CoreError(f"no host memory at {addr:#x}+{size:#x}")
        return memoryview(ffi.buffer(ffi.gc(ptr, self._keep), size))

    def add_code(self, base: int, size: int, starts) -> None:
        """Register executable [base, base+size) and its instruction starts."""
        bitmap = bytearray((size + 7) // 8)
        for a in starts:
            off = a - base
            if 0 <= off < size:
                bitmap[off >> 3] |= 1 << (off & 7)
        try:
            rc = lib.emu_add_code(self._core, base, size, ffi.from_buffer(bitmap))
        except (OverflowError, TypeError):
            raise _refused("add code", lib.emu_add_code, {"base": base, "size": size}) from None
        self._check(rc, "add code")

    # -- tasks ----------------------------------------------------------------
    def init_tasks(self, n: int) -> None:
        with self.hold():
            try:
                rc = lib.emu_tasks_init(self._core, n)
            except (OverflowError, TypeError):
                raise _refused("init tasks", lib.emu_tasks_init, {"n": n}) from None
            self._check(rc, "init tasks")

    def switch(self, tid: int) -> None:
        """Save the loaded task's CPU context and load task tid's."""
        if not self._lock.acquire(False):
            raise self._busy("switch")
        try:
            rc = lib.emu_switch(self._core, tid)
        except (OverflowError, TypeError):
            raise _refused("switch", lib.emu_switch, {"tid": tid}) from None
        finally:
            self._lock.release()
        if rc:      # the message is only made on failure: this runs once a slice
            self._check(rc, f"switch to task {tid}")

    @property
    def current(self) -> int:
        self._closed("current task")
        return lib.emu_current(self._core)

    def set_task_state(self, tid: int, state: int) -> None:
        try:
            rc = lib.emu_task_set_state(self._core, tid, state)
        except (OverflowError, TypeError):
            raise _refused("patch state", lib.emu_task_set_state, {"tid": tid, "state": state}) from None
        if rc:
            self._check(rc, f"patch state of task {tid}")

    # -- sites -------------------------------------------------------------------
    def add_site(self, addr: int, func_id: int) -> int:
        with self.hold():
            try:
                rc = lib.emu_site_add(self._core, addr, func_id)
            except (OverflowError, TypeError):
                raise _refused("site", lib.emu_site_add, {"addr": addr, "func_id": func_id}) from None
            return self._check(rc, f"site at {addr:#x}")

    def set_site_entries(self, site: int, entries) -> None:
        """entries: newest first, each (target, version, nop, transition)."""
        if len(entries) > SITE_MAX_ENTRIES:
            raise CoreError(f"more than {SITE_MAX_ENTRIES} replacements stacked on one function")
        buf = self._entry_buf
        for i, (target, version, nop, transition) in enumerate(entries):
            try:
                buf[i].target = target
                buf[i].version = version
            except (OverflowError, TypeError):
                check_int(target, f"site entries: entry {i}: target", 0, (1 << 64) - 1)
                check_int(version, f"site entries: entry {i}: version", -(1 << 31), (1 << 31) - 1)
                raise
            buf[i].nop = 1 if nop else 0
            buf[i].transition = 1 if transition else 0
        with self.hold():
            self._check(lib.emu_site_set_entries(self._core, site, buf, len(entries)), "site entries")

    def set_site_poke(self, site: int, poke: int) -> None:
        try:
            rc = lib.emu_site_set_poke(self._core, site, poke)
        except (OverflowError, TypeError):
            raise _refused("site poke", lib.emu_site_set_poke, {"site": site, "poke": poke}) from None
        self._check(rc, "site poke")


    def set_stubs(self, base: int, size: int) -> None:
        """Each site's own trampoline, at base + site * STUB_SIZE in the
        mapped [base, base + size) (csrc/emu.h). Once."""
        self._call("site trampolines", lib.emu_set_stubs, base=base, size=size)

    def graph_init(self, ret: int, base: int, stride: int) -> None:
        """Trace function exits (csrc/emu.h, "function exits"): ret is the
        return trampoline, every task's return stack is at base + tid *
        stride (mapped). After init_tasks; once."""
        with self.hold():
            self._call("function exits", lib.emu_graph_init, ret=ret, base=base, stride=stride)
        self.graph = (ret, base, stride)

    def graph_of(self, tid: int) -> "Graph":
        """Task tid's return stack as the unwinders take it (read in place)."""
        ret, base, stride = self.graph
        if not ret:
            return Graph()
        return Graph(ret, self.view(base + tid * stride, stride))

    def text_write(self, addr: int, data: bytes) -> None:
        """Write guest code and drop its translations (C fast path; the
        twin is emu/engine/text.py)."""
        if not isinstance(data, bytes):
            data = _bytes(data, f"text write at {addr!r}: data")
        with self.hold():
            try:
                rc = lib.emu_text_write(self._core, addr, data, len(data))
            except (OverflowError, TypeError):
                raise _refused("text write", lib.emu_text_write, {"addr": addr}) from None
        if rc:      # the message is only made on failure: the models write text at every step
            self._check(rc, f"text write at {addr:#x}")

    # -- instructions whose answer is not the guest's (csrc/sysinsn.c) ----------
    def add_sysinsn(self, addr: int, size: int, kind: int, arg: int = 0) -> None:
        """Hook the instruction at addr (core.SI_*; see csrc/emu.h)."""
        self._call(f"instruction at {addr!r}", lib.emu_sysinsn_add, addr=addr, size=size, kind=kind, arg=arg)

    def set_task_stack(self, tid: int, lo: int, hi: int) -> None:
        """Task tid's stack [lo, hi], for the stack checks."""
        self._call(f"stack of task {tid!r}", lib.emu_task_set_stack, tid=tid, lo=lo, hi=hi)

    @property
    def rng(self) -> int:
        """The state rdrand and rdseed draw from (kept in snapshots)."""
        self._closed("rng")
        return lib.emu_rng_state(self._core)

    @rng.setter
    def rng(self, value: int) -> None:
        check_int(value, "rng")
        self._closed("rng")
        lib.emu_rng_seed(self._core, value & _MASK64)

    @staticmethod
    def cpuid(leaf: int, sub: int = 0, cpu: int = 0) -> tuple[int, int, int, int]:
        """(eax, ebx, ecx, edx) of the emulated CPU model (C)."""
        out = ffi.new("uint32_t[4]")
        lib.emu_cpuid(leaf & 0xffffffff, sub & 0xffffffff, cpu & 0xffffffff, out)
        return out[0], out[1], out[2], out[3]

    def skip_insn(self, addr: int, next_addr: int) -> None:
        """In a hook during a run: the instruction at addr retired, go on at next_addr."""
        self._call("skip instruction", lib.emu_skip_insn, addr=addr, next_addr=next_addr)

    def report_fault(self, kind: int, rip: int, addr: int = 0) -> None:
        """In a hook during a run: record a fault (core.FAULT_*) and stop."""
        self._call("report fault", lib.emu_report_fault, kind=kind, rip=rip, addr=addr)

    # -- time and running -----------------------------------------------------
    @property
    def clock(self) -> int:
        clock = lib.emu_clock(self._core)
        if not clock:           # (a closed engine's core answers 0)
            self._closed("clock")
        return clock

    @clock.setter
    def clock(self, value: int) -> None:
        self._closed("clock")
        try:
            lib.emu_set_clock(self._core, value)
        except (OverflowError, TypeError):
            raise _refused("clock", lib.emu_set_clock, {"clock": value}) from None

    @property
    def retired(self) -> int:
        """Guest instructions every run of this engine executed so far: the
        clock without the idle time it jumped or was set over (a snapshot's
        restore does not take it back)."""
        self._closed("retired")
        return lib.emu_retired(self._core)

    def now(self, addr: int) -> int:
        """The clock at instruction addr of the block being run."""
        try:
            return lib.emu_now(self._core, addr)
        except (OverflowError, TypeError):
            raise _refused("now", lib.emu_now, {"addr": addr}) from None

    def run(self, budget: int, precise: bool = False) -> Stop:
        """Run the loaded task for at most budget instructions."""
        if not self._lock.acquire(False):
            raise self._busy("run")
        try:
            rc = lib.emu_run(self._core, budget, 1 if precise else 0, self._stop)
        except (OverflowError, TypeError):
            raise _refused("run", lib.emu_run, {"budget": budget}) from None
        finally:
            self._lock.release()
        if rc:
            self._check(rc, "run")
        reason, uc_err, fault_kind, intno, executed, rip, addr, hc_nr, a, b, c = \
            _STOP.unpack(self._stop_buf)
        return Stop(reason, executed, rip, fault_kind, uc_err, intno, addr, hc_nr, (a, b, c))

    @property
    def last_stop(self) -> Stop:
        """The stop of the last emu_run (also the one the scheduler made)."""
        reason, uc_err, fault_kind, intno, executed, rip, addr, hc_nr, a, b, c = \
            _STOP.unpack(self._stop_buf)
        return Stop(reason, executed, rip, fault_kind, uc_err, intno, addr, hc_nr, (a, b, c))

    # -- the scheduler (csrc/sched.c) ---------------------------------------------
    def sched_init(self, ntasks: int, ncpus: int) -> "SchedState":
        """Allocate the scheduler state (struct emu_sched, csrc/emu.h) and
        return it: fields read by name, changed through C's checked setters."""
        try:
            n = lib.emu_sched_bytes(ntasks, ncpus)
        except (OverflowError, TypeError):
            n = 0
        if not n:
            raise CoreError(f"scheduler state: {ntasks} tasks on {ncpus} CPUs is out of range")
        mem = ffi.new("int64_t[]", n // 8)
        layout = ffi.new("struct emu_sched *")
        with self.hold():
            rc = lib.emu_sched_init(self._core, ntasks, ncpus, mem, n)
            if rc == lib.EMU_ERANGE:
                raise CoreError(f"scheduler state: an event ring of {self.event_capacity} records has no room "
                                f"for a round of {ntasks} tasks on {ncpus} CPUs (it needs more than "
                                f"{ntasks + ncpus + lib.EMU_SCHED_RING_ROOM - 1})")
            self._check(rc, "scheduler state")
            self._memory.append(mem)
            self._check(lib.emu_sched_layout(self._core, layout), "scheduler state")
        return SchedState(self, mem, layout)

    def sched_run(self, until: int, deadline: int) -> int:
        """Run slices until Python is needed (-1: no until / no deadline);
        return the SchedReturn (EMU_SR_*) reason, as an int."""
        if not self._lock.acquire(False):
            raise self._busy("scheduler")
        try:
            rc = lib.emu_sched_run(self._core, until, deadline, self._stop)
        except (OverflowError, TypeError):
            raise _refused("scheduler", lib.emu_sched_run, {"until": until, "deadline": deadline}) from None
        finally:
            self._lock.release()
        if rc < 0:
            self._check(rc, "scheduler")
        return rc

    def sched_fire_wakes(self) -> bool:
        """Between runs of the scheduler: wake the sleepers whose time has
        come, as a round's top does (csrc/sched.c; the twin is
        emu/engine/sched.py's fire_wakes). False (nothing done) when the
        event ring may not hold the wakes: drain it and call again."""
        if not self._lock.acquire(False):
            raise self._busy("scheduler")
        try:
            rc = lib.emu_sched_fire_wakes(self._core)
        finally:
            self._lock.release()
        if rc == lib.EMU_EFULL:
            return False
        self._check(rc, "scheduler: wakes")
        return True

    def request_stop(self) -> None:
        self._closed("request stop")
        lib.emu_request_stop(self._core)

    # -- events -----------------------------------------------------------------
    def push_event(self, kind: int, task: int, a: int, b: int, c: int, clock: int | None = None) -> None:
        """Append an event; clock defaults to now."""
        if clock is None:
            clock = lib.emu_clock(self._core)
        if not self._lock.acquire(False):
            raise self._busy("event push")
        try:
            rc = lib.emu_event_push(self._core, kind, task, a, b, c, clock)
        except (OverflowError, TypeError):
            raise _refused("event push", lib.emu_event_push,
                           {"kind": kind, "task": task, "a": a, "b": b, "c": c, "clock": clock}) from None
        finally:
            self._lock.release()
        if rc:
            self._check(rc, "event push")

    def set_event_mask(self, kinds=None) -> None:
        """Record only events of these kinds (None: every kind, the default).
        Kinds from 64 on are always recorded. Events left out are counted in
        events_dropped. Turning EV_ENTRY off takes the per-call event (and
        Python's cost of draining it) off redirected calls."""
        mask = (1 << 64) - 1
        if kinds is not None:
            mask = 0
            for k in kinds:
                if not 0 <= check_int(k, "event mask: kind") < 64:
                    raise ValueError(f"event kind {k} is always recorded (only kinds 0..63 can be masked)")
                mask |= 1 << k
        lib.emu_set_event_mask(self._core, mask)
        self._ev_mask = mask

    def records(self, kind: int) -> bool:
        """Whether events of this kind are recorded (the mask lets them in)."""
        return kind >= 64 or bool(self._ev_mask >> kind & 1)

    @property
    def events_dropped(self) -> int:
        """Events the mask left out so far."""
        return lib.emu_events_dropped(self._core)

    def events_pending(self) -> int:
        return lib.emu_events_pending(self._core)

    # -- snapshots ----------------------------------------------------------------
    def snapshot(self) -> "Snapshot":
        """Take the core's state (see csrc/snapshot.c); freed when collected."""
        if self._core == ffi.NULL:
            raise EngineClosed("snapshot: the engine is closed")
        with self.hold("snapshot"):
            snap = lib.emu_snapshot_take(self._core)
        if snap == ffi.NULL:
            raise CoreError("snapshot: out of memory or unicorn refused")
        return Snapshot(ffi.gc(snap, lib.emu_snapshot_free))

    def restore(self, snap: "Snapshot") -> None:
        """Put a snapshot back. CoreError when it was taken of another layout
        (the machine mapped memory or added tasks since, or it is another
        machine's), TypeError when it is not a Snapshot."""
        if not isinstance(snap, Snapshot):
            raise TypeError(f"restore: not an engine snapshot: {type(snap).__name__}")
        self._closed("restore")
        with self.hold("restore"):
            rc = lib.emu_snapshot_restore(self._core, snap._c)
        if rc == lib.EMU_ERANGE:
            raise CoreError("restore: the snapshot was taken of another layout (other memory regions, "
                            "tasks or CPUs)")
        self._check(rc, "restore")

    def drain_into(self, log: "EventLog") -> None:
        """Drain the ring into log as packed struct emu_event records, copied
        once, straight from the ring (EventLog keeps them so: the trace then
        costs a copy, not a tuple per event; a long traced run drains
        millions)."""
        n = lib.emu_events_pending(self._core)
        if n <= 0:
            return
        log.extend_raw(ffi.buffer(lib.emu_events_ring(self._core), n * _EVENT.size))
        self._check(lib.emu_events_drop(self._core, n), "events")

    def take_events(self) -> list[Event]:
        """Drain the ring: Events in order."""
        out = []
        while True:
            n = lib.emu_events_take(self._core, self._ev_buf, self._ev_cap)
            if n <= 0:
                return out
            out.extend(map(_make_event, _EVENT.iter_unpack(ffi.buffer(self._ev_buf, n * _EVENT.size))))
            if n < self._ev_cap:
                return out

    # -- stacks -------------------------------------------------------------------
    def walk(self, kind: str, lo: int, hi: int, text: "Ranges", rip: int, rsp: int, rbp: int, *,
             preempted: bool, max_entries: int, end_ret: int, end_slot: int,
             orc: "OrcArrays | None" = None, graph: "Graph | None" = None) -> tuple[int, tuple[int, ...]]:
        """Walk a task's stack in place (host memory, no copy); graph: its
        return stack (Engine.graph_of)."""
        if self._core == ffi.NULL:
            raise EngineClosed("stack walk: the engine is closed")
        ptr = lib.emu_host_ptr(self._core, lo, hi - lo)
        if ptr == ffi.NULL:
            raise CoreError(f"no host memory for the stack {lo:#x}-{hi:#x}")
        return _walk(kind, ptr, lo, hi, text, rip, rsp, rbp, preempted, max_entries, end_ret, end_slot, orc,
                     graph)


    def stack_checker(self, kind: str, text: "Ranges", *, orc: "OrcArrays | None" = None,
                      empty: tuple[int, int] = (0, 0), regs: tuple[int, int] = (0, 0),
                      max_entries: int = 100, reliable: bool = True) -> "StackChecker":
        """A prepared check of many tasks' stacks in one C call (see StackChecker)."""
        return StackChecker(self, kind, text, orc=orc, empty=empty, regs=regs, max_entries=max_entries,
                            reliable=reliable)

    def task_walker(self, kind: str, text: "Ranges", *, orc: "OrcArrays | None" = None,
                    empty: tuple[int, int] = (0, 0), regs: tuple[int, int] = (0, 0),
                    max_entries: int = 100) -> "TaskWalker":
        """A prepared walk of one task's stack at a time, in one C call (see TaskWalker)."""
        return TaskWalker(self, kind, text, orc=orc, empty=empty, regs=regs, max_entries=max_entries)


# ---- the scheduler's state (struct emu_sched) --------------------------------------


def _field(name: str, setter, field_id: int | None):
    """A property over cdata field `name` of self._p; writable through the C
    setter (which checks the value) when field_id is given."""
    get = operator.attrgetter("_p." + name)
    if field_id is None:
        return property(get, doc=f"{name} (read-only)")

    def set(self, value) -> None:
        try:
            rc = setter(self._engine._core, self._i, field_id, value)
        except (OverflowError, TypeError):
            rc = lib.EMU_EINVAL
        if rc:
            self._engine._check(rc, f"scheduler: {type(self).__name__} {self._i}: {name} = {value!r}")
    return property(get, set, doc=name)


def _global(name: str, field_id: int | None):
    get = operator.attrgetter("_g." + name)
    if field_id is None:
        return property(get, doc=f"{name} (read-only)")

    def set(self, value) -> None:
        try:
            rc = lib.emu_sched_set_global(self._engine._core, field_id, value)
        except (OverflowError, TypeError):
            rc = lib.EMU_EINVAL
        if rc:
            self._engine._check(rc, f"scheduler: {name} = {value!r}")
    return property(get, set, doc=name)


class TaskRecord:
    """One task's record in the scheduler state (struct emu_sched_task): the
    fields by name; each assignment goes through emu_sched_set_task, which
    refuses a value out of range (CoreError)."""

    __slots__ = ("_engine", "_p", "_i", "_mem")
    FIELDS = ("state", "kind", "cpu", "wake_at", "interruptible", "preempted", "need_resched", "notify",
              "kernel_entries", "since", "exit_code", "exited", "watch")

    def __init__(self, engine, p, i: int, mem):
        self._engine, self._p, self._i, self._mem = engine, p, i, mem

    def __repr__(self) -> str:
        return f"<TaskRecord {self._i} " + " ".join(f"{f}={getattr(self, f)}" for f in self.FIELDS) + ">"


for _name in TaskRecord.FIELDS:
    setattr(TaskRecord, _name, _field(_name, lib.emu_sched_set_task, getattr(lib, "EMU_TF_" + _name.upper())))


class CpuRecord:
    """One CPU's record (struct emu_sched_cpu) and its run queue; changed
    through emu_sched_set_cpu and emu_sched_set_queue, which check them."""

    __slots__ = ("_engine", "_p", "_i", "_rq", "_tasks", "_mem")

    def __init__(self, engine, p, i: int, rq, tasks, mem):
        self._engine, self._p, self._i, self._rq, self._tasks, self._mem = engine, p, i, rq, tasks, mem

    def runnable(self, skip: int = -1) -> list[int]:
        """The runnable tasks of the run queue in order, but skip (a task id)."""
        tasks = self._tasks
        return [t for t in ffi.unpack(self._rq, self._p.rqlen) if tasks[t].state == lib.EMU_TS_RUNNABLE and t != skip]

    current = _field("current", lib.emu_sched_set_cpu, lib.EMU_CF_CURRENT)
    slices = _field("slices", lib.emu_sched_set_cpu, lib.EMU_CF_SLICES)
    work = _field("work", lib.emu_sched_set_cpu, lib.EMU_CF_WORK)
    goal = _field("goal", lib.emu_sched_set_cpu, lib.EMU_CF_GOAL)
    rqlen = _field("rqlen", None, None)

    @property
    def queue(self) -> list[int]:
        """The run queue's task ids, in order (a copy)."""
        return ffi.unpack(self._rq, self._p.rqlen)

    @queue.setter
    def queue(self, tids) -> None:
        tids = list(tids)
        try:
            rc = lib.emu_sched_set_queue(self._engine._core, self._i, tids, len(tids))
        except (OverflowError, TypeError):
            rc = lib.EMU_EINVAL
        if rc:
            self._engine._check(rc, f"scheduler: run queue of CPU {self._i} = {tids!r}")


class SchedState:
    """The scheduler's state, shared by csrc/sched.c and its Python twin
    (emu/engine/sched.py): the globals as attributes, `tasks` (one
    TaskRecord per task, then one per CPU's idle task) and `cpus` (one
    CpuRecord each). Reads are field reads; every assignment is checked by
    C, so nothing Python sets can send the C loop out of bounds. The block
    is owned here: reading it after the engine closed reads the last state."""

    GLOBALS = ("ntasks", "ncpus", "quantum", "preempt", "tick", "lockup", "policy_rr", "notify_all",
               "each_slice", "sm", "rr", "round_ran", "slice_left", "inslice", "stask", "remain", "pick",
               "next_wake", "check_sm", "after", "preemptions", "rtask", "rcpu", "live", "jitter", "jstate",
               "watch_hit", "quiet", "notify_yield")

    def __init__(self, engine: Engine, mem, layout):
        self._engine = engine
        self._mem = mem
        self._g = layout.g
        nt, nc = layout.g.ntasks, layout.g.ncpus
        self.tasks = tuple(TaskRecord(engine, layout.tasks + i, i, mem) for i in range(nt + nc))
        self.cpus = tuple(CpuRecord(engine, layout.cpus + i, i, layout.rq + i * nt, layout.tasks, mem)
                          for i in range(nc))


for _name in SchedState.GLOBALS:
    setattr(SchedState, _name, _global(_name, getattr(lib, "EMU_SG_" + _name.upper(), None)))


# ---- the trace, kept packed ----------------------------------------------------------


class Event(NamedTuple):
    """One event of the trace (struct emu_event), read by name. What a and b
    mean depends on the kind (csrc/emu.h says it for each EMU_EV_*); key,
    value, func and version name them for observations and entries."""
    clock: int
    kind: int
    task: int
    a: int
    b: int
    c: int

    @property
    def key(self) -> int:
        """EV_OBSERVE: the key observed."""
        return self[3]

    @property
    def value(self) -> int:
        """EV_OBSERVE: the value observed."""
        return self[4]

    @property
    def func(self) -> int:
        """EV_ENTRY, EV_TORN: the function id."""
        return self[3]

    @property
    def version(self) -> int:
        """EV_ENTRY: the version entered (0: the original)."""
        return self[4]


_make_event = Event._make


class EventLog(Sequence):
    """A trace of Events (clock, kind, task, a, b, c), kept packed as the C
    core's struct emu_event records (extend_raw takes them as they come from
    Engine.drain_into) and unpacked only when someone reads the trace,
    once: a run whose trace nobody reads does not pay a tuple per event
    (150-200 ns each, more than a redirected call costs in C), and a hash of
    the trace is a hash of bytes (raw()). Reading it by index or iteration
    gives Events; records() gives the plain tuples, for hot loops.

    It reads like a list of Events (len, indexing, slicing to a list,
    iteration, == with any sequence of 6-tuples); append/extend take
    tuples. An iteration sees the events that were in the log when it
    started."""

    __slots__ = ("_raw", "_list")

    def __init__(self, events=()):
        self._raw = bytearray()
        self._list: list = []      # the first len(_list) events, unpacked
        self.extend(events)

    def _sync(self) -> list:
        done = len(self._list) * _EVENT.size
        if done < len(self._raw):
            self._list.extend(_EVENT.iter_unpack(memoryview(self._raw)[done:]))
        return self._list

    def copy(self) -> "EventLog":
        log = EventLog()
        log._raw = bytearray(self._raw)
        log._list = list(self._list)
        return log

    def raw(self) -> bytes:
        """Every event, packed."""
        return bytes(self._raw)

    def digest(self, seed: int = 0) -> int:
        """digest(raw(), seed), without copying the events."""
        return digest(self._raw, seed)

    def extend_raw(self, raw) -> None:
        """Append packed struct emu_event records."""
        if len(raw) % _EVENT.size:
            raise ValueError("not a whole number of events")
        self._raw += raw

    def append(self, event) -> None:
        self._raw += _EVENT.pack(*event)

    def extend(self, events) -> None:
        for e in events:
            self._raw += _EVENT.pack(*e)

    def __len__(self) -> int:
        return len(self._raw) // _EVENT.size

    def records(self, start: int = 0) -> list[tuple[int, int, int, int, int, int]]:
        """The events from start on as plain (clock, kind, task, a, b, c)
        tuples: for loops that unpack every event of a run (an Event costs
        about 200 ns more a piece)."""
        return self._sync()[start:]

    def of_kind(self, kind: int, start: int = 0) -> list[tuple[int, int, int, int, int, int]]:
        """The events of one kind from start on, as plain tuples in order,
        the others left packed (the C core finds them; a filter of the
        records when they are unpacked already)."""
        n = len(self)
        start = max(0, min(start, n))
        if len(self._list) * _EVENT.size == len(self._raw):
            return [r for r in self._list[start:] if r[1] == kind]
        if start == n:
            return []
        count = ffi.new("size_t *")
        ev = ffi.from_buffer("struct emu_event[]", self._raw) + start
        _check(lib.emu_events_of_kind(ev, n - start, kind, ffi.NULL, 0, count), "select events")
        if not count[0]:
            return []
        out = ffi.new("struct emu_event[]", count[0])
        _check(lib.emu_events_of_kind(ev, n - start, kind, out, count[0], count), "select events")
        return list(_EVENT.iter_unpack(ffi.buffer(out, count[0] * _EVENT.size)))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(map(_make_event, self._sync()[i]))
        return _make_event(self._sync()[i])

    def __iter__(self):
        return map(_make_event, self._sync()[:])

    def __eq__(self, other) -> bool:
        if isinstance(other, EventLog):
            return self._raw == other._raw
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes, bytearray)):
            return self._sync() == [tuple(e) for e in other]
        return NotImplemented

    def __repr__(self) -> str:
        return f"<EventLog of {len(self)} events>"


# ---- judging a finished trace (csrc/handover.c) ---------------------------------------


def digest(data, seed: int = 0) -> int:
    """A 64-bit digest of bytes (csrc/digest.c; the twin is
    emu/engine/digest.py). seed: 0 <= seed < 2**64."""
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"digest: seed {seed} is not a 64-bit unsigned value")
    buf = ffi.from_buffer(data)          # TypeError for what is not a buffer
    return lib.emu_digest(buf, len(buf), seed)


def _events(log: EventLog):
    """log's packed events as a struct emu_event array (no copy), and how many."""
    n = len(log)
    return (ffi.from_buffer("struct emu_event[]", log._raw) if n else ffi.NULL), n


def handover_find(log: EventLog, carriers, regs=(), stacking=()) \
        -> list[tuple[int, int, int, int, int, int, int, int, int]]:
    """Every value handover of log (emu/runs/handover.py's rule, csrc/handover.c):
    (task, clock, fid, version, arg, value, producer fid, producer version,
    produced_at) tuples in trace order. carriers: (function id, patch index)
    pairs, each function with the index of every patch that carries it;
    regs: (function id, version, mask) triples, the argument registers
    (bit k: register k) that version takes (others: all six); stacking: the
    indexes of the patches that stack on older ones (not atomic replace)."""
    return HandoverFinder(carriers, regs, stacking).find(log)


class HandoverFinder:
    """handover_find's tables, prepared once for the C core: find(log) is
    handover_find(log, carriers, regs, stacking)."""

    def __init__(self, carriers, regs=(), stacking=()):
        pairs = sorted(set((int(f), int(i)) for f, i in carriers))
        masks = sorted({(int(f), int(v)): int(m) & 0x3F for f, v, m in regs}.items())
        stack = sorted(set(int(i) for i in stacking))
        self._cfid = ffi.new("int64_t[]", [f for f, _ in pairs] or [0])
        self._cidx = ffi.new("int64_t[]", [i for _, i in pairs] or [0])
        self._regs = ffi.new("struct emu_hregs[]", [(f, v, m) for (f, v), m in masks] or [(0, 0, 0)])
        self._stack = ffi.new("int64_t[]", stack or [0])
        self._sizes = (len(pairs), len(masks), len(stack))
        self._found = ffi.new("size_t *")
        self._out, self._cap = ffi.new("struct emu_handover[]", 16), 16

    def find(self, log: EventLog) -> list[tuple[int, int, int, int, int, int, int, int, int]]:
        ev, n = _events(log)
        npairs, nmasks, nstack = self._sizes
        found = self._found
        while True:
            _check(lib.emu_handover_find(ev, n, self._cfid, self._cidx, npairs, self._regs, nmasks, self._stack,
                                         nstack, self._out, self._cap, found), "find handovers")
            if found[0] <= self._cap:
                break
            self._out, self._cap = ffi.new("struct emu_handover[]", found[0]), found[0]
        return [(h.task, h.clock, h.fid, h.version, h.arg, h.value, h.pfid, h.pversion, h.produced_at)
                for h in self._out[0:found[0]]]


def units_check(log: EventLog, functions, confs) -> tuple[int, list[tuple]]:
    """The system-call units of log that no configuration explains
    (emu/runs/oracle.py's rule, csrc/units.c): (how many units the trace
    has, [(task, number, unfinished, start, end, [(clock, fid, version) of
    each entry]) in the order the oracle judges them]). functions: the
    checked function ids; confs: dicts function id -> version."""
    return UnitsChecker(functions, confs).check(log)


class UnitsChecker:
    """units_check's tables, prepared once for the C core: check(log) is
    units_check(log, functions, confs)."""

    def __init__(self, functions, confs):
        fids = sorted(set(int(f) for f in functions))
        cf, cv, off = [], [], [0]
        for conf in confs:
            for fid in sorted(conf):
                cf.append(int(fid))
                cv.append(int(conf[fid]))
            off.append(len(cf))
        self._fids, self._nfids = ffi.new("int64_t[]", fids or [0]), len(fids)
        self._cf, self._cv = ffi.new("int64_t[]", cf or [0]), ffi.new("int64_t[]", cv or [0])
        self._off, self._nconfs = ffi.new("size_t[]", off), len(confs)
        self._found, self._units = ffi.new("size_t *"), ffi.new("uint64_t *")
        self._out, self._cap = ffi.new("struct emu_unit[]", 16), 16
        self._idx, self._nidx = ffi.new("uint64_t[]", 1), 1      # room for an index per event

    def check(self, log: EventLog) -> tuple[int, list[tuple]]:
        ev, n = _events(log)
        if n > self._nidx:
            self._idx, self._nidx = ffi.new("uint64_t[]", n), n
        idx, found = self._idx, self._found
        while True:
            _check(lib.emu_units_check(ev, n, self._fids, self._nfids, self._cf, self._cv, self._off, self._nconfs,
                                       self._out, self._cap, idx, found, self._units), "check units")
            if found[0] <= self._cap:
                break
            self._out, self._cap = ffi.new("struct emu_unit[]", found[0]), found[0]
        bad = []
        for u in self._out[0:found[0]]:
            entries = []
            for i in idx[u.first:u.first + u.count]:
                e = ev[i]
                entries.append((e.clock, e.a, e.b))
            bad.append((u.task, u.number, bool(u.unfinished), u.start, u.end, entries))
        return self._units[0], bad


#: csrc/emu.h's codes for the promise oracle: models, route flags, breaches (names without EMU_)
PROMISE = {k[len("EMU_"):]: getattr(lib, k) for k in dir(lib) if k.startswith(("EMU_PM_", "EMU_PR_", "EMU_PB_"))}


def promise_scan(log: EventLog, model: int, transitions: tuple[int, int, int], carried, replace, routes, kinds,
                 tails: dict, *, bp_blind: bool = False,
                 unpatch_active: bool = False) -> tuple[list[tuple], tuple[int, int] | None]:
    """The promise oracle's pass over log (csrc/promise.c; emu/runs/promise.py
    has the rules and the twin): (breach records (clock, code, task, fid,
    version, x, y) in trace order, None), or ([], (fid, version)) when a
    check needs to know whether that version can leave by a tail call, which
    tails (dict (fid, version) -> bool) lacks. model: an EMU_PM_* code;
    transitions: the T_START, T_COMPLETE and T_SWITCH event codes; carried:
    (patch index, fid, force) triples; replace: (patch index, replace flag)
    pairs; routes: each route's EMU_PR_* flags; kinds: each task's kind (0
    user, 1 kthread, else idle); bp_blind: at a stop_machine switch, a
    preempted task's innermost two frames are not seen (kpatch's
    frame-pointer check); unpatch_active: unpatching checks the active
    version of each function besides the patch's own (kpatch)."""
    return PromiseScanner(model, transitions, carried, replace, routes, kinds, bp_blind=bp_blind,
                          unpatch_active=unpatch_active).scan(log, tails)


class PromiseScanner:
    """promise_scan's tables but the tails, prepared once for the C core:
    scan(log, tails) is promise_scan(log, model, transitions, carried,
    replace, routes, kinds, tails, bp_blind=bp_blind,
    unpatch_active=unpatch_active)."""

    def __init__(self, model: int, transitions: tuple[int, int, int], carried, replace, routes, kinds, *,
                 bp_blind: bool = False, unpatch_active: bool = False):
        carried = sorted(set((int(i), int(f), 1 if force else 0) for i, f, force in carried))
        replace = sorted((int(i), 1 if r else 0) for i, r in replace)
        self._carry = ffi.new("struct emu_pcarry[]", carried or [(0, 0, 0)])
        self._patch = ffi.new("struct emu_ppatch[]", replace or [(0, 0)])
        self._routes = ffi.new("uint8_t[]", [int(r) & 0xFF for r in routes] or [0])
        self._kinds = ffi.new("uint8_t[]", [int(k) & 0xFF for k in kinds] or [0])
        self._no_tail = ffi.new("struct emu_ptail[]", [(0, 0, 0)])
        t_start, t_complete, t_switch = transitions
        self._conf = ffi.new("struct emu_promise *", {
            "model": model, "t_start": t_start, "t_complete": t_complete, "t_switch": t_switch,
            "bp_blind": 1 if bp_blind else 0, "unpatch_active": 1 if unpatch_active else 0,
            "carry": self._carry, "ncarry": len(carried), "patch": self._patch, "npatch": len(replace),
            "routes": self._routes, "nroutes": len(routes), "kinds": self._kinds, "ntasks": len(kinds),
            "tail": self._no_tail, "ntail": 0})
        self._found, self._need = ffi.new("size_t *"), ffi.new("int64_t[2]")
        self._out, self._cap = ffi.new("struct emu_breach[]", 16), 16

    def scan(self, log: EventLog, tails: dict) -> tuple[list[tuple], tuple[int, int] | None]:
        conf = self._conf
        tail = sorted((int(f), int(v), 1 if t else 0) for (f, v), t in tails.items())
        c_tail = ffi.new("struct emu_ptail[]", tail) if tail else self._no_tail
        conf.tail, conf.ntail = c_tail, len(tail)
        try:
            ev, n = _events(log)
            found, need = self._found, self._need
            while True:
                rc = lib.emu_promise_scan(ev, n, conf, self._out, self._cap, found, need)
                if rc == lib.EMU_ENOENT:
                    return [], (need[0], need[1])
                _check(rc, "check the promise")
                if found[0] <= self._cap:
                    break
                self._out, self._cap = ffi.new("struct emu_breach[]", found[0]), found[0]
            return [(b.clock, b.code, b.task, b.fid, b.version, b.x, b.y) for b in self._out[0:found[0]]], None
        finally:
            conf.tail, conf.ntail = self._no_tail, 0      # c_tail is freed with this call


# ---- stack walks: C entry points for emu/engine/unwind.py's twins ----------------------


class Ranges:
    """Sorted, merged [start, end) ranges, prepared once for the C core."""

    def __init__(self, ranges):
        merged: list[list[int]] = []
        for start, end in sorted((int(s), int(e)) for s, e in ranges if e > s):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.ranges = tuple((s, e) for s, e in merged)
        self._c = ffi.new("struct emu_range[]", max(1, len(self.ranges)))
        for i, (s, e) in enumerate(self.ranges):
            self._c[i].start = s
            self._c[i].end = e

    def __len__(self):
        return len(self.ranges)


class OrcArrays:
    """An ORC table (sorted ips and entries) prepared once for the C core."""

    def __init__(self, ips, entries):
        n = len(ips)
        self.n = n
        self._ip = ffi.new("uint64_t[]", max(1, n))
        self._e = ffi.new("struct emu_orc_entry[]", max(1, n))
        for i, (ip, e) in enumerate(zip(ips, entries)):
            self._ip[i] = ip
            self._e[i].sp_offset = e.sp_offset
            self._e[i].bp_offset = e.bp_offset
            self._e[i].sp_reg = e.sp_reg
            self._e[i].bp_reg = e.bp_reg
            self._e[i].type = e.type


class Graph:
    """A task's function-graph return stack for the C unwinders: the return
    trampoline and the stack's bytes (guest layout, csrc/emu.h "function
    exits"). Graph() translates nothing."""

    __slots__ = ("ret", "data", "_c", "_keep")

    def __init__(self, ret: int = 0, data=b""):
        self.ret = ret
        self.data = data
        self._keep = ffi.from_buffer(data) if len(data) else ffi.NULL
        self._c = ffi.new("struct emu_graph *", {"ret": ret, "stack": self._keep, "size": len(data)})


_NO_GRAPH = Graph()
#: the most return addresses one walk gives (its output buffer)
WALK_MAX_ENTRIES = 4096


def _walk(kind, ptr, lo, hi, text, rip, rsp, rbp, preempted, max_entries, end_ret, end_slot, orc, graph=None):
    if not 0 <= max_entries <= WALK_MAX_ENTRIES:
        raise ValueError(f"max_entries must be within 0..{WALK_MAX_ENTRIES}")
    g = graph or _NO_GRAPH
    win = ffi.new("struct emu_walk_in *", {
        "rip": rip, "rsp": rsp, "rbp": rbp, "preempted": 1 if preempted else 0,
        "max_entries": max_entries, "end_ret": end_ret, "end_slot": end_slot,
        "graph": {"ret": g.ret, "stack": g._keep, "size": len(g.data)}})
    out = ffi.new("uint64_t[]", max(1, max_entries))
    nout = ffi.new("int *")
    if kind == "fp":
        code = lib.emu_walk_fp(ptr, lo, hi, text._c, len(text), win, out, nout)
    elif kind == "orc":
        if orc is None:
            raise ValueError("an ORC walk needs an ORC table")
        code = lib.emu_walk_orc(ptr, lo, hi, text._c, len(text), orc._ip, orc._e, orc.n, win, out, nout)
    else:
        raise ValueError(f"unknown unwinder {kind!r}")
    _check(code, f"{kind} stack walk")
    return code, tuple(out[0:nout[0]])


def walk_fp(stack: bytes, lo: int, hi: int, text: Ranges, rip: int, rsp: int, rbp: int, *,
            preempted: bool = False, max_entries: int = 100, end_ret: int = 0, end_slot: int = 0,
            graph: Graph | None = None):
    """C frame-pointer walk over a copy of stack memory [lo, hi) -> (EMU_WALK_*, entries)."""
    if len(stack) != hi - lo:
        raise ValueError("stack bytes must cover [lo, hi) exactly")
    return _walk("fp", ffi.from_buffer(stack), lo, hi, text, rip, rsp, rbp, preempted,
                 max_entries, end_ret, end_slot, None, graph)


def walk_orc(stack: bytes, lo: int, hi: int, text: Ranges, orc: OrcArrays, rip: int, rsp: int, rbp: int, *,
             preempted: bool = False, max_entries: int = 100, end_ret: int = 0, end_slot: int = 0,
             graph: Graph | None = None):
    """C ORC walk over a copy of stack memory [lo, hi) -> (EMU_WALK_*, entries)."""
    if len(stack) != hi - lo:
        raise ValueError("stack bytes must cover [lo, hi) exactly")
    return _walk("orc", ffi.from_buffer(stack), lo, hi, text, rip, rsp, rbp, preempted,
                 max_entries, end_ret, end_slot, orc, graph)


def graph_ret_addr(graph: Graph, value: int, slot: int) -> int:
    """ftrace_graph_ret_addr (C): the real return address for value read at slot, 0 if none."""
    return lib.emu_graph_ret_addr(graph._c, value, slot)


def ranges_hit(addrs, ranges: Ranges) -> int:
    """Index of the first address inside one of the ranges, or -1 (C)."""
    arr = ffi.new("uint64_t[]", list(addrs) or [0])
    return lib.emu_ranges_hit(arr, len(addrs), ranges._c, len(ranges))


def stack_scan(stack: bytes, lo: int, hi: int, sp: int, ranges: Ranges, graph: Graph | None = None):
    """Ksplice-style scan (C): (address, value) of the first word in a range
    (a diverted return address read as the real one), or None."""
    if len(stack) != hi - lo:
        raise ValueError("stack bytes must cover [lo, hi) exactly")
    where = ffi.new("uint64_t *")
    value = ffi.new("uint64_t *")
    rc = _check(lib.emu_stack_scan(ffi.from_buffer(stack), lo, hi, sp, ranges._c, len(ranges), where, value,
                                   (graph or _NO_GRAPH)._c),
                "stack scan")
    return (where[0], value[0]) if rc == 1 else None


# ---- many tasks' stack checks in one call (csrc/stacks.c) ---------------------------


class StackTasks:
    """Tasks whose stacks to check, packed once for the C core.

    tasks: (tid, preempted, lo, hi, end_ret, end_slot) each; tid indexes the
    core's task contexts, [lo, hi) is the task's stack. Only the preempted
    flags change between checks: set_preempted, or preempted None, which
    reads the flag from the scheduler's state at each check."""

    def __init__(self, tasks):
        rows = [tuple(v if v is None else int(v) for v in t) for t in tasks]
        self.n = len(rows)
        self._buf = bytearray(_STACK_TASK.size * max(1, self.n))
        for i, row in enumerate(rows):
            if len(row) != 6:
                raise ValueError("a task is (tid, preempted, lo, hi, end_ret, end_slot)")
            tid, pre, lo, hi, end_ret, end_slot = row
            _STACK_TASK.pack_into(self._buf, i * _STACK_TASK.size, tid, _preempted(pre), lo, hi,
                                  end_ret & _MASK64, end_slot & _MASK64)
        self._c = ffi.from_buffer("struct emu_stack_task[]", self._buf)

    def __len__(self) -> int:
        return self.n

    def set_preempted(self, i: int, preempted: bool | None) -> None:
        if not 0 <= i < self.n:
            raise IndexError(i)
        struct.pack_into("<i", self._buf, i * _STACK_TASK.size + 4, _preempted(preempted))


def _preempted(flag: bool | None) -> int:
    """struct emu_stack_task's preempted: -1 reads the scheduler's record."""
    return -1 if flag is None else 1 if flag else 0


_MASK64 = (1 << 64) - 1
_USED = struct.Struct("<4xii")      # off, n of a struct emu_stack_result


@functools.lru_cache(maxsize=32)
def _summary_struct(n: int) -> struct.Struct:
    """code and hit of each of n struct emu_stack_result, in one unpack."""
    return struct.Struct("<" + "i8xi32x" * n)


def _stack_cfg(kind: str, text: Ranges, orc: OrcArrays | None, empty: tuple[int, int], regs: tuple[int, int],
               max_entries: int, reliable: bool):
    """A struct emu_stack_cfg (it points into text and orc: keep them).
    Raises ValueError for bad arguments."""
    if kind not in UNWINDERS:
        raise ValueError(f"unknown unwinder {kind!r} (one of {', '.join(UNWINDERS)})")
    if kind == "orc" and orc is None:
        raise ValueError("an ORC walk needs an ORC table")
    if not (2 if kind == "scan" else 1) <= max_entries <= WALK_MAX_ENTRIES:
        raise ValueError(f"max_entries must be within {2 if kind == 'scan' else 1}..{WALK_MAX_ENTRIES}")
    cfg = ffi.new("struct emu_stack_cfg *")
    cfg.kind = UNWINDERS[kind]
    cfg.max_entries = max_entries
    cfg.text = text._c
    cfg.ntext = len(text)
    if orc is not None:
        cfg.orc_ip, cfg.orc, cfg.norc = orc._ip, orc._e, orc.n
    cfg.empty_lo, cfg.empty_hi = empty
    cfg.regs_lo, cfg.regs_hi = regs
    cfg.reliable = 1 if reliable else 0
    return cfg


class StackChecker:
    """Walk (or scan) many tasks' stacks and look for checked ranges on them,
    in one C call: emu_check_stacks. Each task's result equals
    emu.engine.unwind.check_stack() on the same registers and memory.

    kind: "fp", "orc" (needs orc) or "scan" (Ksplice's word scan). text:
    known code. empty: a rip in this range has no kernel frame (the trace is
    just rip; ignored by "scan"). regs: a rip in this range is at a register
    frame (fp walks give WALK_PREEMPTED). Function exits: each task's return
    stack is the core's own (Engine.graph_init). max_entries: per task, at least 1 (2 for a
    scan). reliable: a walk that is not WALK_OK fails the check (livepatch);
    otherwise only a hit or a walk too deep does (kpatch). Raises ValueError
    for bad arguments."""

    def __init__(self, engine: Engine, kind: str, text: "Ranges", *, orc: "OrcArrays | None" = None,
                 empty: tuple[int, int] = (0, 0), regs: tuple[int, int] = (0, 0), max_entries: int = 100,
                 reliable: bool = True):
        self.engine = engine
        self.kind = kind
        self.max_entries = max_entries
        self.reliable = reliable
        self._keep = (text, orc)          # the cfg points into them
        self._cfg = _stack_cfg(kind, text, orc, empty, regs, max_entries, reliable)
        self._last_check = None
        self._last_results = None     # weak reference to the results still reading our buffers
        self._cap = 0
        self._grow(16)

    def _grow(self, n: int) -> None:
        if n > self._cap:
            self._cap = max(n, 2 * self._cap)
            self._entries = ffi.new("uint64_t[]", self._cap * self.max_entries)
            self._out = ffi.new("struct emu_stack_result[]", self._cap)
            self._ebuf = memoryview(ffi.buffer(self._entries))
            self._obuf = memoryview(ffi.buffer(self._out))

    def check(self, tasks: StackTasks, check: "Ranges") -> "StackResults":
        """Check every task of tasks against the ranges in check. Raises
        CoreError when a task's id or stack is not the core's."""
        n = tasks.n
        # The last results read our buffers in place until this moment: they
        # take their copy now, if anyone still holds them.
        last = self._last_results() if self._last_results is not None else None
        if last is not None:
            last._detach()
        if n > self._cap:
            self._grow(n)
        cfg = self._cfg
        if check is not self._last_check:
            cfg.check = check._c
            cfg.ncheck = len(check)
            self._last_check = check
        with self.engine.hold():
            failed = self.engine._check(lib.emu_check_stacks(self.engine._core, cfg, tasks._c, n, self._entries,
                                                             self._out), "stack check")
        res = StackResults(self._obuf[0:n * _STACK_RESULT.size], self._ebuf, failed, self.reliable)
        self._last_results = weakref.ref(res)
        if failed:
            for i, code in enumerate(res.codes):
                if code < 0:
                    _check(code, f"stack check of task #{i} (tid {self._tid(tasks, i)})", self.engine._core)
        return res

    @staticmethod
    def _tid(tasks: StackTasks, i: int) -> int:
        return struct.unpack_from("<i", tasks._buf, i * _STACK_TASK.size)[0]


class StackResults:
    """The results of one StackChecker.check, in task order. failed (how
    many tasks failed the check) is known at once, failing() and the bulk
    views (codes, hits) cost little, and a task's StackCheck is decoded when
    asked for."""

    __slots__ = ("_rows", "_entries", "_summary", "failed", "reliable", "__weakref__")

    def __init__(self, rows, entries, failed: int, reliable: bool = True):
        self._rows = rows           # the checker's buffers until _detach()
        self._entries = entries
        self._summary = None
        self.failed = failed
        self.reliable = reliable

    def _detach(self) -> None:
        """Copy what is still in the checker's buffers (it is about to reuse them)."""
        if isinstance(self._rows, memoryview):
            n = len(self)
            used = sum(_USED.unpack_from(self._rows, (n - 1) * _STACK_RESULT.size)) if n else 0
            self._rows = bytes(self._rows)
            self._entries = bytes(self._entries[0:used * 8])

    def failing(self) -> list[int]:
        """Indices of the tasks that failed the check (as counted in failed)."""
        if not self.failed:
            return []
        ok = unwind.WALK_OK
        return [i for i, (code, hit) in enumerate(zip(self.codes, self.hits))
                if code < 0 or hit >= 0 or code == unwind.WALK_TOO_DEEP or (self.reliable and code != ok)]

    def __len__(self) -> int:
        return len(self._rows) // _STACK_RESULT.size

    def _pairs(self) -> tuple:
        if self._summary is None:
            self._summary = _summary_struct(len(self)).unpack(self._rows)
        return self._summary

    @property
    def codes(self) -> tuple[int, ...]:
        """Each task's EMU_WALK_* code."""
        return self._pairs()[0::2]

    @property
    def hits(self) -> tuple[int, ...]:
        """Each task's index of its first entry in a checked range, or -1."""
        return self._pairs()[1::2]

    def __getitem__(self, i: int) -> StackCheck:
        if not 0 <= i < len(self):
            raise IndexError(i)
        code, off, n, hit, rip, rsp, rbp, where = _STACK_RESULT.unpack_from(self._rows, i * _STACK_RESULT.size)
        return StackCheck(code, struct.unpack_from(f"<{n}Q", self._entries, off * 8), hit, where, rip, rsp, rbp)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class TaskWalker:
    """One task's stack walk in one C call: emu_check_stacks of that task
    alone, nothing checked. The task's rip/rsp/rbp come from its saved
    context (the engine's own for the loaded task: nothing is switched), its
    stack from host memory, its return stack from the core. The result is
    what walk_fp/walk_orc give on those registers and that memory (with
    preempted also when rip lies in regs), or (WALK_OK, (rip,)) when rip
    lies in empty: emu.engine.unwind.check_stack() with nothing checked is
    its twin. kind: "fp" or "orc" (needs orc); max_entries 1..4096. Raises
    ValueError for bad arguments."""

    __slots__ = ("engine", "kind", "max_entries", "_keep", "_cfg", "_task", "_ctask", "_entries", "_ebuf",
                 "_out", "_obuf")

    def __init__(self, engine: Engine, kind: str, text: Ranges, *, orc: OrcArrays | None = None,
                 empty: tuple[int, int] = (0, 0), regs: tuple[int, int] = (0, 0), max_entries: int = 100):
        if kind == "scan":
            raise ValueError("a scan is no walk: use a StackChecker")
        self.engine = engine
        self.kind = kind
        self.max_entries = max_entries
        self._keep = (text, orc)          # the cfg points into them
        self._cfg = _stack_cfg(kind, text, orc, empty, regs, max_entries, False)
        self._task = bytearray(_STACK_TASK.size)
        self._ctask = ffi.from_buffer("struct emu_stack_task[]", self._task)
        self._entries = ffi.new("uint64_t[]", max_entries)
        self._ebuf = ffi.buffer(self._entries)
        self._out = ffi.new("struct emu_stack_result[]", 1)
        self._obuf = ffi.buffer(self._out)

    def walk(self, tid: int, lo: int, hi: int, *, preempted: bool, end_ret: int, end_slot: int) \
            -> tuple[int, tuple[int, ...]]:
        """Walk task tid's stack [lo, hi) -> (EMU_WALK_*, return addresses
        with rip first). Raises CoreError for a tid that is not the core's
        or a stack that is not one mapped region."""
        if not (0 <= tid < 1 << 31 and 0 <= lo <= hi <= _MASK64):
            raise ValueError(f"bad task {tid} or stack {lo:#x}-{hi:#x}")
        _STACK_TASK.pack_into(self._task, 0, tid, 1 if preempted else 0, lo, hi, end_ret & _MASK64,
                              end_slot & _MASK64)
        engine = self.engine
        if not engine._lock.acquire(False):
            raise engine._busy("stack walk")
        try:
            rc = lib.emu_check_stacks(engine._core, self._cfg, self._ctask, 1, self._entries, self._out)
        finally:
            engine._lock.release()
        engine._check(rc, "stack walk")
        code, _, n = _WALKED.unpack_from(self._obuf)
        if code < 0:
            engine._check(code, f"stack walk of task {tid}")
        return code, struct.unpack_from(f"<{n}Q", self._ebuf)


_WALKED = struct.Struct("<iii")     # code, off, n of a struct emu_stack_result
