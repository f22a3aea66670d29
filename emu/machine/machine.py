"""The emulated machine: memory layout, images, CPUs, tasks, virtual time.

One Unicorn engine runs every CPU: the machine interleaves them, one slice
of at most `quantum` instructions per CPU per round. Virtual time is retired
instructions (the C core counts them exactly); when every CPU is idle it
jumps to the next wake-up or timer. The rounds, sleeps, wake-ups, yields,
kernel exits and safe points run in C (csrc/sched.c; its Python twin is
emu/pysched.py, and both work on one shared state array); the loop comes
back to Python only for kernel work. That work (a transition, a text_poke,
the livepatch work item) runs as Python generators ("works"), which can wait
for a sync (every CPU has ended a slice), for a point in time, or for
stop_machine (every CPU parked at a scheduling point).

Models hang off the machine through listeners (on_kernel_exit,
on_safe_point, on_cond_resched, on_idle). A listener with `pending_only`
set (the models) hears only of tasks whose `pending` flag is set
(TIF_PATCH_PENDING), so a machine with no transition in progress runs in C
from one timer to the next; the machine knows nothing else of them.

snapshot() and restore() put a machine back to an earlier point: a fuzzing
runner restores the prefix its runs share instead of building a machine.
"""
from __future__ import annotations

import copy
import heapq
from bisect import bisect_right
from dataclasses import dataclass

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from unicorn.x86_const import (UC_X86_REG_GS_BASE, UC_X86_REG_R12, UC_X86_REG_RAX, UC_X86_REG_RBP,
                               UC_X86_REG_RIP, UC_X86_REG_RSP)

from emu.engine import core, sysinsn
from emu.machine import faults, runtime
from emu.engine import unwind
# events the machine adds to the C core's ring (csrc/emu.h; the core's own kinds are < 16)
from emu.engine.core import (EV_EXIT, EV_KERNEL_EXIT, EV_PATCH_STATE, EV_SAFE_POINT, EV_SCHED_IN, EV_SLEEP,
                   EV_STOP_MACHINE, EV_TRANSITION, EV_WAKE, EV_YIELD)
from emu.engine.core import SchedReturn as SR
from emu.errors import GuestFault, UserError
from emu.images import percpu
from emu.images.image import PROT_R, PROT_W, PROT_X, Image
from emu.images.orc import OrcTable
from emu.machine.task import Cpu, Kind, RunState, Task

# ---- memory layout -----------------------------------------------------------
RUNTIME_BASE = 0x0010_0000
BASE_IMAGE = 0x0040_0000
MODULE_BASE = 0x0100_0000
MODULE_ALIGN = 0x0010_0000
STACK_BASE = 0x1000_0000
STACK_SIZE = 0x4000          # THREAD_SIZE on x86-64
GUARD = 0x1000               # an unmapped page below every stack
HEAP_BASE = 0x2000_0000
HEAP_SIZE = 0x0010_0000
PERCPU_BASE = 0x3000_0000    # one per-CPU area per task (emu/images/percpu.py), behind %gs

PREEMPT_MODES = ("none", "voluntary", "full")
UNWINDERS = ("orc", "fp")

_SR_DONE = SR.DONE          # reasons up to this one need nothing done
_HOOKS = {SR.KERNEL_EXIT: "on_kernel_exit", SR.COND_RESCHED: "on_cond_resched", SR.SAFE_POINT: "on_safe_point"}

EVENT_NAMES = {
    core.EV_ENTRY: "entry", core.EV_OBSERVE: "observe", core.EV_TORN: "torn",
    EV_KERNEL_EXIT: "kernel_exit", EV_SAFE_POINT: "safe_point", EV_SLEEP: "sleep", EV_WAKE: "wake",
    EV_PATCH_STATE: "patch_state", EV_YIELD: "yield", EV_EXIT: "exit", EV_SCHED_IN: "sched_in",
    EV_TRANSITION: "transition", EV_STOP_MACHINE: "stop_machine",
}


@dataclass(frozen=True)
class FunctionRef:
    """A function of a loaded image, with the machine-wide id events use."""
    id: int
    name: str
    image: str
    start: int
    end: int
    site: int | None


# ---- what works wait for ------------------------------------------------------------
@dataclass(frozen=True)
class Sync:
    """Wait until every CPU has ended its current slice (text_poke_bp's sync)."""


@dataclass(frozen=True)
class Delay:
    """Wait `instructions` of virtual time."""
    instructions: int


@dataclass(frozen=True)
class StopMachine:
    """Wait until every CPU has parked at a scheduling point; the work then
    runs with every CPU stopped, until it yields Release()."""


@dataclass(frozen=True)
class Release:
    """End the stop_machine section."""


class Machine:
    """Real x86-64 code on emulated CPUs and tasks.

    Raises UserError for bad configuration and GuestFault when guest code
    faults; the host process never dies of what the guest does.
    """

    def __init__(self, image: Image, *, cpus: int = 1, quantum: int = 1000, preempt: str = "voluntary",
                 tick: int = 1000, hz: int = 100, unwinder: str = "orc", accel: str = "c",
                 fast_memory: bool = False, policy=None, lockup_ticks: int = 2000, name: str = "machine",
                 sched: str | None = None):
        if cpus < 1:
            raise UserError(f"machine.cpus must be at least 1, not {cpus}")
        if quantum < 1 or tick < 1 or hz < 1:
            raise UserError("machine.quantum, machine.tick and hz must be positive")
        if preempt not in PREEMPT_MODES:
            raise UserError(f"machine.preempt must be one of {', '.join(PREEMPT_MODES)}, not {preempt!r}")
        if unwinder not in UNWINDERS:
            raise UserError(f"machine.unwinder must be one of {', '.join(UNWINDERS)}, not {unwinder!r}")
        from emu.machine.policy import RoundRobin
        sched = sched or accel
        if sched not in ("c", "python") or (sched == "c" and accel != "c"):
            raise UserError(f"sched must be 'c' (with accel 'c') or 'python', not {sched!r}")

        self.name = name
        self.sched = sched
        self.quantum = quantum
        self.preempt = preempt
        self.tick = tick
        self.hz = hz
        self.unwinder = unwinder
        self.accel = accel
        self.lockup = lockup_ticks * tick
        self.policy = policy or RoundRobin()
        self.engine = core.Engine(accel=accel, fast_memory=fast_memory)
        self.images: list[Image] = []
        self.unloaded: set[str] = set()         # names of modules unloaded (still mapped)
        self.functions: list[FunctionRef] = []
        self.by_name: dict[str, FunctionRef] = {}
        self._starts: list[int] = []          # sorted function starts, for symbolize
        self._by_start: list[FunctionRef] = []
        self._sites: dict[int, int] = {}      # function id -> site index in the C core
        self._site_funcs: dict[int, FunctionRef] = {}   # site index -> function
        self._orc_tables: list[OrcTable] = []
        self._text: list[tuple[int, int]] = []
        self.cpus = [Cpu(i, Task(-1 - i, f"swapper/{i}", Kind.IDLE, i)) for i in range(cpus)]
        for cpu in self.cpus:
            cpu.idle.state = RunState.RUNNABLE
        self.tasks: list[Task] = []
        self.listeners: list = []
        self.hypercalls: dict[int, object] = {}   # extra handlers: nr -> fn(machine, task, args) -> rax
        # (clock, kind, task, a, b, c) events; records from the C core stay packed
        # until someone reads them
        self.trace = core.EventLog()
        self.log: list[tuple[int, str]] = []      # kernel messages (time, text)
        self._timers: list = []
        self._seq = 0
        self._works: list = []
        self._sm: _StopState | None = None          # stop_machine in progress
        self.started = False
        self.sched_state: memoryview | None = None    # the scheduler's (csrc/emu.h), from start()
        self._py = None              # the scheduler's Python twin (emu/pysched.py)
        self.next_module = MODULE_BASE
        self.last_stop_machine: tuple[int, int, int] | None = None

        self.runtime = runtime.build(RUNTIME_BASE)
        self.engine.map(RUNTIME_BASE, _page_up(self.runtime.size), PROT_R | PROT_X)[:self.runtime.size] = \
            self.runtime.code
        self.engine.add_code(RUNTIME_BASE, _page_up(self.runtime.size), self.runtime.insn_starts)
        self.engine.set_trampoline(self.runtime.trampoline)
        self._twin = None
        self._sysinsn = None        # the Python twin of csrc/sysinsn.c
        if accel == "python":
            from emu.engine.redirect import PyRedirect
            self._twin = PyRedirect(self)
            self._sysinsn = sysinsn.PySysInsn(self.engine, self._current_cpu, self._stack_of, self._twin)
        self._text.append((RUNTIME_BASE, RUNTIME_BASE + self.runtime.size))
        self.heap = self.engine.map(HEAP_BASE, HEAP_SIZE, PROT_R | PROT_W)
        self.load(image)
        self.base = image

    # ---- images --------------------------------------------------------------------
    def load(self, image: Image) -> None:
        """Map an image (the base image or a module) and index its functions.
        Loading a module that was unloaded makes its functions known again."""
        if image in self.images:
            if image.name in self.unloaded:
                self.unloaded.discard(image.name)
                for ref in self.functions:
                    if ref.image == image.name:
                        self.by_name.setdefault(ref.name, ref)
                        self.by_name[f"{image.name}:{ref.name}"] = ref
            return
        for other in self.images:
            if other.name == image.name:
                # "image:function" names would resolve to either, and a patch
                # named like its target would patch itself
                raise UserError(f"a second image named '{image.name}': the program, its modules and "
                                f"its patches each need a name of their own")
            if image.lo < other.hi and other.lo < image.hi:
                raise UserError(f"image '{image.name}' ({image.lo:#x}-{image.hi:#x}) overlaps "
                                f"image '{other.name}' ({other.lo:#x}-{other.hi:#x})")
        for seg in image.segments:
            size = _page_up(len(seg.data)) or 0x1000
            view = self.engine.map(seg.addr, size, seg.prot)
            view[:len(seg.data)] = seg.data
            if seg.prot & PROT_X:
                self.engine.add_code(seg.addr, size, [a for a in image.insn_starts()
                                                      if seg.addr <= a < seg.addr + size])
        self.images.append(image)
        for fn in sorted(image.functions.values(), key=lambda f: f.start):
            ref = FunctionRef(len(self.functions), fn.name, image.name, fn.start, fn.end, fn.site)
            self.functions.append(ref)
            if image is self.images[0] or fn.name not in self.by_name:
                self.by_name.setdefault(fn.name, ref)
            self.by_name[f"{image.name}:{fn.name}"] = ref
            i = bisect_right(self._starts, fn.start)
            self._starts.insert(i, fn.start)
            self._by_start.insert(i, ref)
            self._text.append((fn.start, fn.end))
        self._hook_sysinsns(image)
        self._orc_tables += image.orc_tables()
        self._orc = OrcTable.merge(*self._orc_tables)
        self._orc_c = core.OrcArrays(self._orc.ips, self._orc.entries)
        self._ranges = core.Ranges(self._text)
        self.next_module = max(self.next_module, _align_up(image.hi, MODULE_ALIGN))

    # ---- instructions whose answer is not the guest's (csrc/sysinsn.c) ---------------
    def _hook_sysinsns(self, image: Image) -> None:
        """Answer or refuse image's time stamps, random numbers and
        privileged instructions, and check rsp after far moves of it."""
        md = Cs(CS_ARCH_X86, CS_MODE_64)
        for fn in image.functions.values():
            for s in sysinsn.classify(md, image.read(fn.start, fn.end - fn.start), fn.start, guard=GUARD):
                self.engine.add_sysinsn(s.addr, s.size, s.kind, s.arg)
                if self._sysinsn is not None:
                    self._sysinsn.add(s)

    def seed_random(self, seed: int) -> None:
        """Seed what rdrand and rdseed return from here on (a run's seed)."""
        self.engine.rng = seed
        if self._sysinsn is not None:
            self._sysinsn.rng = seed & (2**64 - 1)

    def _current_cpu(self) -> int:
        tid = self.engine.current
        return self.tasks[tid].cpu if 0 <= tid < len(self.tasks) else 0

    def _stack_of(self, tid: int) -> tuple[int, int] | None:
        if 0 <= tid < len(self.tasks) and self.tasks[tid].stack_hi:
            return self.tasks[tid].stack_lo, self.tasks[tid].stack_hi
        return None

    def unload(self, image: Image) -> None:
        """Mark a module gone: its functions can no longer be found by name
        (emu.kernel.patch.loaded_objects skips it). Its memory stays mapped, so a
        stale pointer into it does not fault the host."""
        self.unloaded.add(image.name)
        for key in [k for k, ref in self.by_name.items() if ref.image == image.name]:
            del self.by_name[key]

    def module_base(self) -> int:
        """Where the next module image should be linked."""
        return self.next_module

    def function(self, name: str) -> FunctionRef:
        """A function by name ('f' or 'image:f'); UserError naming it if unknown."""
        ref = self.by_name.get(name)
        if ref is None:
            raise UserError(f"no function '{name}' in the loaded images")
        return ref

    def function_at(self, addr: int) -> FunctionRef | None:
        i = bisect_right(self._starts, addr) - 1
        if i >= 0 and self._by_start[i].start <= addr < self._by_start[i].end:
            return self._by_start[i]
        return None

    def symbolize(self, addr: int) -> str:
        fn = self.function_at(addr)
        if fn:
            return f"{fn.name}+{addr - fn.start:#x}"
        if self.runtime.contains(addr):
            names = [("task_user", self.runtime.task_user), ("task_kthread", self.runtime.task_kthread),
                     ("ftrace_trampoline", self.runtime.trampoline)]
            name, start = max((n for n in names if n[1] <= addr), key=lambda n: n[1])
            return f"{name}+{addr - start:#x}"
        return f"{addr:#x}"

    @property
    def text_ranges(self) -> core.Ranges:
        return self._ranges

    @property
    def orc(self) -> OrcTable:
        return self._orc

    # ---- sites (ftrace.py drives them) --------------------------------------------------
    def site(self, fn: FunctionRef) -> int:
        """The C core's index of fn's fentry site, registering it on first use."""
        idx = self._sites.get(fn.id)
        if idx is None:
            if fn.site is None:
                from emu.errors import PatchError
                raise PatchError(f"function '{fn.name}' has no fentry site (not compiled with -mfentry, "
                                 f"or notrace): it cannot be patched")
            idx = self.engine.add_site(fn.site, fn.id)
            if self._twin is not None:
                self._twin.add_site(idx, fn.site, fn.id)
            self._sites[fn.id] = idx
            self._site_funcs[idx] = fn
        return idx

    def set_entries(self, fn: FunctionRef, entries) -> None:
        """fn's stack of replacements, newest first: (target, version, nop, transition)."""
        idx = self.site(fn)
        entries = [tuple(e) for e in entries]
        self.engine.set_site_entries(idx, entries)
        if self._twin is not None:
            self._twin.entries[idx] = entries

    def set_poke(self, fn: FunctionRef, poke: int) -> None:
        """The instruction a text_poke_bp is writing at fn's site (core.POKE_*)."""
        idx = self.site(fn)
        self.engine.set_site_poke(idx, poke)
        if self._twin is not None:
            self._twin.poke[idx] = poke

    def text_write(self, addr: int, data: bytes) -> None:
        """The one way to change guest code: also drops stale translations."""
        if self._twin is None:
            self.engine.text_write(addr, data)
        else:
            from emu.engine import text
            text.write(self.engine.uc, addr, data)

    def watch(self, fn: FunctionRef) -> None:
        """Report every entry into fn (its site's watch hook) in the trace."""
        self.site(fn)

    # ---- tasks -------------------------------------------------------------------
    def add_task(self, name: str, entry: str, args=(), *, kind: str = "user", cpu: int | None = None) -> Task:
        if self.started:
            raise UserError("tasks must be added before the machine starts")
        if kind not in ("user", "kthread"):
            raise UserError(f"task '{name}': kind must be 'user' or 'kthread', not {kind!r}")
        if len(args) > 6:
            raise UserError(f"task '{name}': at most 6 arguments")
        fn = self.function(entry)
        if cpu is None:
            cpu = len(self.tasks) % len(self.cpus)
        if not 0 <= cpu < len(self.cpus):
            raise UserError(f"task '{name}': no CPU {cpu}")
        task = Task(len(self.tasks), name, Kind(kind), cpu, entry=fn.name, args=tuple(int(a) for a in args))
        task.entry_addr = fn.start
        self.tasks.append(task)
        return task

    def start(self) -> None:
        """Give every task its stack and initial registers."""
        if self.started:
            return
        if not self.tasks:
            raise UserError("the machine has no tasks")
        self.started = True
        self.engine.init_tasks(len(self.tasks))
        for task in self.tasks:
            lo = STACK_BASE + task.tid * (STACK_SIZE + GUARD) + GUARD
            hi = lo + STACK_SIZE
            view = self.engine.map(lo, STACK_SIZE, PROT_R | PROT_W)
            block = [task.entry_addr, *task.args, *([0] * (6 - len(task.args)))]
            off = STACK_SIZE - runtime.TASK_BLOCK
            view[off:off + 56] = b"".join(v.to_bytes(8, "little", signed=v < 0) for v in block)
            rsp = hi - runtime.FRAME_GAP
            task.stack_lo, task.stack_hi = lo, hi
            self.engine.set_task_stack(task.tid, lo, hi)
            task.end_slot = rsp - 8
            task.end_ret = self.runtime.user_ret if task.kind is Kind.USER else self.runtime.kthread_ret
            self.engine.switch(task.tid)
            uc = self.engine.uc
            uc.reg_write(UC_X86_REG_RIP, self.runtime.task_user if task.kind is Kind.USER
                         else self.runtime.task_kthread)
            uc.reg_write(UC_X86_REG_RSP, rsp)
            uc.reg_write(UC_X86_REG_RBP, 0)
            uc.reg_write(UC_X86_REG_R12, hi - runtime.TASK_BLOCK)
            self._install_percpu(task)
            self.cpus[task.cpu].enqueue(task)
        n = len(self.tasks)
        st = self.sched_state = self.engine.sched_init(n, len(self.cpus))
        from emu.engine.sched import PyScheduler
        self._py = PyScheduler(self.engine, st, wake=self._wake_due, hook_error=self._hook_error,
                               stop_state=lambda: self._sm)
        for task in self.tasks:
            task.bind(st.tasks[task.tid], st)
        for cpu in self.cpus:
            cpu.idle.bind(st.tasks[n + cpu.index])
            cpu.bind(st.cpus[cpu.index], self.tasks)
        st.quantum = self.quantum
        st.preempt = PREEMPT_MODES.index(self.preempt)
        st.tick = self.tick
        st.lockup = self.lockup
        st.pick = -1
        st.next_wake = -1
        st.live = sum(t.state is not RunState.EXITED for t in self.tasks)
        st.sm = self._sm is not None

    def _install_percpu(self, task: Task) -> None:
        """Map the task's view of its CPU's per-CPU area and point %gs at it
        (the loaded context is the task's: the base is saved with it)."""
        at = PERCPU_BASE + task.tid * percpu.AREA_SIZE
        self.engine.map(at, percpu.AREA_SIZE, PROT_R | PROT_W)[:] = percpu.area(task.cpu, at)
        self.engine.uc.reg_write(UC_X86_REG_GS_BASE, at)

    # ---- time, timers, works ----------------------------------------------------------
    @property
    def now(self) -> int:
        return self.engine.clock

    def ticks(self, n: float) -> int:
        return int(n * self.tick)

    def seconds(self, s: float) -> int:
        """Virtual instructions in s seconds (hz ticks a second)."""
        return int(s * self.hz * self.tick)

    def at(self, when: int, fn) -> None:
        """Call fn() when the clock reaches `when` (in order of registration for ties)."""
        self._seq += 1
        heapq.heappush(self._timers, (max(when, self.now), self._seq, fn))

    def spawn(self, work) -> None:
        """Start a kernel work (a generator); it runs now until its first wait."""
        self._works.append(_Work(work))
        self._advance_works()

    def _fire_due(self) -> None:
        while self._timers and self._timers[0][0] <= self.now:
            _, _, fn = heapq.heappop(self._timers)
            fn()
        self._advance_works()

    def _advance_works(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            for w in list(self._works):
                if w.ready(self):
                    progressed = True
                    try:
                        wait = w.gen.send(None)
                    except StopIteration:
                        self._works.remove(w)
                        if self._sm is not None and self._sm.work is w:
                            self._release_stop_machine()
                        continue
                    self._wait(w, wait)

    def _wait(self, w: "_Work", wait) -> None:
        if isinstance(wait, Sync) or wait is None:
            w.kind, w.arg = "sync", tuple(c.slices for c in self.cpus)
        elif isinstance(wait, Delay):
            w.kind, w.arg = "time", self.now + max(0, wait.instructions)
            self.at(w.arg, lambda: None)
        elif isinstance(wait, StopMachine):
            if self._sm is not None:
                raise RuntimeError("nested stop_machine")
            self._sm = _StopState(w, self.now)
            if self.sched_state is not None:
                self.sched_state.sm = 1
            w.kind, w.arg = "stop", None
        elif isinstance(wait, Release):
            self._release_stop_machine()
            w.kind, w.arg = "now", None
        else:
            raise TypeError(f"a work yielded {wait!r}")

    def _release_stop_machine(self) -> None:
        """End stop_machine; the CPUs resume where they stopped."""
        sm, self._sm = self._sm, None
        if self.sched_state is not None:
            self.sched_state.sm = 0
        if sm is not None and sm.stopped_at is not None:
            self.emit(EV_STOP_MACHINE, -1, 0)
            self.last_stop_machine = (sm.requested_at, sm.stopped_at, self.now)

    # ---- snapshots -------------------------------------------------------------------
    def snapshot(self) -> "Snapshot":
        """The machine's whole state, to restore() before each of many runs
        from the same point. Only between runs of a started machine with the
        C scheduler, no model listening, no kernel work and no stop_machine."""
        if not self.started or self.sched != "c" or self.listeners or self._works or self._sm is not None:
            raise RuntimeError("snapshot: only of a started machine with the C scheduler, "
                               "between runs, with no model, work or stop_machine")
        self.drain()
        everyone = self.tasks + [c.idle for c in self.cpus]
        return Snapshot(
            core=self.engine.snapshot(), images=len(self.images), unloaded=set(self.unloaded),
            by_name=dict(self.by_name), sites=dict(self._sites), site_funcs=dict(self._site_funcs),
            patch_states=[t.patch_state for t in everyone],
            hypercalls=dict(self.hypercalls), trace=self.trace.copy(), log=list(self.log),
            timers=list(self._timers), seq=self._seq, last_stop_machine=self.last_stop_machine,
            policy=copy.deepcopy(self.policy))

    def restore(self, snap: "Snapshot") -> None:
        """Put a snapshot of this machine back: the next run is the same, event
        for event, as the first run from that point. Listeners go (models are
        made anew per run). RuntimeError when images were loaded since."""
        if len(self.images) != snap.images or self._sm is not None:
            raise RuntimeError("restore: images were loaded since the snapshot")
        self.engine.restore(snap.core)
        self.unloaded = set(snap.unloaded)
        self.by_name = dict(snap.by_name)
        self._sites, self._site_funcs = dict(snap.sites), dict(snap.site_funcs)
        for t, ps in zip(self.tasks + [c.idle for c in self.cpus], snap.patch_states):
            t.patch_state = ps
        self.hypercalls = dict(snap.hypercalls)
        self.trace = snap.trace.copy()
        self.log = list(snap.log)
        self._timers, self._seq = list(snap.timers), snap.seq
        self._works = []
        self.listeners = []
        self.last_stop_machine = snap.last_stop_machine
        self.policy = copy.deepcopy(snap.policy)

    # ---- events and log ----------------------------------------------------------------
    def emit(self, kind: int, task: int, a: int = 0, b: int = 0, c: int = 0) -> None:
        self.engine.push_event(kind, task, a, b, c)

    def printk(self, text: str) -> None:
        """A kernel message, kept in order with the time it was printed."""
        self.log.append((self.now, text))

    def drain(self) -> None:
        """Move the C core's events into self.trace (packed: no tuple is made
        until the trace is read)."""
        self.trace.extend_raw(self.engine.take_events_raw())

    # ---- running ---------------------------------------------------------------------
    def runnable(self, cpu: Cpu) -> list[Task]:
        return [t for t in cpu.runqueue if t.state is RunState.RUNNABLE]

    @property
    def preemptions(self) -> int:
        """Runnable tasks switched out for another (slice end, cond_resched)."""
        return 0 if self.sched_state is None else self.sched_state.preemptions

    def run(self, until: int | None = None, *, stop_when=None, every_slice: bool = True) -> None:
        """Run until virtual time `until`, until every task has exited, or until
        stop_when() is true. stop_when is checked between slices, or with
        every_slice=False only when the machine comes back to Python for
        kernel work (a timer or work item, a switch point a model watches, a
        hypercall of its own), which lets the scheduler stay in C. Stopping
        and running on gives the same run as running straight through.
        Raises GuestFault."""
        self.start()
        with self.engine.hold():
            self._run(until, stop_when, every_slice)

    def _run(self, until, stop_when, every_slice) -> None:
        st = self.sched_state
        st.policy_rr = self.policy.name == "rr"
        st.notify_all = any(not getattr(lst, "pending_only", False) for lst in self.listeners)
        each = stop_when is not None and every_slice
        until_c = -1 if until is None else until
        try:
            while True:
                self._fire_due()
                if stop_when is not None and stop_when():
                    return
                if until is not None and self.now >= until:
                    return
                if st.live <= 0:
                    return
                st.each_slice = each or any(w.kind in ("sync", "stop") for w in self._works)
                deadline = self._timers[0][0] if self._timers else -1
                if self._sm is None and self.sched == "c":
                    reason = self.engine.sched_run(until_c, deadline)
                else:
                    reason = self._py.run(until_c, deadline)
                if reason > _SR_DONE and not self._returned(reason, until_c, deadline):
                    return
        finally:
            self.drain()

    def _returned(self, reason: int, until: int, deadline: int) -> bool:
        """Do what the scheduler came back for; False when the run is over."""
        st = self.sched_state
        if reason in _HOOKS:
            task = self.tasks[st.rtask]
            hook = _HOOKS[reason]
            for listener in self.listeners:
                getattr(listener, hook)(task)
            if reason != SR.SAFE_POINT:
                self._py.switch_tail(st.rcpu, task.tid)
        elif reason == SR.IDLE:
            cpu = self.cpus[st.rcpu]
            for listener in self.listeners:
                listener.on_idle(cpu, cpu.idle)
        elif reason == SR.PICK:
            cpu, skip = self.cpus[st.rcpu], st.rtask
            cands = [t for t in self.runnable(cpu) if t.tid != skip]
            st.pick = self.policy.pick(cpu, cands, self.now).tid
        elif reason == SR.EVENTS:
            self.drain()
        elif reason == SR.IDLE_ROUND:
            return self._idle_round(until, deadline)
        elif reason == SR.END:
            return False
        elif reason == SR.HANG:
            names = ", ".join(t.name for t in self.tasks if t.state is RunState.SLEEPING)
            raise GuestFault(f"every task is asleep with nothing to wake it: {names}", kind="hang")
        elif reason in (SR.HYPERCALL, SR.FAULT, SR.KTHREAD_RET, SR.LOCKUP):
            self._trouble(reason)
        return True

    def _trouble(self, reason: int) -> None:
        """A hypercall the scheduler does not handle, or a task gone wrong."""
        st = self.sched_state
        task, cpu = self.tasks[st.rtask], self.cpus[st.rcpu]
        stop = self.engine.last_stop
        if reason == SR.FAULT:
            self._fault(cpu, task, stop)
        elif reason == SR.LOCKUP:
            self._fault(cpu, task, None, soft_lockup=True)
        elif reason == SR.KTHREAD_RET:
            self._fault(cpu, task, stop, message="a kthread returned to user")
        elif stop.hc_nr in self.hypercalls:
            rax = self.hypercalls[stop.hc_nr](self, task, stop.hc_args)
            self.engine.switch(task.tid)
            self.engine.uc.reg_write(UC_X86_REG_RAX, rax & (2**64 - 1))
        else:
            self._fault(cpu, task, stop, message=f"unknown hypercall {stop.hc_nr}")

    def _idle_round(self, until: int, deadline: int) -> bool:
        """Every CPU idled through a round (stepping slice by slice): move
        time to the next wake or timer. False when nothing can happen."""
        if any(w.kind in ("sync", "stop") or w.ready(self) for w in self._works):
            return True       # idle CPUs end their slices and park without time passing
        reason = self._py.idle_jump(until, deadline)
        if reason:
            return self._returned(reason, until, deadline)
        return True

    @property
    def all_stopped(self) -> bool:
        return self._sm is not None and len(self._sm.parked) == len(self.cpus)

    def wake(self, task: Task, *, early: bool) -> None:
        """Wake a sleeping task; its sleep returns the ticks it had left."""
        if task.state is not RunState.SLEEPING:
            return
        left = 0
        if early:
            left = -1 if task.wake_at is None else max(0, -(-(task.wake_at - self.now) // self.tick))
        self.engine.switch(task.tid)
        self.engine.uc.reg_write(UC_X86_REG_RAX, left & (2**64 - 1))
        task.state = RunState.RUNNABLE
        task.wake_at = None
        self.emit(EV_WAKE, task.tid, 1 if early else 0)

    def _wake_due(self, tid: int) -> None:
        self.wake(self.tasks[tid], early=False)

    def _hook_error(self) -> BaseException | None:
        twin = self._twin
        if twin is None or twin.error is None:
            return None
        err, twin.error = twin.error, None
        return err

    def signal(self, task: Task) -> None:
        """A fake signal: wakes an interruptible sleeper (it then runs to its
        kernel exit sooner). Running tasks pass a kernel exit anyway."""
        if task.state is RunState.SLEEPING and task.interruptible:
            self.wake(task, early=True)

    def set_patch_state(self, task: Task, state: int) -> None:
        """Set a task's patch state in Python and in the C core."""
        if task.patch_state == state:
            return
        task.patch_state = state
        if not task.is_idle:
            self.engine.set_task_state(task.tid, state)
        self.emit(EV_PATCH_STATE, task.tid, state)

    # ---- stacks ---------------------------------------------------------------------------
    def regs(self, task: Task) -> tuple[int, int, int]:
        """(rip, rsp, rbp) of a task that is not running."""
        self.engine.switch(task.tid)
        uc = self.engine.uc
        return uc.reg_read(UC_X86_REG_RIP), uc.reg_read(UC_X86_REG_RSP), uc.reg_read(UC_X86_REG_RBP)

    def stack(self, task: Task, *, unwinder: str | None = None, max_entries: int = 100,
              accel: str | None = None) -> tuple[int, tuple[int, ...]]:
        """Walk a task's stack: (unwind.WALK_* code, return addresses with the
        current RIP first). A task in its runtime loop (between kernel entries)
        has an empty kernel stack: reliable, just its RIP."""
        if task.is_idle or task.state is RunState.EXITED:
            return unwind.WALK_OK, ()
        rip, rsp, rbp = self.regs(task)
        if self.runtime.contains(rip):
            return unwind.WALK_OK, (rip,)
        kind = unwinder or self.unwinder
        accel = accel or self.accel
        lo, hi = task.stack_lo, task.stack_hi
        if accel == "c":
            return self.engine.walk(kind, lo, hi, self._ranges, rip, rsp, rbp, preempted=task.preempted,
                                    max_entries=max_entries, end_ret=task.end_ret, end_slot=task.end_slot,
                                    orc=self._orc_c)
        mem = bytes(self.engine.view(lo, hi - lo))
        text = list(self._ranges.ranges)
        if kind == "fp":
            return unwind.walk_fp(mem, lo, hi, text, rip, rsp, rbp, preempted=task.preempted,
                                  max_entries=max_entries, end_ret=task.end_ret, end_slot=task.end_slot)
        return unwind.walk_orc(mem, lo, hi, text, self._orc.ips, self._orc.entries, rip, rsp, rbp,
                               preempted=task.preempted, max_entries=max_entries, end_ret=task.end_ret,
                               end_slot=task.end_slot)

    def scan_stack(self, task: Task, ranges) -> tuple[int, int, tuple[int, int] | None]:
        """Ksplice's conservative check: (rip, rsp, (address, value) of the
        first stack word above rsp that lies in one of ranges, or None)."""
        rip, rsp, _ = self.regs(task)
        lo, hi = task.stack_lo, task.stack_hi
        mem = bytes(self.engine.view(lo, hi - lo))
        if self.accel == "c":
            hit = core.stack_scan(mem, lo, hi, rsp, core.Ranges(ranges))
        else:
            hit = unwind.stack_scan(mem, lo, hi, rsp, sorted(core.Ranges(ranges).ranges))
        return rip, rsp, hit

    def backtrace(self, task: Task) -> list[str]:
        code, entries = self.stack(task, unwinder="orc")
        lines = [self.symbolize(a) for a in entries]
        if code != unwind.WALK_OK:
            lines.append(f"(unreliable: {unwind.REASONS.get(code, code)})")
        return lines

    # ---- faults ----------------------------------------------------------------------------
    def disassemble(self, addr: int) -> str:
        try:
            data = bytes(self.engine.view(addr, 16))
        except Exception:
            return "(no code mapped there)"
        for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(data, addr, count=1):
            return f"{insn.mnemonic} {insn.op_str}".strip()
        return "(undecodable: " + data[:8].hex(" ") + ")"

    def _fault(self, cpu: Cpu, task: Task, stop: core.Stop | None, *, message: str | None = None,
               soft_lockup: bool = False):
        self.drain()
        task.state = RunState.EXITED
        rip = self.regs(task)[0] if stop is None else stop.rip
        if soft_lockup:
            what = (f"soft lockup: {task.since_schedule} instructions without a scheduling point "
                    f"(limit {self.lockup})")
            kind = "lockup"
        elif message is not None:
            what, kind = message, "hypercall"
        else:
            what, kind, rip = faults.describe(self, task, stop)
        try:
            bt = self._raw_backtrace(task, rip)
        except Exception:  # the stack may be what broke
            bt = []
        lines = [f"guest fault in task '{task.name}' (tid {task.tid}) on CPU {cpu.index}: {what}",
                 f"  RIP {rip:#x} <{self.symbolize(rip)}>: {self.disassemble(rip)}", "  backtrace:"]
        lines += [f"    {line}" for line in bt] or ["    (none)"]
        raise GuestFault("\n".join(lines), task=task.name, cpu=cpu.index, rip=rip, kind=kind, backtrace=bt)

    @staticmethod
    def in_guard(addr: int, task: Task) -> bool:
        """Whether addr lies in the guard page below task's stack."""
        return task.stack_lo - GUARD <= addr < task.stack_lo

    def _raw_backtrace(self, task: Task, rip: int) -> list[str]:
        self.engine.switch(task.tid)
        uc = self.engine.uc
        rsp, rbp = uc.reg_read(UC_X86_REG_RSP), uc.reg_read(UC_X86_REG_RBP)
        lo, hi = task.stack_lo, task.stack_hi
        if not lo <= rsp <= hi:
            return [f"{self.symbolize(rip)}", f"(rsp {rsp:#x} is outside the stack {lo:#x}-{hi:#x})"]
        code, entries = self.engine.walk("orc", lo, hi, self._ranges, rip, rsp, rbp, preempted=True,
                                         max_entries=64, end_ret=task.end_ret, end_slot=task.end_slot,
                                         orc=self._orc_c)
        out = [self.symbolize(a) for a in entries] or [self.symbolize(rip)]
        if code != unwind.WALK_OK:
            out.append(f"(walk ended: {unwind.REASONS.get(code, code)})")
        return out


@dataclass(eq=False)
class Snapshot:
    """What Machine.snapshot took: the C core's part and the Python part."""
    core: object
    images: int
    unloaded: set
    by_name: dict
    sites: dict
    site_funcs: dict
    patch_states: list
    hypercalls: dict
    trace: core.EventLog
    log: list
    timers: list
    seq: int
    last_stop_machine: tuple | None
    policy: object


@dataclass(eq=False)
class _StopState:
    """stop_machine in progress: which CPUs have parked, and when."""
    work: "_Work"
    requested_at: int
    parked: set = None
    stopped_at: int | None = None

    def __post_init__(self):
        self.parked = set()


class _Work:
    """A kernel work item: a generator and what it waits for."""

    def __init__(self, gen):
        self.gen = gen
        self.kind = "now"
        self.arg = None

    def ready(self, m: Machine) -> bool:
        if self.kind == "now":
            return True
        if self.kind == "time":
            return m.now >= self.arg
        if self.kind == "sync":
            return all(c.slices > s for c, s in zip(m.cpus, self.arg))
        if self.kind == "stop":
            return m.all_stopped
        return False




def _page_up(n: int) -> int:
    return (n + 0xfff) & ~0xfff


def _align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a
