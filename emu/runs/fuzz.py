"""Runs of a scenario, the transition-timing fuzzer, replay and shrinking.

A run is fully described by a RunSpec: the model, the time at which the
first action fires (`start`; the others keep their distance to it), the
schedule (round robin, seeded random, or PCT priorities with d-1 change
points), the preemption mode and the tasks that take part. plan() derives
the RunSpec of (scenario, model, seed) for a strategy:

- exhaustive: seed i starts the transition at point bitreverse(i) of the
  window (scaled from the next power of two): the first n seeds spread over
  the window every ~window/n instructions, each further doubling halves the
  step, and the first 2^ceil(log2 window) seeds reach every instruction. A
  seed's start point does not depend on how many runs a campaign has, so
  `lpemu replay --seed S` needs no run count; round-robin schedule;
- random: a start point drawn from the window, a seeded random schedule;
- pct: a start point drawn from the window, PCT priorities of depth d.

- directed (the default): the first seeds start the transition at the
  points the probe (emu/runs/probe.py) chose so that every state it saw of
  every task is met by some run, the most new states first (round robin,
  drawing rdrand and the slices' lengths from the probe's seed, PROBE_DRAWS:
  each is the probe's run up to its start point); the seeds after them draw a start point
  from everything the probe ran through and alternate seeded random and
  PCT schedules.

The window is [first action, first action + W): W is `[fuzz] window` or one
cycle of the tasks (the longest gap between two unit boundaries of a task,
measured by an unpatched probe run), so a campaign tries every phase of
every task's loop. The same RunSpec gives the same run, event for event;
Result.trace_hash says so.

When a run ends ([fuzz] until; Runner.execute applies it):
- "transitions" (the default): once every transition has ended (completed,
  failed, reversed or cancelled) and two cycles of the tasks more, so that
  the units running across the switch finish; at the latest the horizon
  after the last action, where a transition still pending counts as
  stalled; never before two cycles after the last action (after the moment
  it ran, for a writer that waited for a mutex), so that what it starts
  runs (a module's init and its first calls). A run with no
  transition (no patch action, or every action refused) ends two cycles
  after its last action too;
- "horizon": the horizon after the last action, whatever happens;
- "exit": when every task has exited, at the latest the horizon after the
  last action (the run then warns that tasks were still running).
Every run also ends when every task has exited: nothing is left to run.

Every run records in Result.met the state (emu/runs/states.py) in which the
transition first met each task: observed in the run itself, from the first
action until every task has been seen off its CPU.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace

from emu.engine import core
from emu.runs import oracle, states
from emu.runs.probe import Probe, run_probe
from emu.runs.verdicts import verdicts
from emu.errors import Busy, EmuError, EventBound, GuestFault, StateError, UserError, check_int, check_type
from emu.machine.machine import EV_KERNEL_EXIT, EV_SAFE_POINT, MAX_EVENTS, MODULE_GOING, MODULE_LIVE, Machine
from emu.models import MODEL_NAMES, make_model
from emu.models.refusals import NothingToForce
from emu.kernel.patch import definition, make_patch
from emu.runs.scenario import MAX_TIME, SEED_MAX, STRATEGIES, Program
from emu.machine.policy import make_policy
from emu.machine.scheduling import PREEMPT_MODES
from emu.machine.task import PATCHED, RunState

SCHEDULES = ("rr", "random", "pct")
MAX_REPORTED = 20          # inconsistencies / violations kept per run
POOL = 4                   # machines a runner keeps, each with its snapshot
MAX_JUDGING = 256          # patch definitions, and tables for each, a runner keeps for its judges (Runner._tables)
#: the draws (RunSpec.draws) of the probe and of the directed strategy's
#: first runs: those runs are the probe's run up to their start points
PROBE_DRAWS = 0
MAX_VERDICTS = 65536       # verdicts of timeless assertions a runner keeps (Runner._assertions)


@dataclass(frozen=True)
class RunSpec:
    model: str
    seed: int
    strategy: str
    start: int                      # virtual time of the first action
    schedule: str = "rr"            # rr | random | pct
    sched_seed: int = 0
    depth: int = 3                  # pct: d-1 priority change points
    preempt: str | None = None      # None: the scenario's
    tasks: tuple[str, ...] | None = None    # task instances that take part (None: all)
    kernel: str | None = None       # the kernel whose livepatch semantics apply (None: the scenario's)
    draws: int | None = None        # the seed rdrand, rdseed and the slices' lengths draw from (None: seed)

    @property
    def draw_seed(self) -> int:
        return self.seed if self.draws is None else self.draws

    def __post_init__(self):
        """TypeError or ValueError naming the field that is not what a run
        can be (a RunSpec made by hand, or read back from a record)."""
        def one_of(key: str, value, names) -> None:
            if value not in names:
                raise ValueError(f"RunSpec.{key} must be one of {', '.join(names)}, not {value!r}")
        one_of("model", self.model, MODEL_NAMES)
        check_int(self.seed, "RunSpec.seed", 0, SEED_MAX)
        one_of("strategy", self.strategy, STRATEGIES)
        # the first action's latest time plus the widest window
        check_int(self.start, "RunSpec.start", 0, 2 * MAX_TIME)
        one_of("schedule", self.schedule, SCHEDULES)
        check_int(self.sched_seed, "RunSpec.sched_seed", 0, SEED_MAX)
        check_int(self.depth, "RunSpec.depth", 1, 1000)
        if self.preempt is not None:
            one_of("preempt", self.preempt, PREEMPT_MODES)
        if self.tasks is not None:
            check_type(self.tasks, tuple, "RunSpec.tasks")
            for i, name in enumerate(self.tasks):
                check_type(name, str, f"RunSpec.tasks[{i}]")
        if self.kernel is not None:
            check_type(self.kernel, str, "RunSpec.kernel")
        if self.draws is not None:
            check_int(self.draws, "RunSpec.draws", 0, SEED_MAX)

    def to_json(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks) if self.tasks is not None else None
        if self.kernel is None:
            del d["kernel"]         # a run of the scenario's own kernel: its record as it always was
        if self.draws is None:
            del d["draws"]          # a run drawing from its own seed: its record as it always was
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RunSpec":
        check_type(d, dict, "RunSpec.from_json: d")
        d = dict(d)
        if isinstance(d.get("tasks"), list):
            d["tasks"] = tuple(d["tasks"])
        return cls(**d)


@dataclass
class Result:
    spec: RunSpec
    outcome: str                    # completed | failed | stalled | fault | idle (no transition)
    end: int = 0
    transitions: list = field(default_factory=list)
    inconsistencies: list = field(default_factory=list)
    inconsistent_units: int = 0
    violations: list = field(default_factory=list)
    violation_count: int = 0
    errors: list = field(default_factory=list)     # refused actions: (time, action, message)
    fault: str | None = None
    fault_task: str | None = None                 # the task that faulted (None: unknown or none)
    promise: list = field(default_factory=list)    # the emulator's own errors (emu/runs/promise.py)
    promise_breaches: int = 0
    handovers: list = field(default_factory=list)  # values handed across versions (emu/runs/handover.py)
    handover_count: int = 0
    preemptions: int = 0
    trace_hash: str = ""
    events: int = 0
    executed: int = 0               # guest instructions the run executed (idle time jumped left out)
    met: dict = field(default_factory=dict)        # task -> the state the transition first met it in
    units: int = 0                  # units the consistency check saw
    warnings: list = field(default_factory=list)

    @property
    def inconsistent(self) -> bool:
        return bool(self.inconsistencies)

    @property
    def failing(self) -> bool:
        """What the fuzzer hunts: a unit that mixed versions, or a broken assertion."""
        return bool(self.inconsistencies or self.violations or self.handovers)

    @property
    def emulator_error(self) -> bool:
        """The model broke its own promise: the run says nothing about the patch."""
        return bool(self.promise)

    @property
    def latency(self) -> int | None:
        lat = [t["latency"] for t in self.transitions if t["latency"] is not None]
        return max(lat) if lat else None

    @property
    def pause(self) -> int | None:
        """Longest stop_machine pause of the run (virtual time with every CPU stopped)."""
        p = [end - start for t in self.transitions for start, end in t["pauses"]]
        return max(p) if p else None

    def to_json(self) -> dict:
        kernel = {"kernel": self.spec.kernel} if self.spec.kernel is not None else {}
        return {"model": self.spec.model, **kernel, "seed": self.spec.seed, "strategy": self.spec.strategy,
                "start": self.spec.start, "spec": self.spec.to_json(), "outcome": self.outcome,
                "inconsistent": self.inconsistent, "inconsistent_units": self.inconsistent_units,
                "inconsistencies": self.inconsistencies, "violations": self.violations,
                "violation_count": self.violation_count, "errors": self.errors, "fault": self.fault, "fault_task": self.fault_task,
                "promise": self.promise, "promise_breaches": self.promise_breaches,
                "handovers": self.handovers, "handover_count": self.handover_count,
                "latency": self.latency, "pause": self.pause, "transitions": self.transitions,
                "preemptions": self.preemptions, "end": self.end, "events": self.events,
                "executed": self.executed,
                "trace_hash": self.trace_hash, "met": self.met, "units": self.units, "warnings": self.warnings}


def no_units_warning(unit: str) -> str:
    """What a run (or campaign) that saw no unit of its check says."""
    what = "system call or safe point" if unit == "syscall" else f"call of {unit}()"
    return f"check.unit = \"{unit}\": no {what} was observed, so the consistency check checked nothing"


class Runner:
    """Runs RunSpecs of one compiled scenario. Keeps a few machines between
    runs, each restored from a snapshot of the prefix runs share."""

    def __init__(self, program: Program, *, cycle: int | None = None, probe: Probe | None = None,
                 sched: str = "c", stacks: states.StackSource | None = None):
        check_type(program, Program, "Runner: program", "emu.build_scenario gives one")
        if cycle is not None:
            check_int(cycle, "Runner: cycle", 1, MAX_TIME)
        if probe is not None:
            check_type(probe, Probe, "Runner: probe")
        if sched not in ("c", "python"):
            raise ValueError(f"Runner: sched must be 'c' or 'python', not {sched!r}")
        self.program = program
        self.sched = sched          # "python": the scheduler's twin (no pool: snapshots need C's)
        self.scn = program.scenario
        self.stacks = stacks or states.UnwinderStacks()
        self._cycle = cycle
        self._probe = probe
        self._cover: list[int] | None = None
        self._pool: dict = {}       # prefix key -> (machine, snapshot), least recently used first
        self._arity: dict = {}      # which argument registers each function takes (handover.find)
        self._by_key: tuple[dict, tuple] | None = None     # the assertions by observed key (_checks)
        self._judging: dict = {}    # patch.definition -> the judges' cache for runs of those patches (_tables)
        self._verdicts: dict = {}   # (key, value, task, kind) -> the timeless assertions that fail (_assertions)

    # ---- planning -----------------------------------------------------------------------------
    @property
    def first_at(self) -> int:
        return self.scn.actions[0].at if self.scn.actions else 0

    def cycle(self) -> int:
        """One cycle of the tasks' loops: the longest gap between two unit
        boundaries (kernel exits, safe points) of one task, from an unpatched
        run past the first action. At least 100 instructions."""
        if self._cycle is None:
            m = self.machine(RunSpec("immediate", 0, "exhaustive", self.first_at))
            marks: dict[int, list[int]] = {}
            at = self.first_at

            def enough():
                # the probe reads each drained batch once and drops it, so its
                # memory does not grow with the time before the first action
                m.drain()
                for clock, kind, task, *_ in m.trace.records():
                    if kind in (EV_KERNEL_EXIT, EV_SAFE_POINT) and clock >= at:
                        marks.setdefault(task, []).append(clock)
                m.trace = core.EventLog()
                return (len(marks) == sum(not t.unborn for t in m.tasks)
                        and all(len(v) >= 4 for v in marks.values()))
            try:
                m.run(until=at + m.seconds(2), stop_when=enough, every_slice=False)
            except GuestFault:
                pass
            finally:
                m.engine.close()
            gaps = [b - a for v in marks.values() for a, b in zip(v, v[1:])]
            self._cycle = max([100, *gaps]) if gaps else m.seconds(1)
        return self._cycle

    def window(self) -> int:
        return self.scn.fuzz.window or self.cycle()

    def probe(self) -> Probe:
        """The states of every task, from an unpatched run (emu/runs/probe.py)."""
        if self._probe is None:
            spec = RunSpec("immediate", 0, "directed", self.first_at, draws=PROBE_DRAWS)
            m, fault = self.prefix(spec)
            try:
                patched = sorted({f.rpartition(":")[2] for _, funcs in self.program.patches.values()
                                  for f in funcs})
                if fault is not None:
                    self._probe = Probe(self.first_at, end=m.now, fault=fault, patched=patched)
                else:
                    self._probe = run_probe(m, first_at=self.first_at, cycle=self.cycle(),
                                            bound=m.seconds(self.scn.fuzz.probe), patched=patched,
                                            quiet=self.scn.fuzz.quiet,
                                            stacks=self.stacks)
            finally:
                m.engine.close()
        return self._probe

    def known(self) -> dict:
        """What workers need to plan like this runner (keyword arguments of Runner)."""
        return {"cycle": self.cycle(), "probe": self.probe()}

    def cover_points(self) -> list[int]:
        """The directed strategy's first start points (Probe.cover)."""
        if self._cover is None:
            self._cover = self.probe().cover()
        return self._cover

    def exhaustive_start(self, index: int) -> int:
        """The start point of the index-th exhaustive run (see the module doc)."""
        w = self.window()
        bits = (w - 1).bit_length()
        size = 1 << bits
        j = int(format(index % size, f"0{bits}b")[::-1], 2) if bits else 0
        return self.first_at + j * w // size

    def exhaustive_runs(self) -> int:
        """Runs after which the exhaustive strategy has tried every instruction."""
        return 1 << (self.window() - 1).bit_length()

    def plan(self, model: str, seed: int, *, strategy: str | None = None, kernel: str | None = None) -> RunSpec:
        """The RunSpec of (model, seed) under strategy (default: the
        scenario's), on kernel (default: the scenario's [machine] kernel).
        The start point and schedule do not depend on the kernel: the same
        seed is the same timing on every kernel compared. ValueError for a
        model or strategy that is none, TypeError or ValueError for a seed
        that is not one (0 <= seed < 2**63)."""
        if model not in MODEL_NAMES:
            raise ValueError(f"plan: model must be one of {', '.join(MODEL_NAMES)}, not {model!r}")
        check_int(seed, "plan: seed", 0, SEED_MAX)
        if strategy is not None and strategy not in STRATEGIES:
            raise ValueError(f"plan: strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        spec = self._plan(model, seed, strategy)
        return replace(spec, kernel=kernel) if kernel is not None else spec

    def _plan(self, model: str, seed: int, strategy: str | None) -> RunSpec:
        fz = self.scn.fuzz
        strategy = strategy or fz.strategy
        if strategy == "exhaustive":
            return RunSpec(model, seed, strategy, self.exhaustive_start(seed - fz.seed),
                           self.scn.machine.get("policy", "rr"), seed)
        if strategy == "directed":
            return self._directed(model, seed)
        rng = random.Random(f"{seed}:{strategy}")
        start = self.first_at + rng.randrange(self.window())
        return RunSpec(model, seed, strategy, start, "random" if strategy == "random" else "pct",
                       rng.randrange(2 ** 32), fz.depth)

    def _directed(self, model: str, seed: int) -> RunSpec:
        points, i = self.cover_points(), seed - self.scn.fuzz.seed
        if 0 <= i < len(points):
            # the probe's run up to points[i], its draws included
            return RunSpec(model, seed, "directed", points[i], "rr", 0, draws=PROBE_DRAWS)
        rng = random.Random(f"{seed}:directed")
        span = max(self.window(), self.probe().end - self.first_at)
        schedule = "pct" if seed % 2 else "random"
        return RunSpec(model, seed, "directed", self.first_at + rng.randrange(span), schedule,
                       rng.randrange(2 ** 32), self.scn.fuzz.depth)

    # ---- one run ------------------------------------------------------------------------------
    def check_tasks(self, names, what: str = "RunSpec.tasks") -> None:
        """UserError when names is empty or names something that is no task
        instance of the scenario (what: where the names came from)."""
        known = {i for t in self.scn.tasks for i in t.instances()}
        if not names:
            raise UserError(f"{what}: names no task (tasks: {', '.join(sorted(known))}; leave it out for all)")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(f"{what}: no task '{unknown[0]}' in the scenario (tasks: {', '.join(sorted(known))})")

    def machine(self, spec: RunSpec) -> Machine:
        scn, prog = self.scn, self.program
        opts = {k: v for k, v in scn.machine.items() if k not in ("policy", "kernel")}
        if spec.preempt:
            opts["preempt"] = spec.preempt
        names = [(t, inst, t.instance_args(i)) for t in scn.tasks for i, inst in enumerate(t.instances())]
        if spec.tasks is not None:
            self.check_tasks(spec.tasks)
            names = [(t, inst, args) for t, inst, args in names if inst in spec.tasks]
        m = Machine(prog.base, policy=self._policy(spec, len(names)), name=scn.name, sched=self.sched, **opts)
        # modules loaded from the start come first: a task may start in one ("module:f")
        for mod in scn.modules:
            if mod.loaded:
                m.load(prog.modules[mod.name])
        for t, inst, args in names:
            m.add_task(inst, t.entry, args, kind=t.kind, cpu=t.cpu)
        # a module's init and exit run in loader tasks, born at the action
        # (insmod, rmmod: user processes in their system call)
        for mod in scn.modules:
            for key, what in (("init", "insmod"), ("exit", "rmmod")):
                if getattr(mod, key) is not None:
                    m.add_unborn(mod.loader(what))
        return m

    def prepare(self, spec: RunSpec, *, pooled: bool) -> tuple[Machine, str | None]:
        """A machine for spec at the end of the prefix every run shares: its
        images loaded, the patched functions watched, and (round robin) run
        up to the first action, or just started (seeded schedules). With
        pooled, the machine is kept with a snapshot of that point and
        restored for the next run of the same kind. Returns (machine, the
        fault report if the prefix faulted)."""
        scn, prog = self.scn, self.program
        stop_at = self.first_at if spec.schedule == "rr" and spec.start >= self.first_at else 0
        key = (stop_at, spec.schedule == "rr", spec.preempt, spec.tasks)
        # a module loaded during a run maps memory a snapshot cannot take back;
        # a loader task born during a run holds a callback a snapshot does not
        pooled = pooled and not any(a.do == "load" for a in scn.actions) \
            and not any(mo.init or mo.exit for mo in scn.modules)
        if pooled and key in self._pool:
            m, snap = self._pool.pop(key)
            try:
                m.restore(snap, policy=self._policy(spec, len(m.tasks)))
            except StateError:
                # the last run left what a snapshot cannot take back (a
                # stop_machine still in progress, ...): drop it, build anew
                m.engine.close()
            else:
                self._pool[key] = (m, snap)          # most recently used last
                return m, None
        m = self.machine(spec)
        try:
            for p in scn.patches:
                img, funcs = prog.patches[p.name]
                m.load(img)
                for _, f in make_patch(m, p.name, img, funcs).funcs():
                    if f.old is not None:
                        m.watch(f.old)
            oracle.trace_units(m, scn.unit)
            m.start()
            if stop_at:
                # the first action is coming: tasks that all sleep with no
                # timeout wait for it, as an idle machine does, not a hang
                m.at(stop_at, _first_action_due)
                m.run(until=stop_at, stop_when=lambda: _bounded(m), every_slice=False)
                _bounded(m, raising=True)
        except GuestFault as exc:
            return m, str(exc)
        except BaseException:
            m.engine.close()
            raise
        if pooled:
            if len(self._pool) >= POOL:
                old, _ = self._pool.pop(next(iter(self._pool)))
                old.engine.close()
            self._pool[key] = (m, m.snapshot())
        return m, None

    @property
    def pooled(self) -> int:
        """How many machines the runner keeps to restore runs from."""
        return len(self._pool)

    def close(self) -> None:
        """Free the pooled machines now (else when they are collected)."""
        for m, _ in self._pool.values():
            m.engine.close()
        self._pool.clear()

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prefix(self, spec: RunSpec) -> tuple[Machine, str | None]:
        """A fresh machine (not pooled) where a run of spec stands when its
        own part begins: prepared (prepare()), and drawing from spec's draws
        from there on. The probe and the shrinker's search for a state run
        on from it, so that the start points they find are points of the
        runs that use them. The caller closes machine.engine."""
        m, fault = self.prepare(spec, pooled=False)
        if fault is None:
            self._draw(m, spec)
        return m, fault

    @staticmethod
    def _draw(m: Machine, spec: RunSpec) -> None:
        # rdrand and rdseed draw from the run's draws from here on (pooled
        # and fresh machines alike: both are at the end of the prefix)
        m.seed_random(spec.draw_seed)
        # and so do the slices' lengths: which point of its loop each CPU
        # is at when kernel work runs is the run's, not the quantum's
        m.vary_slices(spec.draw_seed)

    def execute(self, spec: RunSpec, *, keep: bool = False) -> "Result | tuple[Result, Machine, object]":
        """Run one RunSpec. With keep, also return the machine and the model
        (the caller closes machine.engine); without, the machine goes back
        to the runner's pool."""
        check_type(spec, RunSpec, "execute: spec", "Runner.plan gives one")
        scn, prog = self.scn, self.program
        m, fault = self.prepare(spec, pooled=not keep and self.sched == "c")
        self._draw(m, spec)
        retired = m.engine.retired
        try:
            model = make_model(spec.model, m, kernel=spec.kernel or scn.machine.get("kernel"))
            patches = {}
            for p in scn.patches:
                img, funcs = prog.patches[p.name]
                patches[p.name] = model.add(make_patch(m, p.name, img, funcs, replace=p.replace,
                                                       states=p.states, force=p.force))
            res = Result(spec, "idle")
            res.fault = fault
            shift = spec.start - self.first_at
            acted: list[int] = []        # when each action ran (a writer blocked on a mutex runs late)
            for a in scn.actions:
                m.at(a.at + shift, lambda a=a: self._act(m, model, patches, a, res, acted))
            last = (scn.actions[-1].at + shift) if scn.actions else spec.start
            end = last + m.seconds(scn.fuzz.horizon)
            until = scn.fuzz.until

            engine, transitions = m.engine, model.transitions

            def settled():
                if _bounded(m):
                    return True
                if until != "transitions" or engine.clock < last:
                    return False
                for t in transitions:
                    if t.result == "pending":
                        return False
                return True

            try:
                # up to the first action; then slice by slice until every task
                # was seen off its CPU (the states the transition met); then
                # to the run's end ([fuzz] until, see the module doc): with
                # "transitions", until the last transition ends (checked
                # whenever kernel work runs, so the scheduler stays in C),
                # then two cycles of the tasks more
                if fault is None:
                    m.run(until=spec.start)
                    self._observe(m, model, res, settled, end)
                    m.run(until=end, stop_when=settled, every_slice=False)
                    if until == "transitions":
                        # two cycles after the last action too when it ran late (a load
                        # that waited for Ksplice's module_mutex: its init runs then)
                        ends = [t.completed_at or t.requested_at for t in model.transitions]
                        m.run(until=min(end, max(ends + acted + [last]) + 2 * self.cycle()), stop_when=lambda: _bounded(m),
                              every_slice=False)
                    _bounded(m, raising=True)
                    running = [t.name for t in m.tasks if t.state is not RunState.EXITED]
                    if until == "exit" and running:
                        res.warnings.append(f"[fuzz] until = \"exit\": {len(running)} tasks still running at "
                                            f"the horizon ({', '.join(running[:5])}"
                                            f"{', ...' if len(running) > 5 else ''}): the run ended there")
            except GuestFault as exc:
                res.fault, res.fault_task = str(exc), exc.task
            res.executed = m.engine.retired - retired
            self._judge(m, model, list(patches.values()), res)
        except BaseException:
            self._discard(m)
            raise
        if keep:
            return res, m, model
        if fault is not None or res.fault is not None:
            self._discard(m)       # a faulted machine does not go back to the pool
        return res

    def _observe(self, m: Machine, model, res: Result, settled, end: int) -> None:
        """Fill res.met: each task's first state off its CPU once the first
        transition has started (livepatch: its first check; stop_machine:
        its CPUs stopping), slice by slice until every task was seen, or
        until nothing is in transition."""
        want = sum(1 for t in m.tasks if not t.is_idle)
        obs = states.Observer(m, self.stacks)

        def started():
            # the first transition that looked at the tasks (one that
            # failed before its first stop or check looked at none)
            for t in model.transitions:
                if t.checked_at is not None:
                    return True
            return False
        # where the transition checks a pending task at its cond_resched()
        # (livepatch 6.4 to 6.15), it meets the task there on its CPU
        passes = states.CheckedPasses(m, self.stacks, started) if model.checks_at_cond_resched else None
        if passes is not None:
            m.listeners.insert(0, passes)

        def look():
            if not started():
                # no transition has looked at the tasks yet: a later action
                # may start one (a module loaded first, an enable that waits
                # for the core's mutex, one after an enable that failed);
                # once every action was made and none started one, none will
                return settled()
            if passes is not None:
                for task, st in passes.met.items():
                    res.met.setdefault(task, st)
            for task, st in obs.observe(skip=res.met).items():
                res.met[task] = st
            return len(res.met) >= want or settled()

        def unmet():
            # a task not met yet is on a CPU (look() met the others): the
            # loop comes back when it leaves it (its state changes only
            # while it runs); nothing is watched before the transition starts
            if not started():
                return ()
            return [t.tid for t in m.tasks if not t.is_idle and t.name not in res.met]
        try:
            m.run(until=end, stop_when=look, watch=unmet)
        finally:
            if passes is not None:
                m.listeners.remove(passes)

    def _discard(self, m: Machine) -> None:
        for key, (pm, _) in list(self._pool.items()):
            if pm is m:
                del self._pool[key]
        m.engine.close()

    @staticmethod
    def _policy(spec: RunSpec, n: int):
        """The schedule of spec for n tasks."""
        return make_policy(spec.schedule, spec.sched_seed, n, depth=spec.depth) \
            if spec.schedule == "pct" else make_policy(spec.schedule, spec.sched_seed)

    def _act(self, m: Machine, model, patches, a, res: Result, acted: list[int]) -> None:
        """One action, as its writer makes it: a sysfs write, insmod or
        rmmod blocks on the core's mutex while the core changes text (the
        kernel's mutex_lock(&klp_mutex)), and goes on once it is free; the
        time it goes on is appended to acted."""
        if model.locked:
            model.after_unlock(lambda: self._act(m, model, patches, a, res, acted))
            return
        acted.append(m.now)
        prog = self.program
        try:
            if a.do == "enable":
                model.enable(patches[a.target])
            elif a.do == "disable":
                model.disable(patches[a.target])
            elif a.do == "force":
                try:
                    model.force(patches.get(a.target))
                except NothingToForce as exc:
                    # the write fails and changes nothing, as force_store's
                    # -EINVAL: the transition ended (or never began) before
                    # it; said in the log, and no refusal of the run's
                    m.printk(f"lpemu: force{' ' + a.target if a.target else ''}: {exc}: nothing to force")
            elif a.do == "load":
                img = prog.modules[a.target]
                model.check_load(img)        # before its insmod task starts
                model.load_module(img, init=self._loader(m, model, res, a, "init"))
                oracle.trace_units(m, self.scn.unit)
                for p in patches.values():
                    _rebind(m, p)
            elif a.do == "unload":
                img = prog.modules[a.target]
                exit_ = self._loader(m, model, res, a, "exit")
                if exit_ is None:
                    model.check_remove(img)     # a module in use stays: it is not going
                    m.module_event(img, MODULE_GOING)
                    model.unload_module(img)
                else:
                    exit_()              # the module goes when its exit function returns
        except EmuError as exc:
            res.errors.append({"time": m.now, "action": f"{a.do} {a.target}".strip(), "error": str(exc)})
            m.printk(f"lpemu: {a.do} {a.target}: {exc}")

    def _loader(self, m: Machine, model, res: Result, a, key: str):
        """The start of module a.target's init (key "init") or exit ("exit")
        as guest code in its loader task (insmod-M, rmmod-M; Machine.fork),
        or None when the module has none. init: the kernel's do_init_module
        after the coming notifier; a non-zero result fails the load, and the
        module goes (the going notifier, as the kernel's failure path).
        exit: delete_module's call of the module's exit; the going notifier
        runs when it returns. Raises Busy when the loader is still running
        (a module still coming cannot be removed: -EBUSY), and what
        Model.check_remove raises for a module in use (its exit then does
        not run)."""
        spec = next(mo for mo in self.scn.modules if mo.name == a.target)
        fname = getattr(spec, key)
        if fname is None:
            return None
        img = self.program.modules[spec.name]
        task = next(t for t in m.tasks if t.name == spec.loader("insmod" if key == "init" else "rmmod"))
        busy = model.loaders.get(spec.name)
        if busy is not None:
            raise Busy(f"module '{spec.name}' is still {busy}: its {spec.loader('insmod' if busy == 'coming' else 'rmmod')} "
                       f"has not finished (-EBUSY)")
        if key == "exit":
            model.check_remove(img)     # delete_module: a module in use stays, its exit unrun
        model.loaders[spec.name] = "coming" if key == "init" else "going"
        entry = img.functions[fname].start
        action = f"{'load' if key == 'init' else 'unload'} {spec.name}"

        def done(task, result: int) -> None:
            rc = (result & 0xffffffff) - ((result & 0x80000000) << 1)     # int (*init)(void)
            if key == "init" and rc != 0:
                res.errors.append({"time": m.now, "action": action,
                                   "error": f"{fname}() returned {rc}: the module is unloaded"})
                m.printk(f"lpemu: load {spec.name}: {fname}() returned {rc}")
            if key == "init":
                m.module_event(img, MODULE_LIVE if rc == 0 else MODULE_GOING, task.tid)
            if key == "exit" or rc != 0:
                # the going notifier, in the loader's context: it waits for
                # the core's mutex as the rmmod does (Model.after_unlock);
                # the module stays going until it is freed
                model.loaders[spec.name] = "going"
                model.after_unlock(lambda: self._going(m, model, img, res, action))
            else:
                model.loaders.pop(spec.name, None)
        def start() -> None:
            if key == "exit":           # delete_module: the module is going before its exit runs
                m.module_event(img, MODULE_GOING, task.tid)
            m.fork(task, entry, done=done)
        return start

    @staticmethod
    def _going(m: Machine, model, img, res: Result, action: str) -> None:
        try:
            model.unload_module(img, check=False)
        except EmuError as exc:
            res.errors.append({"time": m.now, "action": action, "error": str(exc)})
            m.printk(f"lpemu: {action}: {exc}")
        finally:
            model.loaders.pop(img.name, None)

    def _judge(self, m: Machine, model, patches, res: Result) -> None:
        m.drain()
        res.end = m.now
        res.preemptions = m.preemptions
        res.events = len(m.trace)
        res.trace_hash = trace_hash(m)
        res.transitions = [{"patch": t.patch, "target": "patched" if t.target == PATCHED else "unpatched",
                            "requested_at": t.requested_at, "completed_at": t.completed_at,
                            "result": t.result, "error": t.error, "attempts": t.attempts,
                            "latency": t.latency, "pauses": [list(p) for p in t.pauses],
                            "blockers": [{"task": n, "stack": list(s)} for n, s in t.blockers],
                            "attempt_log": _attempt_log(t.history)}
                           for t in model.transitions]
        results = {t.result for t in model.transitions}
        if res.fault:
            res.outcome = "fault"
        elif "failed" in results or res.errors:
            res.outcome = "failed"
        elif "pending" in results:
            res.outcome = "stalled"
        elif results:
            res.outcome = "completed"
        stats: dict = {}
        tables = self._tables(patches)
        bad = oracle.check(m, patches, model.transitions, unit=self.scn.unit, stats=stats, cache=tables)
        res.units = stats["units"]
        if not res.units:
            res.warnings.append(no_units_warning(self.scn.unit))
        res.inconsistent_units = len(bad)
        res.inconsistencies = [b.to_json() for b in bad[:MAX_REPORTED]]
        checked = verdicts(m, patches, spec_model=res.spec.model, arity=self._arity, cache=tables,
                           unlinked=frozenset(model.unlinked))
        res.promise_breaches, res.promise = checked.breaches, checked.promise
        res.handover_count, res.handovers = checked.handover_count, checked.handovers
        self._assertions(m, res)

    def _tables(self, patches) -> dict:
        """The judges' cache for runs of patches made alike (each a dict in
        which oracle.check, promise.check and handover.find keep what they
        derive from the patches); at most MAX_JUDGING of them, with at most
        MAX_JUDGING entries each, before they start anew."""
        if len(self._judging) > MAX_JUDGING:
            self._judging.clear()
        tables = self._judging.setdefault(definition(patches), {})
        if len(tables) > MAX_JUDGING:
            tables.clear()
        return tables

    def _assertions(self, m: Machine, res: Result) -> None:
        if not self.scn.assertions:
            return
        obs = m.trace.of_kind(core.EV_OBSERVE)
        if not obs:
            return
        by_key, unkeyed = self._checks()
        # each task's name and kind, read once per run rather than per observation
        who = [(t.name, t.kind.value) for t in m.tasks]
        nobody = ("?", "?")
        # an assertion's verdict is a function of the names it reads (Assertion.names):
        # observations repeat (the same task observing the same value), and the
        # verdicts of those whose assertions do not read the time are kept by the
        # runner, by (key, value, task name, kind), for every run after
        verdicts = self._verdicts
        if len(verdicts) > MAX_VERDICTS:
            verdicts.clear()
        if unkeyed[1] and all(timeless for _, timeless in by_key.values()):
            # the usual case: each distinct observation is judged once, and
            # only the observations that fail are walked, in order
            fails = {}
            for key, value, task in {(r[3], r[4], r[2]) for r in obs}:
                checks, _ = by_key.get(key, unkeyed)
                if checks:
                    name, kind = who[task] if 0 <= task < len(who) else nobody
                    failed = verdicts.get((key, value, name, kind))
                    if failed is None:
                        failed = verdicts[key, value, name, kind] = _failed(checks, key, value, 0, name, kind)
                    if failed:
                        fails[key, value, task] = failed, name
            if fails:
                for clock, _, task, key, value, _ in [r for r in obs if (r[3], r[4], r[2]) in fails]:
                    failed, name = fails[key, value, task]
                    _report(res, failed, name, clock, key, value)
            return
        for clock, _, task, key, value, _ in obs:
            checks, timeless = by_key.get(key, unkeyed)
            if not checks:
                continue
            name, kind = who[task] if 0 <= task < len(who) else nobody
            failed = verdicts.get((key, value, name, kind)) if timeless else None
            if failed is None:
                failed = _failed(checks, key, value, clock, name, kind)
                if timeless:
                    verdicts[key, value, name, kind] = failed
            _report(res, failed, name, clock, key, value)

    def _checks(self) -> tuple[dict, tuple]:
        """The scenario's assertions that apply to an observation, in their
        order, each group with whether none of them reads the time:
        (observed key -> the group of that key's and every key's assertions,
        the group of every key's), made once per runner."""
        if self._by_key is None:
            def group(checks):
                return tuple(checks), not any("time" in a.names for a in checks)
            checks = self.scn.assertions
            keys = {a.key for a in checks if a.key is not None}
            self._by_key = ({k: group([a for a in checks if a.key in (None, k)]) for k in keys},
                            group([a for a in checks if a.key is None]))
        return self._by_key


def _failed(checks, key: int, value: int, clock: int, task: str, kind: str) -> list[tuple]:
    """The assertions of checks that fail on one observation, in order,
    each with the error its expression raised (None: it was false)."""
    env = {"key": key, "value": value, "time": clock, "task": task, "kind": kind}
    failed = []
    for a in checks:
        try:
            if not a.holds(env):
                failed.append((a, None))
        except Exception as exc:      # the user's expression failed on this record
            failed.append((a, f"{type(exc).__name__}: {exc}"))
    return failed


def _attempt_log(history) -> list[dict]:
    """Blocked attempts of a transition as JSON: the first MAX_REPORTED - 1
    and the last (a transition retried for long blocks at many attempts)."""
    kept = history if len(history) <= MAX_REPORTED else [*history[:MAX_REPORTED - 1], history[-1]]
    return [{"attempt": a.attempt, "clock": a.clock,
             "blockers": [{"task": n, "stack": list(s)} for n, s in a.blockers]} for a in kept]


def _report(res: Result, failed: list, task: str, clock: int, key: int, value: int) -> None:
    """Count the failed assertions ((assertion, why) pairs) of one
    observation in res, and keep the first MAX_REPORTED of a run."""
    res.violation_count += len(failed)
    for a, why in failed:
        if len(res.violations) < MAX_REPORTED:
            res.violations.append({"assert": a.text, "line": a.line, "task": task,
                                   "time": clock, "key": key, "value": value, "error": why})


def _first_action_due() -> None:
    """The timer that stands for the first action in the prefix a run shares."""


def _bounded(m: Machine, *, raising: bool = False) -> bool:
    """Whether m's run has kept MAX_EVENTS events (checked whenever it comes
    back to Python, at the latest when the C core's event buffer is full).
    With raising, an EventBound that says which bound was hit."""
    if len(m.trace) < MAX_EVENTS:
        return False
    if raising:
        raise EventBound(f"the run reached {len(m.trace):_} events by t={m.now} (a run keeps at most "
                        f"{MAX_EVENTS:_} events in memory): start the actions earlier or shorten "
                        f"[fuzz] horizon")
    return True


def _rebind(m: Machine, patch) -> None:
    """A module came: bind the functions of every patch for it (the patches
    it concerns were linked by the model's load_module; the others see it
    at their next enable)."""
    from emu.kernel.patch import resolve
    try:
        resolve(m, patch)
    except UserError:
        pass


def trace_hash(m: Machine) -> str:
    """A digest of the run: every event (packed), then every kernel message."""
    messages = "".join(f"{t}:{text}\n" for t, text in m.log).encode()
    return f"{core.digest(messages, m.trace.digest()):016x}"
