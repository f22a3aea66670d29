"""The engine: a Unicorn instance shared with the C core.

This is the only module that touches the cffi ``ffi``/``lib`` of the C core;
no cdata leaves it. C functions return codes, and ``_check`` turns them into
exceptions in this one place.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import struct
import weakref
from importlib import metadata
from pathlib import Path
from collections.abc import Sequence
from typing import NamedTuple

import unicorn  # must come before the extension: one libunicorn for both
from unicorn import Uc, UC_ARCH_X86, UC_MODE_64
from unicorn.unicorn_py3 import unicorn as _binding

from emu.errors import CoreError, StaleBuild
from emu.engine import unwind
from emu.engine.unwind import UNWINDERS, StackCheck

try:
    from emu._core_c import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise StaleBuild(f"the C core is not built ({exc}); run `make build`") from None

__all__ = ["Engine", "Stop", "EventLog", "Ranges", "OrcArrays", "StackTasks", "StackChecker", "walk_fp",
           "walk_orc", "ranges_hit", "stack_scan"]

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

# ---- constants mirrored from emu.h ------------------------------------------

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

# The scheduler's shared state (csrc/sched.c, emu/pysched.py): every
# EMU_SG_*, EMU_TF_*, EMU_TS_*, EMU_TK_*, EMU_CF_*, EMU_SR_*, EMU_EV_* and
# EMU_HC_* constant, without the EMU_ prefix, in SCHED.
SCHED = {name[4:]: getattr(lib, name) for name in dir(lib)
         if name.startswith(("EMU_SG_", "EMU_TF_", "EMU_TS_", "EMU_TK_", "EMU_CF_", "EMU_SR_", "EMU_HC_"))}
EV_KERNEL_EXIT = lib.EMU_EV_KERNEL_EXIT
EV_SAFE_POINT = lib.EMU_EV_SAFE_POINT
EV_SLEEP = lib.EMU_EV_SLEEP
EV_WAKE = lib.EMU_EV_WAKE
EV_PATCH_STATE = lib.EMU_EV_PATCH_STATE
EV_YIELD = lib.EMU_EV_YIELD
EV_EXIT = lib.EMU_EV_EXIT
EV_SCHED_IN = lib.EMU_EV_SCHED_IN
EV_TRANSITION = lib.EMU_EV_TRANSITION
EV_STOP_MACHINE = lib.EMU_EV_STOP_MACHINE

POKE_NONE = lib.EMU_POKE_NONE
POKE_TO_CALL = lib.EMU_POKE_TO_CALL
POKE_TO_NOP = lib.EMU_POKE_TO_NOP

SITE_MAX_ENTRIES = lib.EMU_SITE_MAX_ENTRIES
FAULT_INTERRUPT = lib.EMU_FAULT_INTERRUPT
FAULT_INVALID_INSN = lib.EMU_FAULT_INVALID_INSN
FAULT_PRIVILEGED = lib.EMU_FAULT_PRIVILEGED
FAULT_STACK_OVERFLOW = lib.EMU_FAULT_STACK_OVERFLOW
FAULT_NULL_CALL = lib.EMU_FAULT_NULL_CALL
FAULT_UNMAPPED_FETCH = lib.EMU_FAULT_UNMAPPED_FETCH

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
    assert UNWINDERS[_kind] == _value, "emu/unwind.py UNWINDERS disagrees with csrc/emu.h"


def _check(rc: int, what: str, core=None) -> int:
    """Map a negative C return code to CoreError; return rc otherwise."""
    if rc >= 0:
        return rc
    msg = _ERRORS.get(rc, f"error {rc}")
    if rc == lib.EMU_EUC and core is not None:
        err = lib.emu_last_uc_error(core)
        msg += f": {unicorn.UcError(err)}"
    raise CoreError(f"{what}: {msg}")


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
    accel="python" leaves them to the pure-Python twins (emu/redirect.py),
    which hook the same engine through the binding.

    fast_memory=True selects Unicorn's virtual TLB with a C fill hook. With
    this engine's host-mapped memory it measured no faster than the default
    CPU TLB (111-114 vs 120-121 M instructions/s on a call- and store-heavy
    loop), so it is off by default; the tests keep both modes equal.
    """

    def __init__(self, *, accel: str = "c", fast_memory: bool = False, event_capacity: int = 1 << 16):
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
        # The core must go before the Uc it hooks: the finalizer holds both.
        self._finalizer = weakref.finalize(self, Engine._free, core, self.uc)
        self._stop = ffi.new("struct emu_stop *")
        self._stop_buf = ffi.buffer(self._stop)
        self._ev_cap = 4096
        self._ev_buf = ffi.new("struct emu_event[]", self._ev_cap)
        self._entry_buf = ffi.new("struct emu_entry[]", SITE_MAX_ENTRIES)
        self.trampoline = 0

    @staticmethod
    def _free(core, uc):
        lib.emu_core_free(core)
        # Close the engine now rather than when a reference cycle is collected:
        # each one holds its translation cache (megabytes). The binding's own
        # finalizer runs at most once, so this is the only uc_close.
        release = getattr(uc, "_Uc__finalizer", None)
        if release is not None:
            release()

    def close(self) -> None:
        """Free the C core and the engine now (also done when the Engine is
        collected). A closed Engine refuses further use instead of touching
        freed memory: the C functions get NULL (and check it), the binding's
        engine is gone."""
        self._finalizer()
        self._core = ffi.NULL
        self.uc = None

    # -- memory ------------------------------------------------------------
    def map(self, addr: int, size: int, prot: int) -> memoryview:
        """Map host-backed guest memory; return a writable view of it."""
        _check(lib.emu_map(self._core, addr, size, prot), f"map {addr:#x}+{size:#x}", self._core)
        return self.view(addr, size)

    def view(self, addr: int, size: int) -> memoryview:
        """A writable view of mapped guest memory [addr, addr+size)."""
        ptr = lib.emu_host_ptr(self._core, addr, size)
        if ptr == ffi.NULL:
            raise CoreError(f"no host memory at {addr:#x}+{size:#x}")
        return memoryview(ffi.buffer(ptr, size))

    def add_code(self, base: int, size: int, starts) -> None:
        """Register executable [base, base+size) and its instruction starts."""
        bitmap = bytearray((size + 7) // 8)
        for a in starts:
            off = a - base
            if 0 <= off < size:
                bitmap[off >> 3] |= 1 << (off & 7)
        _check(lib.emu_add_code(self._core, base, size, ffi.from_buffer(bitmap)), "add code")

    # -- tasks ----------------------------------------------------------------
    def init_tasks(self, n: int) -> None:
        _check(lib.emu_tasks_init(self._core, n), "init tasks", self._core)

    def switch(self, tid: int) -> None:
        """Save the loaded task's CPU context and load task tid's."""
        rc = lib.emu_switch(self._core, tid)
        if rc:      # the message is only made on failure: this runs once a slice
            _check(rc, f"switch to task {tid}", self._core)

    @property
    def current(self) -> int:
        return lib.emu_current(self._core)

    def set_task_state(self, tid: int, state: int) -> None:
        rc = lib.emu_task_set_state(self._core, tid, state)
        if rc:
            _check(rc, f"patch state of task {tid}")

    # -- sites -------------------------------------------------------------------
    def add_site(self, addr: int, func_id: int) -> int:
        return _check(lib.emu_site_add(self._core, addr, func_id), f"site at {addr:#x}", self._core)

    def set_site_entries(self, site: int, entries) -> None:
        """entries: newest first, each (target, version, nop, transition)."""
        if len(entries) > SITE_MAX_ENTRIES:
            raise CoreError(f"more than {SITE_MAX_ENTRIES} replacements stacked on one function")
        buf = self._entry_buf
        for i, (target, version, nop, transition) in enumerate(entries):
            buf[i].target = target
            buf[i].version = version
            buf[i].nop = 1 if nop else 0
            buf[i].transition = 1 if transition else 0
        _check(lib.emu_site_set_entries(self._core, site, buf, len(entries)), "site entries")

    def set_site_poke(self, site: int, poke: int) -> None:
        _check(lib.emu_site_set_poke(self._core, site, poke), "site poke")

    def set_trampoline(self, addr: int) -> None:
        _check(lib.emu_set_trampoline(self._core, addr), "trampoline", self._core)
        self.trampoline = addr

    def text_write(self, addr: int, data: bytes) -> None:
        """Write guest code and drop its translations (C fast path; the
        twin is emu/text.py)."""
        _check(lib.emu_text_write(self._core, addr, data, len(data)), f"text write at {addr:#x}", self._core)

    # -- instructions whose answer is not the guest's (csrc/sysinsn.c) ----------
    def add_sysinsn(self, addr: int, size: int, kind: int, arg: int = 0) -> None:
        """Hook the instruction at addr (core.SI_*; see csrc/emu.h)."""
        _check(lib.emu_sysinsn_add(self._core, addr, size, kind, arg), f"instruction at {addr:#x}", self._core)

    def set_task_stack(self, tid: int, lo: int, hi: int) -> None:
        """Task tid's stack [lo, hi], for the stack checks."""
        _check(lib.emu_task_set_stack(self._core, tid, lo, hi), f"stack of task {tid}")

    @property
    def rng(self) -> int:
        """The state rdrand and rdseed draw from (kept in snapshots)."""
        return lib.emu_rng_state(self._core)

    @rng.setter
    def rng(self, value: int) -> None:
        lib.emu_rng_seed(self._core, value & _MASK64)

    @staticmethod
    def cpuid(leaf: int, sub: int = 0, cpu: int = 0) -> tuple[int, int, int, int]:
        """(eax, ebx, ecx, edx) of the emulated CPU model (C)."""
        out = ffi.new("uint32_t[4]")
        lib.emu_cpuid(leaf & 0xffffffff, sub & 0xffffffff, cpu & 0xffffffff, out)
        return out[0], out[1], out[2], out[3]

    def skip_insn(self, addr: int, next_addr: int) -> None:
        """In a hook during a run: the instruction at addr retired, go on at next_addr."""
        _check(lib.emu_skip_insn(self._core, addr, next_addr), "skip instruction")

    def report_fault(self, kind: int, rip: int, addr: int = 0) -> None:
        """In a hook during a run: record a fault (core.FAULT_*) and stop."""
        _check(lib.emu_report_fault(self._core, kind, rip, addr), "report fault")

    # -- time and running -----------------------------------------------------
    @property
    def clock(self) -> int:
        return lib.emu_clock(self._core)

    @clock.setter
    def clock(self, value: int) -> None:
        lib.emu_set_clock(self._core, value)

    def now(self, addr: int) -> int:
        """The clock at instruction addr of the block being run."""
        return lib.emu_now(self._core, addr)

    def run(self, budget: int, precise: bool = False) -> Stop:
        """Run the loaded task for at most budget instructions."""
        rc = lib.emu_run(self._core, budget, 1 if precise else 0, self._stop)
        if rc:
            _check(rc, "run")
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
    def sched_init(self, ntasks: int, ncpus: int) -> memoryview:
        """Allocate the scheduler state; return it as a writable int64 view
        (layout in csrc/emu.h; the core owns the memory)."""
        _check(lib.emu_sched_init(self._core, ntasks, ncpus), "scheduler state")
        n = lib.emu_sched_size(self._core)
        return memoryview(ffi.buffer(lib.emu_sched_state(self._core), 8 * n)).cast("q")

    def sched_run(self, until: int, deadline: int) -> int:
        """Run slices until Python is needed (-1: no until / no deadline);
        return the EMU_SR_* reason."""
        rc = lib.emu_sched_run(self._core, until, deadline, self._stop)
        if rc < 0:
            _check(rc, "scheduler", self._core)
        return rc

    def request_stop(self) -> None:
        lib.emu_request_stop(self._core)

    # -- events -----------------------------------------------------------------
    def push_event(self, kind: int, task: int, a: int, b: int, c: int, clock: int | None = None) -> None:
        """Append an event; clock defaults to now."""
        if clock is None:
            clock = lib.emu_clock(self._core)
        rc = lib.emu_event_push(self._core, kind, task, a, b, c, clock)
        if rc:
            _check(rc, "event push")

    def set_event_mask(self, kinds=None) -> None:
        """Record only events of these kinds (None: every kind, the default).
        Kinds from 64 on are always recorded. Events left out are counted in
        events_dropped. Turning EV_ENTRY off takes the per-call event (and
        Python's cost of draining it) off redirected calls."""
        mask = (1 << 64) - 1
        if kinds is not None:
            mask = 0
            for k in kinds:
                if not 0 <= k < 64:
                    raise ValueError(f"event kind {k} is always recorded (only kinds 0..63 can be masked)")
                mask |= 1 << k
        lib.emu_set_event_mask(self._core, mask)

    @property
    def events_dropped(self) -> int:
        """Events the mask left out so far."""
        return lib.emu_events_dropped(self._core)

    def events_pending(self) -> int:
        return lib.emu_events_pending(self._core)

    # -- snapshots ----------------------------------------------------------------
    def snapshot(self):
        """Take the core's state (see csrc/snapshot.c); freed when collected."""
        snap = lib.emu_snapshot_take(self._core)
        if snap == ffi.NULL:
            raise CoreError("snapshot: out of memory or unicorn refused")
        return ffi.gc(snap, lib.emu_snapshot_free)

    def restore(self, snap) -> None:
        """Put a snapshot of this engine back. CoreError when the machine
        mapped memory or added tasks since."""
        _check(lib.emu_snapshot_restore(self._core, snap), "restore", self._core)

    def take_events_raw(self) -> bytes:
        """Drain the ring as packed struct emu_event records (EventLog keeps
        them so: the trace then costs a copy, not a tuple per event)."""
        n = lib.emu_events_pending(self._core)
        if n <= 0:
            return b""
        if n > self._ev_cap:
            self._ev_cap = n
            self._ev_buf = ffi.new("struct emu_event[]", n)
        got = lib.emu_events_take(self._core, self._ev_buf, n)
        return ffi.buffer(self._ev_buf, got * _EVENT.size)[:]

    def take_events(self) -> list[tuple[int, int, int, int, int, int]]:
        """Drain the ring: (clock, kind, task, a, b, c) tuples in order."""
        out = []
        while True:
            n = lib.emu_events_take(self._core, self._ev_buf, self._ev_cap)
            if n <= 0:
                return out
            out.extend(_EVENT.iter_unpack(ffi.buffer(self._ev_buf, n * _EVENT.size)))
            if n < self._ev_cap:
                return out

    # -- stacks -------------------------------------------------------------------
    def walk(self, kind: str, lo: int, hi: int, text: "Ranges", rip: int, rsp: int, rbp: int, *,
             preempted: bool, max_entries: int, end_ret: int, end_slot: int,
             orc: "OrcArrays | None" = None) -> tuple[int, tuple[int, ...]]:
        """Walk a task's stack in place (host memory, no copy)."""
        ptr = lib.emu_host_ptr(self._core, lo, hi - lo)
        if ptr == ffi.NULL:
            raise CoreError(f"no host memory for the stack {lo:#x}-{hi:#x}")
        return _walk(kind, ptr, lo, hi, text, rip, rsp, rbp, preempted, max_entries, end_ret, end_slot, orc)


    def stack_checker(self, kind: str, text: "Ranges", *, orc: "OrcArrays | None" = None,
                      empty: tuple[int, int] = (0, 0), max_entries: int = 100,
                      reliable: bool = True) -> "StackChecker":
        """A prepared check of many tasks' stacks in one C call (see StackChecker)."""
        return StackChecker(self, kind, text, orc=orc, empty=empty, max_entries=max_entries,
                            reliable=reliable)


# ---- the trace, kept packed ----------------------------------------------------------


class EventLog(Sequence):
    """A trace of (clock, kind, task, a, b, c) events, kept packed as the C
    core's struct emu_event records (extend_raw takes them as they come from
    Engine.take_events_raw) and unpacked into tuples only when someone
    reads the trace, once: a run whose trace nobody reads does not pay a
    tuple per event (150-200 ns each, more than a redirected call costs in
    C), and a hash of the trace is a hash of bytes (raw()).

    It reads like a list of tuples (len, indexing, slicing to a list,
    iteration, == with any sequence); append/extend take tuples. An
    iteration sees the events that were in the log when it started."""

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

    def __getitem__(self, i):
        return self._sync()[i]

    def __iter__(self):
        return iter(self._sync()[:])

    def __eq__(self, other) -> bool:
        if isinstance(other, EventLog):
            return self._raw == other._raw
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes, bytearray)):
            return self._sync() == [tuple(e) for e in other]
        return NotImplemented

    def __repr__(self) -> str:
        return f"<EventLog of {len(self)} events>"


# ---- stack walks: C entry points for emu/unwind.py's twins ----------------------


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


_WALK_OUT_MAX = 4096


def _walk(kind, ptr, lo, hi, text, rip, rsp, rbp, preempted, max_entries, end_ret, end_slot, orc):
    if not 0 <= max_entries <= _WALK_OUT_MAX:
        raise ValueError(f"max_entries must be within 0..{_WALK_OUT_MAX}")
    win = ffi.new("struct emu_walk_in *", {
        "rip": rip, "rsp": rsp, "rbp": rbp, "preempted": 1 if preempted else 0,
        "max_entries": max_entries, "end_ret": end_ret, "end_slot": end_slot})
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
            preempted: bool = False, max_entries: int = 100, end_ret: int = 0, end_slot: int = 0):
    """C frame-pointer walk over a copy of stack memory [lo, hi) -> (EMU_WALK_*, entries)."""
    if len(stack) != hi - lo:
        raise ValueError("stack bytes must cover [lo, hi) exactly")
    return _walk("fp", ffi.from_buffer(stack), lo, hi, text, rip, rsp, rbp, preempted,
                 max_entries, end_ret, end_slot, None)


def walk_orc(stack: bytes, lo: int, hi: int, text: Ranges, orc: OrcArrays, rip: int, rsp: int, rbp: int, *,
             preempted: bool = False, max_entries: int = 100, end_ret: int = 0, end_slot: int = 0):
    """C ORC walk over a copy of stack memory [lo, hi) -> (EMU_WALK_*, entries)."""
    if len(stack) != hi - lo:
        raise ValueError("stack bytes must cover [lo, hi) exactly")
    return _walk("orc", ffi.from_buffer(stack), lo, hi, text, rip, rsp, rbp, preempted,
                 max_entries, end_ret, end_slot, orc)


def ranges_hit(addrs, ranges: Ranges) -> int:
    """Index of the first address inside one of the ranges, or -1 (C)."""
    arr = ffi.new("uint64_t[]", list(addrs) or [0])
    return lib.emu_ranges_hit(arr, len(addrs), ranges._c, len(ranges))


def stack_scan(stack: bytes, lo: int, hi: int, sp: int, ranges: Ranges):
    """Ksplice-style scan (C): (address, value) of the first word in a range, or None."""
    if len(stack) != hi - lo:
        raise ValueError("stack bytes must cover [lo, hi) exactly")
    where = ffi.new("uint64_t *")
    value = ffi.new("uint64_t *")
    rc = _check(lib.emu_stack_scan(ffi.from_buffer(stack), lo, hi, sp, ranges._c, len(ranges), where, value),
                "stack scan")
    return (where[0], value[0]) if rc == 1 else None


# ---- many tasks' stack checks in one call (csrc/stacks.c) ---------------------------


class StackTasks:
    """Tasks whose stacks to check, packed once for the C core.

    tasks: (tid, preempted, lo, hi, end_ret, end_slot) each; tid indexes the
    core's task contexts, [lo, hi) is the task's stack. Only the preempted
    flags change between checks: set_preempted."""

    def __init__(self, tasks):
        rows = [tuple(int(v) for v in t) for t in tasks]
        self.n = len(rows)
        self._buf = bytearray(_STACK_TASK.size * max(1, self.n))
        for i, row in enumerate(rows):
            if len(row) != 6:
                raise ValueError("a task is (tid, preempted, lo, hi, end_ret, end_slot)")
            tid, pre, lo, hi, end_ret, end_slot = row
            _STACK_TASK.pack_into(self._buf, i * _STACK_TASK.size, tid, 1 if pre else 0, lo, hi,
                                  end_ret & _MASK64, end_slot & _MASK64)
        self._c = ffi.from_buffer("struct emu_stack_task[]", self._buf)

    def __len__(self) -> int:
        return self.n

    def set_preempted(self, i: int, preempted: bool) -> None:
        if not 0 <= i < self.n:
            raise IndexError(i)
        struct.pack_into("<i", self._buf, i * _STACK_TASK.size + 4, 1 if preempted else 0)


_MASK64 = (1 << 64) - 1
_USED = struct.Struct("<4xii")      # off, n of a struct emu_stack_result


@functools.lru_cache(maxsize=32)
def _summary_struct(n: int) -> struct.Struct:
    """code and hit of each of n struct emu_stack_result, in one unpack."""
    return struct.Struct("<" + "i8xi32x" * n)


class StackChecker:
    """Walk (or scan) many tasks' stacks and look for checked ranges on them,
    in one C call: emu_check_stacks. Each task's result equals
    emu.engine.unwind.check_stack() on the same registers and memory.

    kind: "fp", "orc" (needs orc) or "scan" (Ksplice's word scan). text:
    known code. empty: a rip in this range has no kernel frame (the trace is
    just rip; ignored by "scan"). max_entries: per task, at least 1 (2 for a
    scan). reliable: a walk that is not WALK_OK fails the check (livepatch);
    otherwise only a hit or a walk too deep does (kpatch). Raises ValueError
    for bad arguments."""

    def __init__(self, engine: Engine, kind: str, text: "Ranges", *, orc: "OrcArrays | None" = None,
                 empty: tuple[int, int] = (0, 0), max_entries: int = 100, reliable: bool = True):
        if kind not in UNWINDERS:
            raise ValueError(f"unknown unwinder {kind!r} (one of {', '.join(UNWINDERS)})")
        if kind == "orc" and orc is None:
            raise ValueError("an ORC walk needs an ORC table")
        if not (2 if kind == "scan" else 1) <= max_entries <= _WALK_OUT_MAX:
            raise ValueError(f"max_entries must be within {2 if kind == 'scan' else 1}..{_WALK_OUT_MAX}")
        self.engine = engine
        self.kind = kind
        self.max_entries = max_entries
        self.reliable = reliable
        self._keep = (text, orc)          # the cfg points into them
        cfg = ffi.new("struct emu_stack_cfg *")
        cfg.kind = UNWINDERS[kind]
        cfg.max_entries = max_entries
        cfg.text = text._c
        cfg.ntext = len(text)
        if orc is not None:
            cfg.orc_ip, cfg.orc, cfg.norc = orc._ip, orc._e, orc.n
        cfg.empty_lo, cfg.empty_hi = empty
        cfg.reliable = 1 if reliable else 0
        self._cfg = cfg
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
        failed = _check(lib.emu_check_stacks(self.engine._core, cfg, tasks._c, n, self._entries, self._out),
                        "stack check")
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
