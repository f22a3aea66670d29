"""The emulated machine: memory layout, images, CPUs, tasks, virtual time.

One Unicorn engine runs every CPU: the machine interleaves them, one slice
of at most `quantum` instructions per CPU per round. Virtual time is retired
instructions (the C core counts them exactly); when every CPU is idle it
jumps to the next wake-up or timer. The rounds, sleeps, wake-ups, yields,
kernel exits and safe points run in C (csrc/sched.c; its Python twin is
emu/engine/sched.py, and both work on one shared state, core.SchedState); the loop comes
back to Python only for kernel work. That work (a transition, a text_poke,
the livepatch work item) runs as Python generators ("works"), each step on
a CPU it gets from the scheduler at a point the preemption mode allows
(works.py says where kernel work runs, and what "running" means); between
steps it can wait for a sync (every CPU has ended a slice), for a point in
time, or for stop_machine (every CPU parked at a scheduling point).

Models hang off the machine through listeners (on_kernel_exit,
on_safe_point, on_cond_resched, on_idle). A listener with `pending_only`
set (the models) hears only of tasks whose `pending` flag is set
(TIF_PATCH_PENDING), so a machine with no transition in progress runs in C
from one timer to the next; one whose `hooks_inert` is true (kGraft while
its code is being changed) is not called at all while it is, when every
listener's is; one with `every_cond_resched` set (the probe's
emu/runs/states.Passes) brings every task's cond_resched() back to Python,
and no other switch point; the machine knows nothing else of them.

snapshot() and restore() put a machine back to an earlier point: a fuzzing
runner restores the prefix its runs share instead of building a machine.

The machine is the facade of its parts, one concept each: layout.py (the
memory layout), symbols.py (images and functions), sites.py (fentry sites
and code writes, in C and in the Python twin), task.py (tasks and CPUs),
scheduling.py (the scheduler binding and run loop), works.py (timers, work
items, stop_machine), sysinsns.py (instructions the emulator answers or
refuses), stacks.py (walks and backtraces), faults.py (fault reports) and
snapshot.py.
"""
from __future__ import annotations

from unicorn.x86_const import (UC_X86_REG_GS_BASE, UC_X86_REG_R12, UC_X86_REG_RAX, UC_X86_REG_RBP,
                               UC_X86_REG_RIP, UC_X86_REG_RSP)

from emu.engine import core
# events the machine adds to the C core's ring (csrc/emu.h; the core's own kinds are < 16)
from emu.engine.core import (EV_EXIT, EV_KERNEL_EXIT, EV_MODULE, EV_PATCH_STATE, EV_SAFE_POINT,  # noqa: F401
                             EV_SCHED_IN, EV_SLEEP, EV_STOP_MACHINE, EV_TRANSITION, EV_WAKE, EV_YIELD)
from emu.errors import CoreError, EngineClosed, UserError, check_callable, check_int, check_number, check_type
from emu.images import percpu
from emu.images.image import PROT_R, PROT_W, PROT_X, Image
from emu.images.orc import OrcTable
from emu.machine import faults, hypercall, runtime, snapshot, stacks
from emu.machine.hypercall import FUNCTION_DONE
from emu.machine.layout import (BASE_IMAGE, FTRACE_STUBS, FTRACE_STUBS_SIZE,  # noqa: F401
                                GRAPH_BASE, GRAPH_STRIDE, GUARD, HEAP_BASE, HEAP_SIZE, MODULE_ALIGN, MODULE_BASE,
                                PERCPU_BASE, RUNTIME_BASE, STACK_BASE, STACK_SIZE, align_up, in_guard, page_up, stack_of)
from emu.machine.scheduling import PREEMPT_MODES, Scheduling
from emu.machine.shadow import ShadowVars
from emu.machine.sites import Sites
from emu.machine.symbols import FunctionRef, Symbols
from emu.machine.sysinsns import SysInsns
from emu.machine.task import INT64, ROUTES, Cpu, Kind, RunState, Task
from emu.machine.works import Delay, Release, StopMachine, Sync, Works  # noqa: F401 (what works yield)

UNWINDERS = ("orc", "fp")
#: The events a run keeps in memory (m.trace, 40 bytes each packed): the
#: bound of a run given no until (Machine(max_events=) sets another), and of
#: every run lpemu makes (emu/runs/fuzz.py).
MAX_EVENTS = 1_000_000
_ROUTE_CODES = {route: i for i, route in enumerate(ROUTES)}     # EV_PATCH_STATE's b
#: What became of a module (EV_MODULE's a; b is its index in Machine.images),
#: in the order of the kernel's module states: coming, mapped and its
#: functions known (load: the coming notifiers link patches to it then);
#: live, its init returned 0 (do_init_module); going, rmmod called its exit
#: or its init failed (delete_module, or the failure path); gone, its
#: functions unknown (unload: the going notifiers have unlinked it).
MODULE_COMING, MODULE_LIVE, MODULE_GOING, MODULE_GONE = 1, 2, 3, 4
MODULE_STATES = {MODULE_COMING: "coming", MODULE_LIVE: "live", MODULE_GOING: "going", MODULE_GONE: "gone"}


class Machine:
    """Real x86-64 code on emulated CPUs and tasks.

    Raises UserError for bad configuration and GuestFault when guest code
    faults; the host process never dies of what the guest does. One thread
    at a time: a second thread's run() while one runs raises EngineBusy.
    """

    def __init__(self, image: Image, *, cpus: int = 1, quantum: int = 1000, preempt: str = "voluntary",
                 tick: int = 1000, hz: int = 100, unwinder: str = "orc", accel: str = "c",
                 fast_memory: bool = True, policy=None, lockup_ticks: int = 2000, name: str = "machine",
                 sched: str | None = None, max_events: int = MAX_EVENTS):
        check_type(image, Image, "Machine: image", "build_c or load_elf gives one")
        check_int(cpus, "Machine: cpus")
        for key, value in (("quantum", quantum), ("tick", tick), ("hz", hz), ("lockup_ticks", lockup_ticks)):
            check_int(value, f"Machine: {key}")
        if cpus < 1:
            raise UserError(f"machine.cpus must be at least 1, not {cpus}")
        if quantum < 1 or tick < 1 or hz < 1:
            raise UserError("machine.quantum, machine.tick and hz must be positive")
        check_int(cpus, "Machine: cpus", 1, core.MAX_CPUS)
        check_int(quantum, "Machine: quantum", 1, 2**63 - 1)
        check_int(tick * hz, "Machine: tick * hz (instructions a second)", 1, 2**63 - 1)
        check_int(lockup_ticks * tick, "Machine: lockup_ticks * tick", 0, 2**63 - 1)
        check_int(max_events, "Machine: max_events", 1, 2**63 - 1)
        check_type(fast_memory, bool, "Machine: fast_memory")
        check_type(name, str, "Machine: name")
        if policy is not None and not callable(getattr(policy, "pick", None)):
            raise TypeError(f"Machine: policy must have a pick(cpu, candidates, now) "
                            f"(emu.machine.policy), not {type(policy).__name__}")
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
        self.max_events = max_events     # the bound of a run given no until (run())
        self.policy = policy or RoundRobin()
        self.engine = core.Engine(accel=accel, fast_memory=fast_memory)
        self.cpus = [Cpu(i, Task(-1 - i, f"swapper/{i}", Kind.IDLE, i)) for i in range(cpus)]
        for cpu in self.cpus:
            cpu.idle.state = RunState.RUNNABLE
        self.tasks: list[Task] = []
        self.listeners: list = []
        self.hypercalls: dict[int, object] = {}   # extra handlers: nr -> fn(machine, task, args) -> rax
        # a freezable sleep is the kernel's own primitive: it works whether
        # or not a model listens (the probe and a run's prefix have none)
        self.hypercalls[hypercall.SLEEP_FREEZABLE] = _freezable_sleep
        # (clock, kind, task, a, b, c) events; records from the C core stay packed
        # until someone reads them
        self.trace = core.EventLog()
        self.log: list[tuple[int, str]] = []      # kernel messages (time, text)
        self.works = Works(self)
        self.scheduling = Scheduling(self)
        self.started = False
        self.next_module = MODULE_BASE
        self._done: dict[int, object] = {}     # tid -> done callback of a forked task (fork)

        self.runtime = runtime.build(RUNTIME_BASE, (FTRACE_STUBS, FTRACE_STUBS_SIZE))
        self.engine.map(RUNTIME_BASE, page_up(self.runtime.size), PROT_R | PROT_X)[:self.runtime.size] = \
            self.runtime.code
        self.engine.add_code(RUNTIME_BASE, page_up(self.runtime.size), self.runtime.insn_starts)
        self.engine.map(FTRACE_STUBS, FTRACE_STUBS_SIZE, PROT_R | PROT_X)
        self.engine.set_stubs(FTRACE_STUBS, FTRACE_STUBS_SIZE)
        self.symbols = Symbols(self.runtime)
        self.walkers = stacks.Walkers(self)
        twin = None
        if accel == "python":
            from emu.engine.redirect import PyRedirect
            twin = PyRedirect(self)
        self.sites = Sites(self.engine, twin)
        self.sysinsns = SysInsns(self.engine, self.tasks, twin)
        self.heap = self.engine.map(HEAP_BASE, HEAP_SIZE, PROT_R | PROT_W)
        # klp_shadow_* is the kernel's own API, as the freezable sleep is:
        # there before any model exists and the same under every model
        self.shadow = ShadowVars(self)
        self.load(image)
        self.base = image

    # ---- images (symbols.py) ---------------------------------------------------------
    def load(self, image: Image) -> None:
        """Map an image (the base image or a module) and index its functions.
        Loading a module that was unloaded makes its functions known again.
        Once the machine has started, a module's coming is traced (EV_MODULE)."""
        check_type(image, Image, "load: image", "build_c or load_elf gives one")
        gone = image.name in self.symbols.unloaded
        if self.symbols.relist(image):
            if gone and self.sched_state is not None:
                self.module_event(image, MODULE_COMING)
            return
        self.symbols.check_new(image)
        for seg in image.segments:
            size = page_up(len(seg.data)) or 0x1000
            view = self.engine.map(seg.addr, size, seg.prot)
            view[:len(seg.data)] = seg.data
            if seg.prot & PROT_X:
                self.engine.add_code(seg.addr, size, [a for a in image.insn_starts()
                                                      if seg.addr <= a < seg.addr + size])
        self.symbols.add(image)
        self.sysinsns.hook(image)
        self.next_module = max(self.next_module, align_up(image.hi, MODULE_ALIGN))
        # a module loaded before the machine starts (a patch's, one loaded
        # from the start) is there from the start: no event says it came
        if image is not self.images[0] and self.sched_state is not None:
            self.module_event(image, MODULE_COMING)

    def module_event(self, image: Image, what: int, task: int = -1) -> None:
        """Trace what became of a module (EV_MODULE: a MODULE_* of MODULE_STATES),
        by task (its insmod or rmmod; -1: none). ValueError for an image
        this machine never loaded."""
        if what not in MODULE_STATES:
            raise ValueError(f"module_event: {what!r} is not one of MODULE_STATES")
        if image not in self.images[1:]:
            raise ValueError(f"module_event: image '{image.name}' is not a module loaded on this machine")
        self.emit(EV_MODULE, task, what, self.images.index(image))

    def seed_random(self, seed: int) -> None:
        """Seed what rdrand and rdseed return from here on (a run's seed)."""
        self.sysinsns.seed(check_int(seed, "seed_random: seed"))

    def vary_slices(self, seed: int) -> None:
        """From here on, draw each slice's length in 1..quantum from seed
        (csrc/sched.c's slice_length, and its twin): where the other CPUs
        stand when kernel work runs (a text change's IPIs, stop_machine, a
        stack check) then varies from run to run, as interrupts land
        anywhere, instead of being fixed by how the quantum aligns with
        the tasks' loops. Needs a started machine."""
        check_int(seed, "vary_slices: seed")
        st = self.sched_state
        if st is None:
            raise UserError("vary_slices: the machine has not started (run it first)")
        mixed = (seed * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF
        st.jstate = mixed - (1 << 64) if mixed >= 1 << 63 else mixed
        st.jitter = 1

    def unload(self, image: Image) -> None:
        """Mark a module gone (traced: EV_MODULE): its functions can no longer be found by name
        (emu.kernel.patch.loaded_objects skips it). Its memory stays mapped, so a
        stale pointer into it does not fault the host."""
        check_type(image, Image, "unload: image")
        if image not in self.symbols.images[1:]:
            raise ValueError(f"unload: image '{image.name}' is not a module loaded on this machine")
        if image.name not in self.symbols.unloaded:
            self.symbols.unload(image)
            self.module_event(image, MODULE_GONE)

    def module_base(self) -> int:
        """Where the next module image should be linked."""
        return self.next_module

    @property
    def images(self) -> list[Image]:
        return self.symbols.images

    @property
    def functions(self) -> list[FunctionRef]:
        return self.symbols.functions

    @property
    def by_name(self) -> dict[str, FunctionRef]:
        return self.symbols.by_name

    @property
    def unloaded(self) -> set[str]:
        return self.symbols.unloaded

    def function(self, name: str) -> FunctionRef:
        """A function by name ('f' or 'image:f'); UserError naming it if unknown."""
        return self.symbols.function(name)

    def function_at(self, addr: int) -> FunctionRef | None:
        return self.symbols.function_at(addr)

    def symbolize(self, addr: int) -> str:
        return self.symbols.symbolize(addr)

    def symbolize_pb(self, addr: int) -> str:
        return self.symbols.symbolize_pb(addr)

    @property
    def text_ranges(self) -> core.Ranges:
        return self.symbols.text_ranges

    @property
    def orc(self) -> OrcTable:
        return self.symbols.orc

    @property
    def orc_arrays(self) -> core.OrcArrays:
        """The merged ORC table, prepared for the C core's walks."""
        return self.symbols.orc_arrays

    # ---- sites (sites.py; emu/kernel/ftrace.py drives them) --------------------------------
    def _function(self, fn, what: str) -> FunctionRef:
        """fn, a function of this machine; TypeError or ValueError naming `what`."""
        fns = self.symbols.functions
        if type(fn) is FunctionRef and fn.id < len(fns) and fns[fn.id] is fn:
            return fn           # (the common case, first: no field-by-field comparison)
        check_type(fn, FunctionRef, what, "Machine.function(name) gives one")
        if not (0 <= fn.id < len(fns) and fns[fn.id] == fn):
            raise ValueError(f"{what}: '{fn.name}' is not a function of this machine")
        return fn

    def site(self, fn: FunctionRef) -> int:
        """The C core's index of fn's fentry site, registering it on first use."""
        return self.sites.site(self._function(fn, "site: fn"))

    def set_entries(self, fn: FunctionRef, entries) -> None:
        """fn's stack of replacements, newest first: (target, version, nop,
        transition), at most core.SITE_MAX_ENTRIES; checked before fn's
        site is registered (TypeError, ValueError or CoreError naming the
        entry)."""
        self._function(fn, "set_entries: fn")
        if type(entries) is list and len(entries) <= core.SITE_MAX_ENTRIES and all(
                type(e) is tuple and len(e) == 4 and type(e[0]) is int and 0 <= e[0] < 2**64
                and type(e[1]) is int and -2**31 <= e[1] < 2**31 for e in entries):
            self.sites.set_entries(fn, entries)     # (the models' calls: nothing to name)
            return
        if isinstance(entries, (str, bytes)) or not hasattr(entries, "__iter__"):
            raise TypeError(f"set_entries: entries must be a list of (target, version, nop, transition), "
                            f"not {type(entries).__name__}")
        entries = [tuple(check_type(e, (tuple, list), f"set_entries: entries[{i}]")) for i, e in enumerate(entries)]
        if len(entries) > core.SITE_MAX_ENTRIES:
            raise CoreError(f"set_entries: more than {core.SITE_MAX_ENTRIES} replacements stacked on one "
                                 f"function")
        for i, e in enumerate(entries):
            if len(e) != 4:
                raise ValueError(f"set_entries: entries[{i}] must be (target, version, nop, transition), not {e!r}")
            check_int(e[0], f"set_entries: entries[{i}] target", 0, 2**64 - 1)
            check_int(e[1], f"set_entries: entries[{i}] version", -2**31, 2**31 - 1)
        self.sites.set_entries(fn, entries)

    def set_poke(self, fn: FunctionRef, poke: int) -> None:
        """The instruction a text_poke_bp is writing at fn's site (one of
        core.POKE_*); checked before fn's site is registered."""
        self._function(fn, "set_poke: fn")
        check_int(poke, "set_poke: poke")
        if poke not in (core.POKE_NONE, core.POKE_TO_CALL, core.POKE_TO_NOP):
            raise ValueError(f"set_poke: poke = {poke} is none of core.POKE_NONE, POKE_TO_CALL, POKE_TO_NOP")
        self.sites.set_poke(fn, poke)

    def text_write(self, addr: int, data: bytes) -> None:
        """The one way to change guest code: also drops stale translations.
        data: bytes (or a bytearray or memoryview); TypeError or ValueError
        for an address that is not one, CoreError for one not mapped."""
        check_int(addr, "text_write: addr", 0, 2**64 - 1)
        if not isinstance(data, bytes):
            data = bytes(check_type(data, (bytes, bytearray, memoryview), "text_write: data"))
        self.sites.text_write(addr, data)

    def watch(self, fn: FunctionRef) -> None:
        """Report every entry into fn (its site's watch hook) in the trace."""
        self.sites.site(self._function(fn, "watch: fn"))

    # ---- tasks -------------------------------------------------------------------
    def add_unborn(self, name: str, *, cpu: int | None = None) -> Task:
        """A user task that exists only from fork() on (a module's loader,
        insmod or rmmod): until then, and after each exit, it is exited."""
        check_type(name, str, "add_unborn: name")
        if cpu is not None:
            check_int(cpu, f"add_unborn: task '{name}': cpu")
        if len(self.tasks) >= core.MAX_TASKS:
            raise UserError(f"add_unborn: a machine holds at most {core.MAX_TASKS} tasks")
        if self.started:
            raise UserError("tasks must be added before the machine starts")
        if cpu is None:
            cpu = len(self.tasks) % len(self.cpus)
        if not 0 <= cpu < len(self.cpus):
            raise UserError(f"task '{name}': no CPU {cpu}")
        task = Task(len(self.tasks), name, Kind.USER, cpu)
        task.unborn = True
        self.tasks.append(task)
        return task

    def fork(self, task: Task, entry: int, args=(), *, done=None) -> None:
        """Start an unborn (or exited) task of add_unborn: it calls the
        function at entry with args once (the runtime's task_once), then
        done(task, result) is called (from the FUNCTION_DONE hypercall, in
        that task's context), and it returns to user and exits. The
        listeners' on_fork(task) give it its patch state first."""
        self._task(task, "fork: task")
        check_int(entry, "fork: entry", 0, 2**64 - 1)
        if done is not None:
            check_callable(done, "fork: done")
        if len(args) > 6:
            raise UserError(f"fork: task '{task.name}': at most 6 arguments")
        for i, a in enumerate(args):
            check_int(a, f"fork: args[{i}]", -2**63, 2**64 - 1)
        if not task.unborn or task.state is not RunState.EXITED:
            raise UserError(f"task '{task.name}' is not an unborn or exited loader task")
        self.start()
        lo, hi = task.stack_lo, task.stack_hi
        block = [entry, *args, *([0] * (6 - len(args)))]
        off = STACK_SIZE - runtime.TASK_BLOCK
        self.engine.view(lo, STACK_SIZE)[off:off + 56] = b"".join(
            v.to_bytes(8, "little", signed=v < 0) for v in block)
        self.engine.switch(task.tid)
        uc = self.engine.uc
        uc.reg_write(UC_X86_REG_RIP, self.runtime.task_once)
        uc.reg_write(UC_X86_REG_RSP, hi - runtime.FRAME_GAP)
        uc.reg_write(UC_X86_REG_RBP, 0)
        uc.reg_write(UC_X86_REG_R12, hi - runtime.TASK_BLOCK)
        task.entry_addr = entry
        task.args = tuple(args)
        task.exit_code = None
        task.preempted = False
        task.state = RunState.RUNNABLE
        self.cpus[task.cpu].requeue(task)
        self._done[task.tid] = done
        self.hypercalls[FUNCTION_DONE] = self._function_done
        for listener in self.listeners:
            getattr(listener, "on_fork", lambda t: None)(task)
        self.emit(EV_WAKE, task.tid, 0)

    def _function_done(self, machine, task: Task, args) -> int:
        done = self._done.pop(task.tid, None)
        if done is not None:
            value = args[0] & ((1 << 64) - 1)
            done(task, value - (1 << 64) if value >> 63 else value)
        return 0

    def _task(self, task, what: str) -> Task:
        """task, a task of this machine (an idle one included); TypeError or
        ValueError naming `what`."""
        if type(task) is not Task:
            check_type(task, Task, what, "Machine.tasks holds them")
        tid = task.tid
        if not (task is (self.tasks[tid] if 0 <= tid < len(self.tasks) else
                         self.cpus[-1 - tid].idle if -len(self.cpus) <= tid < 0 else None)):
            raise ValueError(f"{what}: task '{task.name}' is not a task of this machine")
        return task

    def add_task(self, name: str, entry: str, args=(), *, kind: str = "user", cpu: int | None = None) -> Task:
        """A task that runs entry(*args) from the machine's start on (user:
        in a loop, a kernel entry each time; kthread: once, never returning
        to user). UserError for an unknown entry, a machine started
        already, too many arguments or one that does not fit a register;
        TypeError for arguments of the wrong type."""
        check_type(name, str, "add_task: name")
        check_type(entry, str, "add_task: entry", "a function's name")
        if isinstance(args, (str, bytes)) or not hasattr(args, "__len__"):
            raise TypeError(f"add_task: args must be a tuple of ints, not {type(args).__name__}")
        for i, a in enumerate(args):
            check_int(a, f"add_task: task '{name}': args[{i}]")
        if cpu is not None:
            check_int(cpu, f"add_task: task '{name}': cpu")
        if len(self.tasks) >= core.MAX_TASKS:
            raise UserError(f"add_task: a machine holds at most {core.MAX_TASKS} tasks")
        if self.started:
            raise UserError("tasks must be added before the machine starts")
        if kind not in ("user", "kthread"):
            raise UserError(f"task '{name}': kind must be 'user' or 'kthread', not {kind!r}")
        if len(args) > 6:
            raise UserError(f"task '{name}': at most 6 arguments")
        wide = [a for a in args if not INT64[0] <= int(a) <= INT64[1]]
        if wide:
            raise UserError(f"task '{name}': argument {wide[0]} does not fit in a 64-bit register")
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
        """Give every task its stack and initial registers, and bind the
        scheduler state."""
        if self.started:
            return
        if self.engine.closed:
            raise EngineClosed("start: the engine is closed")
        if not self.tasks:
            raise UserError("the machine has no tasks")
        self.started = True
        self.engine.init_tasks(len(self.tasks))
        # Every map makes Unicorn render its memory map again from all its
        # regions, a cost that grows faster than their number: the per-CPU
        # areas as one region halve the regions of a machine of thousands of
        # tasks (4,096 tasks started in 53 s with a region per area, in 11 s
        # with one for all; the stacks need theirs, between guard pages).
        views = {task.tid: self.engine.map(stack_of(task.tid)[0], STACK_SIZE, PROT_R | PROT_W)
                 for task in self.tasks}
        areas = self.engine.map(PERCPU_BASE, len(self.tasks) * percpu.AREA_SIZE, PROT_R | PROT_W)
        for task in self.tasks:
            lo, hi = stack_of(task.tid)
            view = views[task.tid]
            block = [task.entry_addr, *task.args, *([0] * (6 - len(task.args)))]
            off = STACK_SIZE - runtime.TASK_BLOCK
            view[off:off + 56] = b"".join(v.to_bytes(8, "little", signed=v < 0) for v in block)
            rsp = hi - runtime.FRAME_GAP
            task.stack_lo, task.stack_hi = lo, hi
            self.engine.set_task_stack(task.tid, lo, hi)
            task.end_slot = rsp - 8
            task.end_ret = (self.runtime.once_ret if task.unborn else
                            self.runtime.user_ret if task.kind is Kind.USER else self.runtime.kthread_ret)
            self.engine.switch(task.tid)
            uc = self.engine.uc
            uc.reg_write(UC_X86_REG_RIP, self.runtime.task_user if task.kind is Kind.USER
                         else self.runtime.task_kthread)
            uc.reg_write(UC_X86_REG_RSP, rsp)
            uc.reg_write(UC_X86_REG_RBP, 0)
            uc.reg_write(UC_X86_REG_R12, hi - runtime.TASK_BLOCK)
            self._install_percpu(task, areas)
            if task.unborn:
                task.state = RunState.EXITED        # until fork()
            else:
                self.cpus[task.cpu].enqueue(task)
        self.engine.map(GRAPH_BASE, len(self.tasks) * GRAPH_STRIDE, PROT_R | PROT_W)
        self.engine.graph_init(self.runtime.ret_trampoline, GRAPH_BASE, GRAPH_STRIDE)
        if self.sites.twin is not None:
            self.sites.twin.graph_init()
        self.scheduling.bind()

    def _install_percpu(self, task: Task, areas: memoryview) -> None:
        """Fill the task's view of its CPU's per-CPU area (its slice of
        areas, mapped at PERCPU_BASE) and point %gs at it (the loaded
        context is the task's: the base is saved with it)."""
        off = task.tid * percpu.AREA_SIZE
        at = PERCPU_BASE + off
        areas[off:off + percpu.AREA_SIZE] = percpu.area(task.cpu, at)
        self.engine.uc.reg_write(UC_X86_REG_GS_BASE, at)

    @property
    def sched_state(self) -> core.SchedState | None:
        """The scheduler's state (None before start)."""
        return self.scheduling.state

    # ---- time, timers, works (works.py) ----------------------------------------------------
    @property
    def now(self) -> int:
        return self.engine.clock

    def ticks(self, n: float) -> int:
        """Virtual instructions in n ticks (a virtual time: TypeError or
        ValueError for n that is not a finite number >= 0, or one past 2**63 - 1
        instructions)."""
        check_number(n, "ticks: n", 0, (2**63 - 1) / self.tick)
        return min(int(n * self.tick), 2**63 - 1)

    def seconds(self, s: float) -> int:
        """Virtual instructions in s seconds (hz ticks a second; a virtual
        time: TypeError or ValueError for s that is not a finite number >= 0,
        or one past 2**63 - 1 instructions)."""
        check_number(s, "seconds: s", 0, (2**63 - 1) / (self.hz * self.tick))
        return min(int(s * self.hz * self.tick), 2**63 - 1)

    def at(self, when: int, fn) -> None:
        """Call fn() when the clock reaches `when` (in order of registration
        for ties; a time already past: at the next instruction boundary).
        TypeError or ValueError for a when that is not a virtual time (an
        int, 0 <= when < 2**63) or an fn that is not callable."""
        check_int(when, "at: when", 0, 2**63 - 1)
        check_callable(fn, "at: fn")
        self.works.at(when, fn)

    def spawn(self, work) -> None:
        """Start a kernel work (a generator); it runs now until its first wait."""
        if not (hasattr(work, "send") and hasattr(work, "throw")):
            raise TypeError(f"spawn: work must be a generator, not {type(work).__name__}")
        self.works.spawn(work)

    @property
    def all_stopped(self) -> bool:
        return self.works.all_stopped

    @property
    def last_stop_machine(self) -> tuple[int, int, int] | None:
        """(requested, every CPU stopped, released) of the last stop_machine."""
        return self.works.last_stop_machine

    # ---- snapshots (snapshot.py) -------------------------------------------------------
    def snapshot(self) -> snapshot.Snapshot:
        """The machine's whole state, to restore() before each of many runs
        from the same point. Only between runs of a started machine with the
        C scheduler, no model listening, no kernel work and no stop_machine."""
        return snapshot.take(self)

    def restore(self, snap: snapshot.Snapshot, *, policy=None) -> None:
        """Put a snapshot of this machine back: the next run is the same, event
        for event, as the first run from that point. Listeners go (models are
        made anew per run). policy: the next run's scheduling policy (None:
        the snapshot's). StateError when images were loaded since or a
        stop_machine is in progress, CoreError when it is a snapshot of
        another layout, EngineBusy from inside a run."""
        if policy is not None and not callable(getattr(policy, "pick", None)):
            raise TypeError(f"restore: policy must have a pick(cpu, candidates, now) "
                            f"(emu.machine.policy), not {type(policy).__name__}")
        snapshot.restore(self, snap, policy=policy)

    # ---- events and log ----------------------------------------------------------------
    def emit(self, kind: int, task: int, a: int = 0, b: int = 0, c: int = 0) -> None:
        """Append an event (kind, task, a, b, c) at the current time: kind and
        task are C ints, a and b 64-bit signed, c unsigned (TypeError or
        ValueError naming the one that is not)."""
        self.engine.push_event(kind, task, a, b, c)

    def printk(self, text: str) -> None:
        """A kernel message, kept in order with the time it was printed."""
        self.log.append((self.now, text))

    def drain(self) -> None:
        """Move the C core's events into self.trace (packed: no tuple is made
        until the trace is read)."""
        self.engine.drain_into(self.trace)

    # ---- running (scheduling.py) -------------------------------------------------------
    def runnable(self, cpu: Cpu) -> list[Task]:
        """The runnable tasks of cpu's run queue, a CPU of this machine
        (TypeError or ValueError naming it otherwise)."""
        check_type(cpu, Cpu, "runnable: cpu", "Machine.cpus holds them")
        if not any(cpu is c for c in self.cpus):
            raise ValueError(f"runnable: cpu {cpu.index} is not a CPU of this machine")
        return [t for t in cpu.runqueue if t.state is RunState.RUNNABLE]

    @property
    def preemptions(self) -> int:
        """Runnable tasks switched out for another (slice end, cond_resched)."""
        st = self.scheduling.state
        return 0 if st is None else st.preemptions

    def run(self, until: int | None = None, *, stop_when=None, every_slice: bool = True,
            watch=None) -> None:
        """Run until virtual time `until`, until every task has exited, or until
        stop_when() is true. A run given no until is bounded by the events
        it keeps (self.max_events, MAX_EVENTS unless the Machine was given
        another): tasks that never exit would otherwise keep it going until
        the host's memory is spent. It raises EventBound once the trace
        holds that many (checked whenever the machine comes back to Python,
        at the latest when the C core's event ring is full: at most one
        ring beyond the bound); pass until to run to a time. stop_when is checked between slices, or with
        every_slice=False only when the machine comes back to Python for
        kernel work (a timer or work item, a switch point a model watches, a
        hypercall of its own), which lets the scheduler stay in C. With
        watch (a callable giving task ids, asked before each return to the
        scheduler), it is also checked after a slice in which one of those
        tasks left its CPU, instead of after every slice. Stopping and
        running on gives the same run as running straight through.
        Raises GuestFault; EventBound (above); EngineBusy when another thread is running the
        machine; TypeError or ValueError for an until that is not a virtual
        time (an int, 0 <= until < 2**63)."""
        if until is not None:
            if not isinstance(until, int) or isinstance(until, bool):
                raise TypeError(f"run: until must be a virtual time (an int of instructions), "
                                f"not {type(until).__name__}")
            if not 0 <= until < 2**63:
                raise ValueError(f"run: until = {until} is not a virtual time (0 <= until < 2**63)")
        if stop_when is not None:
            check_callable(stop_when, "run: stop_when")
        if watch is not None:
            check_callable(watch, "run: watch")
        with self.engine.hold("run"):
            self.start()
            self.scheduling.run(until, stop_when, every_slice, watch)

    def wake(self, task: Task, *, early: bool) -> None:
        """Wake a sleeping task; its sleep returns the ticks it had left."""
        tasks = self.tasks
        if not (type(task) is Task and 0 <= task.tid < len(tasks) and tasks[task.tid] is task):
            self._task(task, "wake: task")
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

    def signal(self, task: Task) -> None:
        """A fake signal: wakes an interruptible sleeper (it then runs to its
        kernel exit sooner). Running tasks pass a kernel exit anyway."""
        self._task(task, "signal: task")
        if task.state is RunState.SLEEPING and task.interruptible:
            self.wake(task, early=True)

    def set_patch_state(self, task: Task, state: int, route: str = "init") -> None:
        """Set a task's patch state in Python and in the C core; route (one
        of task.ROUTES) says how, in the trace."""
        tasks = self.tasks       # (the models' calls, a few per task and transition: checked inline)
        if not (type(task) is Task and 0 <= task.tid < len(tasks) and tasks[task.tid] is task):
            self._task(task, "set_patch_state: task")
        if not (type(state) is int and -(1 << 31) <= state < 1 << 31):
            check_int(state, "set_patch_state: state", -(1 << 31), (1 << 31) - 1)
        if task.patch_state == state:
            return
        code = _ROUTE_CODES.get(route)
        if code is None:
            raise ValueError(f"{route!r} is not one of task.ROUTES")
        task.patch_state = state
        if task.kind is not Kind.IDLE:
            self.engine.set_task_state(task.tid, state)
        self.engine.push_event(EV_PATCH_STATE, task.tid, state, code, 0)

    # ---- stacks (stacks.py) ---------------------------------------------------------------
    def regs(self, task: Task) -> tuple[int, int, int]:
        """(rip, rsp, rbp) of a task that is not running."""
        return stacks.regs(self, self._task(task, "regs: task"))

    def stack(self, task: Task, *, unwinder: str | None = None, max_entries: int = 100,
              accel: str | None = None) -> tuple[int, tuple[int, ...]]:
        """Walk a task's stack: (unwind.WALK_* code, return addresses with the
        current RIP first). A task in its runtime loop (between kernel entries)
        has an empty kernel stack: reliable, just its RIP."""
        self._task(task, "stack: task")
        if accel not in (None, "c", "python"):
            raise ValueError(f"stack: accel must be 'c' or 'python', not {accel!r}")
        check_int(max_entries, "stack: max_entries", 1, core.WALK_MAX_ENTRIES)
        return stacks.walk(self, task, unwinder=unwinder, max_entries=max_entries, accel=accel)

    def scan_stack(self, task: Task, ranges) -> tuple[int, int, tuple[int, int] | None]:
        """Ksplice's conservative check: (rip, rsp, (address, value) of the
        first stack word above rsp that lies in one of ranges, or None)."""
        return stacks.scan(self, self._task(task, "scan_stack: task"), ranges)

    def backtrace(self, task: Task) -> list[str]:
        return stacks.backtrace(self, self._task(task, "backtrace: task"))

    # ---- faults (faults.py) ------------------------------------------------------------------
    def disassemble(self, addr: int) -> str:
        check_int(addr, "disassemble: addr", 0, 2**64 - 1)
        if self.engine.closed:
            raise EngineClosed("disassemble: the engine is closed")
        return faults.disassemble(self.engine, addr)

    @staticmethod
    def in_guard(addr: int, task: Task) -> bool:
        """Whether addr lies in the guard page below task's stack; TypeError
        or ValueError naming the argument of the wrong type or range."""
        check_int(addr, "in_guard: addr", 0, 2**64 - 1)
        check_type(task, Task, "in_guard: task", "Machine.tasks holds them")
        return in_guard(addr, task.stack_lo)


def _freezable_sleep(machine: Machine, task: Task, args) -> int:
    """The first half of lpemu_sleep_freezable(): the task goes to a
    TASK_FREEZABLE sleep (its second hypercall sleeps). A pending task's
    listeners see it (livepatch from 6.16 tries a switch there, kGraft
    migrates a kthread). For a kthread, wait_event_freezable() passes
    try_to_freeze(): a safe point, which ends its unit (EV_SAFE_POINT) as
    lpemu_safe_point() does; without it a kthread migrated there by kGraft
    ran one unit in two universes in the oracles' eyes."""
    if task.kind is Kind.KTHREAD:
        machine.emit(EV_SAFE_POINT, task.tid)
    if task.pending:
        for listener in machine.listeners:
            hook = getattr(listener, "on_freezable_sleep", None)
            if hook is not None:
                hook(task)
    return 0
