"""Scenario files (TOML): what to run, what to patch, when, and what to check.

    [program]   sources, stubs, cpu_features, cflags
    [machine]   cpus, quantum, preempt, tick, unwinder, policy, kernel
    [[task]]    name, entry, args, count, kind, cpu   (args: per instance, see instance_args)
    [[module]]  name, sources, loaded, init, exit  (images loaded/unloaded at run time; init
                                                and exit run as guest code in loader tasks)
    [[patch]]   name, sources, functions, replace, states, force
    [[action]]  at, do (enable|disable|force|load|unload), patch | module
    [check]     unit, assert, observe
    [fuzz]      models, runs, strategy, seed, horizon, until, window, depth, probe, quiet
    [expect]    MODEL = "safe" | ["safe", "completes"] ...  (emu/runs/expect.py)
    [expect.kernel."V"]  MODEL = ...  (on kernel V, in place of [expect]'s MODEL)

Paths are relative to the scenario file. Every mistake is a ScenarioError
naming the file, the line and the key; unknown keys are mistakes too.
load() only reads and checks; build() compiles (emu/images/image.py) and decides
which functions each patch carries (emu/images/diff.py when `functions` is absent).
"""
from __future__ import annotations

import datetime
import math
import os
import re
import sys
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from emu.errors import BuildError, PatchError, ScenarioError
from emu.kernel import versions
from emu.kernel.patch import VMLINUX
from emu.machine.task import INT64      # a register value (signed or unsigned)
from emu.models import DEFAULT_MODELS, MODEL_NAMES
from emu.runs.assertion import Assertion, AssertionSyntax
from emu.runs.expect import EXPECTATIONS

MODELS = MODEL_NAMES        # emu/models/__init__.py is their home
STRATEGIES = ("directed", "exhaustive", "random", "pct")
ACTIONS = ("enable", "disable", "force", "load", "unload")
#: [fuzz] until: when a run ends (emu/runs/fuzz.py, Runner.execute, applies it):
#: transitions: once every transition has ended (and two cycles of the tasks
#: more), at the latest the horizon after the last action; horizon: the
#: horizon after the last action; exit: when every task has exited, at the
#: latest the horizon after the last action (a run says when tasks were
#: still running then). Any run ends when every task has exited.
UNTIL = ("transitions", "horizon", "exit")

# Bounds of what a scenario may ask for. Each keeps a run finite in memory and
# time; a value past one is an error naming the key and the bound (README,
# "Limits").
MAX_FILE = 1 << 20              # bytes of a scenario file
MAX_STRING = 4096               # characters of a name, a path, a flag
MAX_LIST = 4096                 # elements of any list (sources, cflags, functions, args...)
MAX_CFLAGS = 64 * 1024          # characters of all cflags together
HZ = 100                        # ticks a virtual second (the Machine's default)
DEFAULT_TICK = 1000             # the Machine's default tick
MAX_TIME = 10 ** 8              # virtual instructions a run may reach (`at`, the horizon, `window`)
MAX_TICK = 10 ** 5              # instructions per tick (1 s = 100 ticks)
MAX_QUANTUM = 10 ** 9
MAX_CPUS = 64
MAX_TASKS = 1000
MAX_QUIET = 10 ** 6             # [fuzz] quiet: cycles (the probe's bound, [fuzz] probe, ends it anyway)
MAX_RUNS = 10 ** 6              # runs of one campaign (runs x models)
MAX_IMAGES = 60                 # patches + modules: the C core holds 64 code regions (csrc/core.h
                                # EMU_MAX_CODE): the base, the runtime page, and one per image
MAX_SITES = 4096                # distinct patched functions: csrc/core.h EMU_MAX_SITES
MAX_IMAGE_BYTES = 256 << 20     # bytes an image maps (text, data, bss)
SEED_MAX = (1 << 63) - 1        # seeds, state ids and versions


@dataclass
class TaskSpec:
    name: str
    entry: str
    args: tuple[int, ...] = ()
    count: int = 1
    kind: str = "user"
    cpu: int | None = None
    line: int = 0
    #: each instance's arguments (None: every instance gets args); from a
    #: template with {i} or a list of argument lists (instance_args)
    per_instance: tuple[tuple[int, ...], ...] | None = None

    def instances(self) -> list[str]:
        return [self.name] if self.count == 1 else [f"{self.name}{i}" for i in range(self.count)]

    def instance_args(self, index: int) -> tuple[int, ...]:
        """The arguments of instance index (0..count-1)."""
        return self.per_instance[index] if self.per_instance is not None else self.args


@dataclass
class ModuleSpec:
    name: str
    sources: list[Path]
    loaded: bool = False
    line: int = 0
    init: str | None = None     # its module_init: runs in its loader task, insmod-NAME (LOADER)
    exit: str | None = None     # its module_exit: runs in rmmod-NAME before it goes

    def loader(self, what: str) -> str:
        """The name of its loader task: what = "insmod" (init) or "rmmod" (exit)."""
        return f"{what}-{self.name}"


@dataclass
class PatchSpec:
    name: str
    sources: list[Path]
    functions: list[str] | None = None      # None: every function that differs (emu/images/diff.py)
    replace: bool = False
    states: list[tuple[int, int]] = field(default_factory=list)
    force: list[str] = field(default_factory=list)
    line: int = 0


@dataclass
class ActionSpec:
    at: int
    do: str
    target: str                 # patch or module name
    line: int = 0


@dataclass
class FuzzSpec:
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    runs: int = 100
    strategy: str = "directed"
    seed: int = 0
    horizon: float = 20.0       # seconds of virtual time after the last action
    until: str = "transitions"  # when a run ends (UNTIL; emu/runs/fuzz.py, Runner.execute)
    window: int | None = None   # instructions over which start points vary (None: one cycle of the tasks)
    depth: int = 3              # PCT: d-1 priority change points
    probe: float = 10.0         # seconds of virtual time the probe may run (emu/runs/probe.py)
    quiet: int = 64             # cycles of the tasks without a new state after which the probe stops


@dataclass
class Scenario:
    path: Path
    sources: list[Path]
    cflags: list[str] = field(default_factory=list)
    cpu_features: list[int] | None = None
    machine: dict = field(default_factory=dict)
    tasks: list[TaskSpec] = field(default_factory=list)
    modules: list[ModuleSpec] = field(default_factory=list)
    patches: list[PatchSpec] = field(default_factory=list)
    actions: list[ActionSpec] = field(default_factory=list)
    unit: str = "syscall"
    unit_line: int = 0          # the line of [check] unit, for build()'s messages
    assertions: list[Assertion] = field(default_factory=list)
    fuzz: FuzzSpec = field(default_factory=FuzzSpec)
    expect: dict[str, tuple[str, ...]] = field(default_factory=dict)    # model -> expectations
    # kernel ("MAJOR.MINOR") -> model -> expectations on that kernel ([expect.kernel."V"])
    expect_kernel: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The scenario's name in traces, timelines and reports: its file's
        stem, or its directory's for a scenario.toml, as text (readable)."""
        stem = self.path.name.removesuffix(".toml").removesuffix(".lpemu")
        return readable(stem if stem != "scenario" else self.path.parent.name)

    @property
    def inputs(self) -> list[Path]:
        """Every file the runs read: this file and each source (program and
        stubs, modules, patches), in that order."""
        return [self.path, *self.sources, *(p for m in self.modules for p in m.sources),
                *(p for pt in self.patches for p in pt.sources)]

    def kernel(self, kernel: str | None = None) -> str:
        """The kernel a run is on: kernel, else [machine] kernel, else the newest."""
        return versions.kernel(kernel or self.machine.get("kernel")).name

    def expected(self, model: str, kernel: str | None = None) -> tuple[str, ...]:
        """What a campaign of model must show on kernel (None: the
        scenario's, self.kernel()): [expect.kernel."V"]'s entry for the
        model, else [expect]'s, else nothing (judged by --fail-on)."""
        on = self.expect_kernel.get(self.kernel(kernel), {})
        return on.get(model, self.expect.get(model, ()))

    def expected_models(self, kernel: str | None = None) -> list[str]:
        """The models with an expectation on kernel, [expect]'s first."""
        return list(dict.fromkeys([*self.expect, *self.expect_kernel.get(self.kernel(kernel), {})]))


# ---- reading --------------------------------------------------------------------------------

def _key_lines(text: str) -> dict[tuple, int]:
    """(table path with array indices, key) -> line number, from the raw text.

    tomllib reports no positions, so the positions of headers and `key =`
    lines are found here; a key inside an inline table or a multi-line array
    maps to the line of its outer key."""
    lines: dict[tuple, int] = {}
    counts: dict[str, int] = {}
    table: tuple = ()
    header = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
    part = r"(?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')"
    keyline = re.compile(rf"^\s*({part}(?:\s*\.\s*{part})*)\s*=")
    depth = 0
    for no, raw in enumerate(text.splitlines(), 1):
        if depth == 0:
            m = header.match(raw)
            if m:
                parts = _dotted(m.group(2))
                name = ".".join(parts)
                if m.group(1) == "[[":
                    counts[name] = counts.get(name, -1) + 1
                    table = (name, counts[name])
                else:
                    table = (parts[0], counts[parts[0]], *parts[1:]) if parts[0] in counts else tuple(parts)
                lines.setdefault((table, None), no)
                continue
            m = keyline.match(raw)
            if m:
                # a dotted key (a.b = 1) is key a of this table and key b of table a
                keys = _dotted(m.group(1))
                for i, key in enumerate(keys):
                    lines.setdefault((table + tuple(keys[:i]), key), no)
        depth += raw.count("[") - raw.count("]") if "=" in raw or depth else 0
        depth = max(depth, 0)
    return lines


def _dotted(name: str) -> list[str]:
    """The parts of a dotted TOML name, whose quoted parts may hold dots
    ([expect.kernel."6.8"], a."b.c" = 1)."""
    return [q or b or w.strip() for q, b, w in re.findall(r'"([^"]*)"|\'([^\']*)\'|([^.]+)', name)]


class _Reader:
    """Typed access to one table, with file:line in every message."""

    def __init__(self, path: Path, lines: dict, table: tuple, data: dict, label: str):
        self.path, self.lines, self.table, self.data, self.label = path, lines, table, data, label
        self.used: set[str] = set()

    def line(self, key: str | None = None) -> int:
        return self.lines.get((self.table, key)) or self.lines.get((self.table, None)) or 0

    def error(self, key: str | None, message: str) -> ScenarioError:
        where = f"{self.path}:{self.line(key)}" if self.line(key) else str(self.path)
        what = f"{self.label}.{key}" if key else self.label
        return ScenarioError(f"{where}: {what}: {message}")

    def get(self, key: str, kind, default=None, *, required: bool = False):
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.error(None, f"missing key '{key}'")
            return default
        value = self.data[key]
        ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
        if not ok:
            raise self.error(key, f"must be {_kind_name(kind)}, not {_toml_type(value)} {_short(value)}")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise self.error(key, f"a string of {len(value)} characters (at most {MAX_STRING})")
        if isinstance(value, list) and len(value) > MAX_LIST:
            raise self.error(key, f"a list of {len(value)} elements (at most {MAX_LIST})")
        return value

    def integer(self, key: str, lo: int, hi: int, default=None, *, required: bool = False, what: str = ""):
        """An integer in [lo, hi] (hi None: no upper bound), or default."""
        value = self.get(key, int, default, required=required)
        if key not in self.data:
            return value
        if value < lo:
            raise self.error(key, f"must be at least {lo}{what}, not {value}")
        if hi is not None and value > hi:
            raise self.error(key, f"must be at most {hi:_}{what}, not {_short(value)}")
        return value

    def number(self, key: str, lo: float, hi: float, default=None, *, what: str = ""):
        """A finite number in (lo, hi], or default."""
        value = self.get(key, (int, float), default)
        if key in self.data:
            if not (math.isfinite(value) and lo < value <= hi):
                raise self.error(key, f"must be above {lo:g} and at most {hi:g}{what}, not {value!r}")
            value = float(value)
        return value

    def str_list(self, key: str, default=None, *, required: bool = False) -> list[str] | None:
        value = self.get(key, (list, str), default, required=required)
        if isinstance(value, str):
            value = [value]
        if value is not None and not all(isinstance(v, str) for v in value):
            bad = next(v for v in value if not isinstance(v, str))
            raise self.error(key, f"must be a list of strings, not one holding {_toml_type(bad)} {_short(bad)}")
        if value is not None and any(len(v) > MAX_STRING for v in value):
            raise self.error(key, f"holds a string longer than {MAX_STRING} characters")
        return value

    def table(self, key: str, label: str) -> "_Reader":
        """A reader of the inline table at key (a TOML table nested in this one)."""
        value = self.data[key]
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, not {_toml_type(value)} {_short(value)}")
        return _Reader(self.path, {(self.table + (key,), None): self.line(key)}, self.table + (key,), value,
                       label)

    def finish(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.error(key, f"unknown key (known: {', '.join(sorted(self.used))})")


def _kind_name(kind) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a table",
             float: "a number"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _short(value) -> str:
    """value as the scenario wrote it (repr; a date or time in TOML's own
    form, not Python's), cut to a readable length."""
    text = (("[...]" if isinstance(value, list) else "{...}") if isinstance(value, (list, dict))
            else value.isoformat() if isinstance(value, (datetime.date, datetime.time)) else repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _toml_type(value) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table",
            datetime.datetime: "date-time", datetime.date: "date", datetime.time: "time"}.get(
                type(value), type(value).__name__)


def load(path) -> Scenario:
    """Read and check a scenario file. Raises ScenarioError; TypeError when
    path is not a path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load: path must be a scenario file's path, not {type(path).__name__}")
    path = Path(path)
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    except (RecursionError, MemoryError):
        raise ScenarioError(f"{path}: arrays or tables nested too deeply") from None
    lines = _key_lines(text)
    top = _Reader(path, lines, (), data, "scenario")
    here = path.parent

    def files(r: _Reader, key: str, *, required: bool = True, besides: list[Path] = ()) -> list[Path]:
        """The files key names, each a regular file named once (here or in
        besides: a file compiled twice would define everything twice)."""
        names = r.str_list(key, required=required) or []
        if required and not names:
            raise r.error(key, "names no file")
        out = []
        for name in names:
            if "\0" in name:                          # no path holds one (the OS refuses it)
                raise r.error(key, f"{_short(name)}: a file name cannot hold a NUL character")
            try:
                p = (here / name).resolve(strict=True)
            except FileNotFoundError:
                raise r.error(key, f"no such file: {name}") from None
            except (OSError, RuntimeError) as exc:     # a symlink loop, a name too long, ...
                raise r.error(key, f"{name}: {getattr(exc, 'strerror', None) or exc}") from None
            if not p.is_file():
                raise r.error(key, f"not a regular file: {name}")
            if p in out or p in besides:
                raise r.error(key, f"{name}: named twice (a file is compiled and linked once)")
            out.append(p)
        return out

    def table(key: str) -> _Reader:
        value = top.get(key, dict, {})
        return _Reader(path, lines, (key,), value, key)

    def array(key: str) -> list[_Reader]:
        value = top.get(key, list, [])
        if not all(isinstance(v, dict) for v in value):
            raise top.error(key, f"must be an array of tables ([[{key}]])")
        return [_Reader(path, lines, (key, i), v, f"{key}[{i}]") for i, v in enumerate(value)]

    prog = table("program")
    if "program" not in data:
        raise ScenarioError(f"{path}: missing table [program]")
    # stubs: C implementations of kernel symbols that kernel objects in sources
    # call (emu/images/kobject.py stubs the rest); linked with the sources
    sources = files(prog, "sources")
    scn = Scenario(path, sources + files(prog, "stubs", required=False, besides=sources),
                   prog.str_list("cflags", []))
    # cpu_features: X86_FEATURE_* numbers the CPU has; kernel objects' alternatives
    # are applied for them (absent: left original)
    features = prog.get("cpu_features", list)
    if features is not None and not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 16
                                        for v in features):
        raise prog.error("cpu_features", "must be a list of integers (X86_FEATURE_* numbers)")
    scn.cpu_features = features
    nul = [f for f in scn.cflags if "\0" in f]            # gcc's argv cannot hold one
    if nul:
        raise prog.error("cflags", f"{_short(nul[0])}: a flag cannot hold a NUL character")
    if "" in scn.cflags:                                   # gcc would take it for a file name
        raise prog.error("cflags", "holds an empty flag")
    if sum(len(f) for f in scn.cflags) > MAX_CFLAGS:
        raise prog.error("cflags", f"{sum(len(f) for f in scn.cflags)} characters of flags (at most {MAX_CFLAGS})")
    prog.finish()

    mach = table("machine")
    m = {}
    for key, lo, hi in (("cpus", 1, MAX_CPUS), ("quantum", 1, MAX_QUANTUM), ("tick", 1, MAX_TICK)):
        value = mach.integer(key, lo, hi)
        if value is not None:
            m[key] = value
    for key in ("preempt", "unwinder", "policy", "kernel"):
        value = mach.get(key, str)
        if value is not None:
            m[key] = value
    for key, allowed in (("preempt", ("none", "voluntary", "full")), ("unwinder", ("orc", "fp")),
                         ("policy", ("rr", "random", "pct"))):
        if key in m and m[key] not in allowed:
            raise mach.error(key, f"must be one of {', '.join(allowed)}, not {_short(m[key])}")
    if "kernel" in m:
        try:
            versions.kernel(m["kernel"])
        except ValueError as exc:
            raise mach.error("kernel", str(exc)) from None
    mach.finish()
    scn.machine = m

    names: set[str] = set()
    for r in array("task"):
        name = r.get("name", str, required=True)
        if not name or "," in name:     # `--tasks a,b` and the reproduce commands list names with commas
            raise r.error("name", f"{name!r} is not a task name (non-empty, no ',')")
        _plain_name(r, "task", name)
        t = TaskSpec(name, _function_name(r, "entry", r.get("entry", str, required=True)), (),
                     r.integer("count", 1, MAX_TASKS, 1), r.get("kind", str, "user"),
                     r.integer("cpu", 0, m.get("cpus", 1) - 1, what=f" (the machine has {m.get('cpus', 1)} CPUs)"),
                     r.line())
        per = _task_args(r, name, r.get("args", list, []), t.count)
        t.args = per[0]
        if any(a != per[0] for a in per):
            t.per_instance = tuple(per)
        if t.kind not in ("user", "kthread"):
            raise r.error("kind", f"must be user or kthread, not {t.kind!r}")
        for inst in t.instances():
            if inst in names:
                raise r.error("name", f"a second task named '{inst}'")
            names.add(inst)
        r.finish()
        scn.tasks.append(t)
    if not scn.tasks:
        raise ScenarioError(f"{path}: no [[task]]: the machine needs at least one task")
    if sum(t.count for t in scn.tasks) > MAX_TASKS:
        raise ScenarioError(f"{path}: {sum(t.count for t in scn.tasks)} tasks (at most {MAX_TASKS})")

    # One namespace for the program (VMLINUX), its modules and patches: an
    # image is found by name ("module:function"), and a patch named like the
    # image it patches would resolve its old functions to its new ones.
    images = {VMLINUX: "the program's image"}

    def image_name(r: _Reader, what: str) -> str:
        name = r.get("name", str, required=True)
        # the kernel's module name: a directory of /sys/kernel/livepatch and
        # /sys/module (model.sysfs() paths), so no '/' and no NUL; ':' parts module:f
        if not name or any(c in name for c in ":/\0"):
            raise r.error("name", f"{_short(name)} is not a {what} name (non-empty, no ':', '/' or NUL)")
        _plain_name(r, what, name)
        if name in images:
            raise r.error("name", f"'{name}' is already the name of {images[name]}: the program, its "
                                  f"modules and its patches each need a name of their own")
        images[name] = f"{what} '{name}'"
        return name

    for r in array("module"):
        mod = ModuleSpec(image_name(r, "module"), files(r, "sources"), r.get("loaded", bool, False), r.line(),
                         r.get("init", str), r.get("exit", str))
        for key, what in (("init", "insmod"), ("exit", "rmmod")):
            if getattr(mod, key) is not None and mod.loader(what) in names:
                raise r.error(key, f"its loader task '{mod.loader(what)}' is the name of a [[task]]: rename it")
        r.finish()
        scn.modules.append(mod)

    for r in array("patch"):
        functions = r.str_list("functions")
        p = PatchSpec(image_name(r, "patch"), files(r, "sources"),
                      None if functions is None else [_function_name(r, "functions", f) for f in functions],
                      r.get("replace", bool, False), line=r.line())
        if p.functions is not None and not p.functions:
            raise r.error("functions", "is empty (leave it out to patch every function that differs)")
        twice = next((f for i, f in enumerate(p.functions or ()) if f in p.functions[:i]), None)
        if twice is not None:
            raise r.error("functions", f"'{twice}' is named twice (a function is patched once)")
        for j, st in enumerate(r.get("states", list, [])):
            if not isinstance(st, dict):
                raise r.error("states", f"each state is {{ id = N, version = V }}, not {_toml_type(st)} {_short(st)}")
            sr = _Reader(path, {((), None): r.line("states")}, (), st, f"{r.label}.states[{j}]")
            p.states.append((sr.integer("id", 0, SEED_MAX, required=True),
                             sr.integer("version", 0, SEED_MAX, 0)))
            sr.finish()
        p.force = [_function_name(r, "force", f) for f in r.str_list("force", [])]
        r.finish()
        scn.patches.append(p)
    if len(scn.patches) + len(scn.modules) > MAX_IMAGES:
        raise ScenarioError(f"{path}: {len(scn.patches)} patches and {len(scn.modules)} modules: at most "
                            f"{MAX_IMAGES} together (the C core maps at most 64 code regions)")

    targets = {p.name: "patch" for p in scn.patches} | {mo.name: "module" for mo in scn.modules}
    for r in array("action"):
        at = r.integer("at", 0, MAX_TIME, required=True, what=" instructions")
        do = r.get("do", str, required=True)
        if do not in ACTIONS:
            raise r.error("do", f"must be one of {', '.join(ACTIONS)}, not {do!r}")
        want = "module" if do in ("load", "unload") else "patch"
        other = "patch" if want == "module" else "module"
        if other in r.data:
            raise r.error(other, f"'{do}' takes a {want}, not a {other}")
        target = r.get(want, str, required=do != "force")
        if target is not None and targets.get(target) != want:
            raise r.error(want, f"no {want} named '{target}' (known: "
                                f"{', '.join(sorted(n for n, k in targets.items() if k == want)) or 'none'})")
        r.finish()
        scn.actions.append(ActionSpec(at, do, target or "", r.line()))
    scn.actions.sort(key=lambda a: a.at)
    for a, b in zip(scn.actions, scn.actions[1:]):
        if a.at == b.at and a.do in ("enable", "disable") and b.do in ("enable", "disable"):
            raise ScenarioError(f"{path}:{b.line}: action.at: '{a.do} {a.target}' and '{b.do} {b.target}' "
                                f"at the same time {a.at}: one transition at a time (two patches cannot "
                                f"share a transition; use one patch, or replace = true)")

    chk = table("check")
    scn.unit = _function_name(chk, "unit", chk.get("unit", str, "syscall"))
    scn.unit_line = chk.line("unit")
    for text in chk.str_list("assert", []):
        scn.assertions.append(_assertion(chk, "assert", text, None))
    observe = chk.get("observe", dict, {})
    for key, text in observe.items():
        if not re.fullmatch(r"-?\d{1,20}", key) or not INT64[0] <= int(key) <= INT64[1]:
            raise chk.error("observe", f"entries are KEY = \"expression\" with a 64-bit integer key, "
                                       f"not {_short(key)}")
        if not isinstance(text, str):
            raise chk.error("observe", f"{key} = must be a string expression, not {_toml_type(text)} {_short(text)}")
        scn.assertions.append(_assertion(chk, "observe", text, int(key)))
    chk.finish()

    fz = table("fuzz")
    f = FuzzSpec()
    f.models = fz.str_list("models", f.models)
    if not f.models:
        raise fz.error("models", f"names no model (one or more of {', '.join(MODELS)})")
    for name in f.models:
        if name not in MODELS:
            raise fz.error("models", f"unknown model '{_short(name)[1:-1]}' (one of {', '.join(MODELS)})")
    if len(set(f.models)) != len(f.models):
        raise fz.error("models", "names a model twice")
    f.runs = fz.integer("runs", 1, MAX_RUNS // len(f.models), f.runs, what=" per model")
    f.strategy = fz.get("strategy", str, f.strategy)
    if f.strategy not in STRATEGIES:
        raise fz.error("strategy", f"must be one of {', '.join(STRATEGIES)}, not {f.strategy!r}")
    f.seed = fz.integer("seed", 0, SEED_MAX - MAX_RUNS, f.seed)
    second = HZ * m.get("tick", DEFAULT_TICK)
    last = scn.actions[-1].at if scn.actions else 0
    f.horizon = fz.number("horizon", 0, MAX_TIME / second, f.horizon, what=" seconds")
    if last + f.horizon * second > MAX_TIME:
        where = fz if "horizon" in fz.data else (top if not scn.actions else None)
        text = (f"the last action at {last:_} plus a horizon of {f.horizon:g} s ({int(f.horizon * second):_} "
                f"instructions) ends past the {MAX_TIME:_} instructions a run may reach: start the actions "
                f"earlier or shorten [fuzz] horizon")
        raise fz.error("horizon", text) if where is fz else ScenarioError(f"{path}:{scn.actions[-1].line}: "
                                                                          f"action.at: {text}")
    f.until = fz.get("until", str, f.until)
    if f.until not in UNTIL:
        raise fz.error("until", f"must be one of {', '.join(UNTIL)}, not {_short(f.until)}")
    f.window = fz.integer("window", 1, MAX_TIME, None, what=" instructions")
    f.depth = fz.integer("depth", 1, 1000, f.depth)
    f.probe = fz.number("probe", 0, MAX_TIME / second, f.probe, what=" seconds")
    f.quiet = fz.integer("quiet", 1, MAX_QUIET, f.quiet, what=" cycles")
    fz.finish()
    scn.fuzz = f
    scn.expect, scn.expect_kernel = _expectations(table("expect"))
    top.finish()
    return scn


#: characters that change how the text around them shows, beside the C0/C1
#: controls: the bidirectional embeddings, overrides and isolates (the
#: "Trojan Source" ones) and the line and paragraph separators
BIDI_AND_SEPARATORS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                "\u2066\u2067\u2068\u2069\u2028\u2029")


_SURROGATE = re.compile("[\ud800-\udfff]")


def readable(name: str) -> str:
    """A name from the file system as text: each byte of it that is not
    UTF-8 (os.fsdecode's surrogate escape, U+DC80..U+DCFF) written as the
    visible escape \\udcNN, as lpemu's messages write it. A trace, a
    timeline or a report holding the escape itself was no valid UTF-8 (a
    JSON reader took it for U+FFFD, matplotlib raised)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(name) else name


def invisible(text: str) -> str | None:
    """The first character of text that a terminal or a report would not
    show as itself (a control character, a bidirectional control, a line
    separator), or None."""
    return next((c for c in text if unicodedata.category(c) == "Cc" or c in BIDI_AND_SEPARATORS), None)


def _plain_name(r: _Reader, what: str, name: str) -> None:
    """ScenarioError when a task's, patch's or module's name holds a
    character that does not show as itself: the name goes into tables,
    reproduce commands, traces and JUnit XML (which cannot hold most
    control characters), and an escape sequence or a bidi override there
    would print as something else."""
    c = invisible(name)
    if c is not None:
        raise r.error("name", f"{_short(name)}: a {what} name cannot hold the control character {_short(c)}")


def _function_name(r: _Reader, key: str, name: str) -> str:
    """name, a function of the program ("f") or of a module ("module:f");
    ScenarioError when either part is empty (":f", "m:")."""
    if invisible(name) is not None:          # no symbol holds one; a message quoting it would print it
        raise r.error(key, f"{name!r} is not a function name: it holds the control character "
                           f"{_short(invisible(name))}")
    obj, colon, fname = name.rpartition(":")
    if colon and not (obj and fname):
        raise r.error(key, f"{name!r} is not a function name (write f for the program's, module:f for a "
                           f"module's)")
    return name


def _task_args(r: _Reader, name: str, raw: list, count: int) -> list[tuple[int, ...]]:
    """The arguments of each of count instances of task `name` from its
    `args`: a list of integers and templates (strings in which {i} is the
    instance index: "{i}", "{i} * 100 + 1", with + - * // % and
    parentheses), the same list for every instance; or a list of count
    argument lists, one per instance. ScenarioError naming the task."""
    if raw and all(isinstance(a, list) for a in raw):
        if len(raw) != count:
            raise r.error("args", f"task '{name}': {len(raw)} argument lists for count = {count} (one list "
                                  f"per instance, or one list of integers and \"{{i}}\" templates for all)")
        return [_one_args(r, name, a, None) for a in raw]
    if any(isinstance(a, list) for a in raw):
        raise r.error("args", f"task '{name}': mixes lists and single arguments (either one list of "
                              f"arguments, or one list of arguments per instance)")
    return [_one_args(r, name, raw, i) for i in range(count)]


def _one_args(r: _Reader, name: str, raw: list, index: int | None) -> tuple[int, ...]:
    """One instance's arguments; templates are evaluated for instance index
    (None: templates are not allowed, the list is one instance's own)."""
    if len(raw) > 6:
        raise r.error("args", f"task '{name}': at most 6 arguments, not {len(raw)}")
    out = []
    for a in raw:
        if isinstance(a, str) and index is not None:
            a = _template(r, name, a, index)
        if not (isinstance(a, int) and not isinstance(a, bool) and INT64[0] <= a <= INT64[1]):
            what = "64-bit integers" + (" or \"{i}\" templates" if index is not None else "")
            raise r.error("args", f"task '{name}': must be a list of {what}, not one holding "
                                  f"{_toml_type(a)} {_short(a)}")
        out.append(a)
    return tuple(out)


def _template(r: _Reader, name: str, text: str, index: int) -> int:
    """The value of argument template text for instance index: an integer
    expression over {i} (see _task_args)."""
    import ast
    import operator
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}

    def bad(why: str) -> ScenarioError:
        return r.error("args", f"task '{name}': {_short(text)} is not an argument template ({why}; "
                               f"write an integer expression over {{i}}, the instance index: \"{{i}}\", "
                               f"\"{{i}} * 100 + 1\")")
    if len(text) > 200:
        raise bad("longer than 200 characters")
    other = re.search(r"\{[^}]*\}", text.replace("{i}", ""))
    if other:
        raise bad(f"unknown placeholder {other.group()}: the only one is {{i}}")
    stray = re.search(r"[^0-9\s+\-*/%()]", text.replace("{i}", ""))
    if stray:
        raise bad(f"unexpected {stray.group()!r}")
    if "{i}" not in text:
        raise bad("no {i} in it: write a plain integer instead")
    try:
        tree = ast.parse(text.replace("{i}", "i"), mode="eval")
    except SyntaxError:
        raise bad("not an expression") from None

    def value(node) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and node.id == "i":
            return index
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            a, b = value(node.left), value(node.right)
            if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and b == 0:
                raise bad(f"division by zero for i = {index}")
            v = ops[type(node.op)](a, b)
            if not INT64[0] <= v <= INT64[1]:
                raise bad(f"{v} for i = {index} does not fit in 64 bits")
            return v
        raise bad("only integers, {i}, + - * // % and parentheses")
    return value(tree.body)


def _expectations(r: _Reader) -> tuple[dict[str, tuple[str, ...]], dict[str, dict[str, tuple[str, ...]]]]:
    """[expect]: model = "word" or ["word", ...] (words of emu/runs/expect.py)
    on every kernel; [expect.kernel."V"] the same on kernel V, where its
    entry for a model replaces [expect]'s. Returns (model -> words, kernel
    name -> model -> words)."""
    per_kernel: dict[str, dict[str, tuple[str, ...]]] = {}
    for version, table in r.get("kernel", dict, {}).items():
        sub = _Reader(r.path, r.lines, r.table + ("kernel", version), table, f'{r.label}.kernel."{version}"')
        if not isinstance(table, dict):
            raise r.error("kernel", f'"{version}" must be a table of models, not {_toml_type(table)} '
                                    f'{_short(table)}')
        try:
            name = versions.kernel(version).name
        except ValueError as exc:
            raise sub.error(None, str(exc)) from None
        if name in per_kernel:
            raise sub.error(None, f"kernel {name} has expectations already")
        per_kernel[name] = _model_words(sub)
    return _model_words(r, skip="kernel"), per_kernel


def _model_words(r: _Reader, skip: str | None = None) -> dict[str, tuple[str, ...]]:
    """model = "word" or ["word", ...] for each key of r but skip."""
    out = {}
    for model in [k for k in r.data if k != skip]:
        if model not in MODELS:
            raise r.error(model, f"unknown model '{model}' (one of {', '.join(MODELS)})")
        words = r.str_list(model)
        if not words:
            raise r.error(model, "names no expectation")
        for w in words:
            if w not in EXPECTATIONS:
                raise r.error(model, f"unknown expectation {w!r} (one of {', '.join(EXPECTATIONS)})")
        if {"safe", "unsafe"} <= set(words):
            raise r.error(model, "cannot be both safe and unsafe")
        out[model] = tuple(dict.fromkeys(words))
    r.finish()
    return out


def _assertion(r: _Reader, key: str, text: str, obs_key: int | None) -> Assertion:
    try:
        return Assertion(text, obs_key, r.line(key))
    except AssertionSyntax as exc:
        raise r.error(key, f"{_short(text)}: {exc}") from None


def _read(path: Path) -> str:
    """The text of a scenario file, at most MAX_FILE bytes of UTF-8."""
    try:
        if path.is_dir():
            raise ScenarioError(f"{path}: is a directory, not a scenario file")
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except (OSError, RuntimeError) as exc:
        raise ScenarioError(f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    if len(raw) > MAX_FILE:
        raise ScenarioError(f"{path}: larger than {MAX_FILE} bytes: not a scenario file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {exc.start})") from None


@dataclass
class Program:
    """A scenario compiled: the base image, module images, and per patch its
    image and the functions it replaces (old names, "module:f" for a module's)."""
    scenario: Scenario
    base: object
    modules: dict = field(default_factory=dict)          # name -> Image
    patches: dict = field(default_factory=dict)          # name -> (Image, [function names])
    reasons: dict = field(default_factory=dict)          # patch name -> {function: why it is carried}


def build(scn: Scenario) -> Program:
    """Compile the program, its modules and patches; check every name the
    scenario uses against the code. Raises ScenarioError, BuildError, PatchError;
    TypeError when scn is not a Scenario (load gives one)."""
    if not isinstance(scn, Scenario):
        raise TypeError(f"build: scn must be a Scenario (emu.load_scenario gives one), not {type(scn).__name__}")
    from emu.images.build import build_c
    from emu.machine.layout import BASE_IMAGE, MODULE_ALIGN, MODULE_BASE, STACK_BASE, align_up

    def fits(img, limit: int, what: str) -> None:
        """The image ends below limit (the next region of the machine's layout)."""
        size = img.hi - img.lo
        if img.hi > limit or size > MAX_IMAGE_BYTES:
            room = min(limit - img.lo, MAX_IMAGE_BYTES)
            raise ScenarioError(f"{scn.path}: {what}: its image maps {size:_} bytes (text, data and bss), "
                                f"more than the {room:_} it has room for")

    base = build_c(scn.sources, base=BASE_IMAGE, name=VMLINUX, cflags=scn.cflags,
                   cpu_features=scn.cpu_features)
    fits(base, MODULE_BASE, "program.sources")
    if base.stubs:   # kernel symbols nobody implements: said, never silent
        print(f"lpemu: note: {scn.path}: {len(base.stubs)} kernel symbols bound to stubs "
              f"(functions return 0, data is zeroed): {', '.join(base.stubs)}", file=sys.stderr)
    prog = Program(scn, base)
    at = MODULE_BASE
    for mod in scn.modules:
        img = build_c(mod.sources, base=at, name=mod.name, cflags=scn.cflags, link_against=base)
        fits(img, STACK_BASE, f"module[{mod.name}]")
        prog.modules[mod.name] = img
        at = align_up(img.hi, MODULE_ALIGN)
    known = set(base.functions)
    for mod_name, img in prog.modules.items():
        known |= {f"{mod_name}:{f}" for f in img.functions}
    for mod in scn.modules:
        for key in ("init", "exit"):
            name = getattr(mod, key)
            if name is not None and name not in prog.modules[mod.name].functions:
                raise ScenarioError(f"{scn.path}:{mod.line}: module[{mod.name}].{key}: no function '{name}' "
                                    f"in the module")
    loaded = {mod.name: mod.loaded for mod in scn.modules}
    for t in scn.tasks:
        obj, _, fname = t.entry.rpartition(":")
        if obj and not loaded.get(obj):
            why = "no module" if obj not in loaded else "the task starts before the module loads: no module"
            raise ScenarioError(f"{scn.path}:{t.line}: task[{t.name}].entry: {why} '{obj}' with loaded = true "
                                f"(a task may start in a module loaded from the start)")
        if fname not in (prog.modules[obj] if obj else base).functions:
            raise ScenarioError(f"{scn.path}:{t.line}: task[{t.name}].entry: no function '{fname}' "
                                f"in {'module ' + obj if obj else 'the program'}")
    if scn.unit != "syscall" and scn.unit not in known:
        raise ScenarioError(f"{scn.path}:{scn.unit_line}: check.unit: no function '{scn.unit}' in the program "
                            f"(use \"syscall\" or a function name)")
    if scn.unit != "syscall":
        obj, _, fname = scn.unit.rpartition(":")
        if (prog.modules[obj] if obj else base).functions[fname].site is None:
            raise ScenarioError(f"{scn.path}:{scn.unit_line}: check.unit: '{scn.unit}' has no fentry site, so its "
                                f"units cannot be traced (was it built with -mfentry, or is it notrace?)")
    patched: set[str] = set()
    for p in scn.patches:
        # the diff refuses data changes (PatchError) even when functions are listed
        functions, reasons = _differing(scn, p, prog, listed=p.functions is not None)
        if p.functions is not None:
            functions = p.functions
        for name in functions:
            obj, _, fname = name.rpartition(":")
            owner = prog.modules.get(obj) if obj else base
            if obj and owner is None:
                raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}].functions: no module '{obj}'")
            fn = owner.functions.get(fname)
            if fn is None:
                hint = "".join(f" (module {m} defines it: '{m}:{fname}')" for m, img in prog.modules.items()
                               if not obj and fname in img.functions)
                raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}].functions: no function "
                                    f"'{fname}' in {'module ' + obj if obj else 'the program'}{hint}")
            if fn.site is None:
                raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}].functions: '{fname}' has no "
                                    f"fentry site, so it cannot be patched (was it built with -mfentry?)")
        # one name, one function: the patch image knows its functions by name
        # (make_patch takes the new version by it), so two of one name from two
        # objects cannot be told apart in one patch
        owners_of: dict[str, list[str]] = {}
        for name in functions:
            obj, _, fname = name.rpartition(":")
            owners_of.setdefault(fname, []).append(obj or "the program")
        for fname, objs in owners_of.items():
            if len(objs) > 1:
                raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}].functions: two functions named "
                                    f"'{fname}' ({' and '.join(objs)}): one patch carries one function of a "
                                    f"name; put them in two patches")
        for f in p.force:
            if f not in functions:
                raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}].force: '{f}' is not one of "
                                    f"its functions")
        keep = {name.rpartition(":")[2] for name in functions} | set(reasons.get("_new", ()))
        patched |= set(functions)
        if len(patched) >= MAX_SITES:
            raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}]: {len(patched)} patched functions: at most "
                                f"{MAX_SITES - 1} (the C core holds {MAX_SITES} fentry sites, one kept for "
                                f"[check] unit)")
        try:
            # bound to the modules whose functions it carries too, as klp
            # relocations bind a patch to each such module when it loads (a
            # module's address is fixed by the build); code of the program
            # cannot use a module's symbols (vmlinux would not link)
            mods = sorted({name.rpartition(":")[0] for name in functions} - {""})
            img = build_c(p.sources, base=at, name=p.name, cflags=scn.cflags,
                          link_against=(base, *(prog.modules[m] for m in mods)), keep=keep,
                          cpu_features=scn.cpu_features)
        except PatchError as exc:
            raise PatchError(f"{scn.path}:{p.line}: patch[{p.name}]: {exc}") from None
        except BuildError as exc:
            raise _link_error(scn, p, exc) from None
        fits(img, STACK_BASE, f"patch[{p.name}]")
        missing = sorted(name for name in functions if name.rpartition(":")[2] not in img.functions)
        if missing:
            raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}]: its sources have no new version "
                                f"of {', '.join(missing)}")
        reasons.pop("_new", None)
        prog.patches[p.name] = (img, list(functions))
        prog.reasons[p.name] = reasons
        at = align_up(img.hi, MODULE_ALIGN)
    return prog


def _link_error(scn: Scenario, p: PatchSpec, exc: BuildError) -> BuildError:
    """A patch that does not link, said with the scenario's file, line and patch."""
    return BuildError(f"{scn.path}:{p.line}: patch[{p.name}]: {exc}", undefined=exc.undefined)


def _differing(scn: Scenario, p: PatchSpec, prog: "Program", *, listed: bool) -> tuple[list[str], dict]:
    """The functions a patch without a `functions` list carries: those its
    sources define differently from the program (emu/images/diff.py), each
    source compared with the object it stands for, as the kernel's patch
    builders compare object by object: a source named as a module's source
    with that module (its functions "module:f"), the others with the
    program. Raises PatchError when the patch changes existing data."""
    from emu.images.diff import diff_objects, patch_plan
    from emu.images.elf import is_elf_file

    objects, program_objects = [f for f in p.sources if is_elf_file(f)], [f for f in scn.sources if is_elf_file(f)]
    sources = [f for f in p.sources if not is_elf_file(f)]
    why = None
    if objects and sources:
        why = "the patch mixes ELF objects and sources"
    elif objects and not program_objects:
        why = f"{objects[0].name} is an ELF object but the program is built from sources"
    elif sources and program_objects:
        why = f"{sources[0].name} is a source but the program is built from ELF objects ({program_objects[0].name})"
    if why:
        raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}].sources: {why}: a patch of objects is "
                            f"compared with the program's objects, a patch of sources with its sources")
    # which object each source of the patch stands for: a module's when its
    # file is named as one of that module's sources (and as none of the program's)
    program_names = {f.name for f in scn.sources}
    parts: dict[str | None, list[Path]] = {}
    for src in sources:
        owners = [mod.name for mod in scn.modules if any(f.name == src.name for f in mod.sources)]
        if src.name in program_names:
            owners.insert(0, None)
        if len(owners) > 1 and not listed:
            named = " and of ".join("the program" if o is None else f"module {o}" for o in owners)
            raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}].sources: {src.name} is named as a source "
                                f"of {named}: which one it changes cannot be told; list the "
                                f"patch's functions (\"module:f\" for a module's)")
        parts.setdefault(owners[0] if owners else None, []).append(src)
    base = prog.base
    try:
        if objects:                                   # kernel objects: compared with the program's
            plans = {None: diff_objects(program_objects, objects)}
        else:
            mods = {mod.name: mod for mod in scn.modules}
            plans = {owner: patch_plan(scn.sources if owner is None else mods[owner].sources, srcs,
                                       cflags=scn.cflags)
                     for owner, srcs in parts.items()}
    except PatchError as exc:
        raise PatchError(f"{scn.path}:{p.line}: patch[{p.name}]: {exc}") from None
    functions, reasons, new = [], {}, set()
    for owner, plan in plans.items():
        image = base if owner is None else prog.modules[owner]
        for f in plan.changed:
            if f in image.functions:
                name = f if owner is None else f"{owner}:{f}"
                functions.append(name)
                reasons[name] = plan.reasons.get(f, "differs")
        new |= plan.carry
        for warning in plan.warnings:
            print(f"lpemu: warning: {scn.path}: patch[{p.name}]: {warning}", file=sys.stderr)
    if not listed and None in plans:
        # a function of a module in a source compared with the program is a
        # new function of the patch that nothing calls: say so
        for f in sorted(plans[None].carry):
            for mod in scn.modules:
                if f in prog.modules[mod.name].functions:
                    print(f"lpemu: warning: {scn.path}: patch[{p.name}]: {f} is a function of module "
                          f"{mod.name}, but its source is compared with the program (it is named as none "
                          f"of {mod.name}'s sources): it is carried as a new function that nothing calls, "
                          f"and {mod.name}:{f} is not patched; put it in a file named as {mod.name}'s "
                          f"source, or list '{mod.name}:{f}' in functions", file=sys.stderr)
    if not functions and not listed:
        raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}]: its sources change no function "
                            f"of the program{' or its modules' if scn.modules else ''}")
    reasons["_new"] = sorted(new)
    return functions, reasons
