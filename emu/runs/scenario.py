"""Scenario files (TOML): what to run, what to patch, when, and what to check.

    [program]   sources, stubs, cpu_features, cflags
    [machine]   cpus, quantum, preempt, tick, unwinder, policy
    [[task]]    name, entry, args, count, kind, cpu
    [[module]]  name, sources, loaded              (images loaded/unloaded at run time)
    [[patch]]   name, sources, functions, replace, states, force
    [[action]]  at, do (enable|disable|force|load|unload), patch | module
    [check]     unit, assert, observe
    [fuzz]      models, runs, strategy, seed, horizon, window, depth, probe
    [expect]    MODEL = "safe" | ["safe", "completes"] ...  (emu/runs/expect.py)

Paths are relative to the scenario file. Every mistake is a ScenarioError
naming the file, the line and the key; unknown keys are mistakes too.
load() only reads and checks; build() compiles (emu/image.py) and decides
which functions each patch carries (emu/diff.py when `functions` is absent).
"""
from __future__ import annotations

import math
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from emu.errors import PatchError, ScenarioError
from emu.kernel.patch import VMLINUX
from emu.runs.expect import EXPECTATIONS

MODELS = ("immediate", "stop_machine", "ksplice", "kgraft", "livepatch")
STRATEGIES = ("directed", "exhaustive", "random", "pct")
ACTIONS = ("enable", "disable", "force", "load", "unload")
SAFE_BUILTINS = {"abs": abs, "min": min, "max": max, "len": len, "all": all, "any": any,
                 "sum": sum, "int": int, "bool": bool, "True": True, "False": False, "None": None}


@dataclass
class TaskSpec:
    name: str
    entry: str
    args: tuple[int, ...] = ()
    count: int = 1
    kind: str = "user"
    cpu: int | None = None
    line: int = 0

    def instances(self) -> list[str]:
        return [self.name] if self.count == 1 else [f"{self.name}{i}" for i in range(self.count)]


@dataclass
class ModuleSpec:
    name: str
    sources: list[Path]
    loaded: bool = False
    line: int = 0


@dataclass
class PatchSpec:
    name: str
    sources: list[Path]
    functions: list[str] | None = None      # None: every function that differs (emu/diff.py)
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
class Assertion:
    text: str
    key: int | None             # None: every observation
    code: object = None
    line: int = 0

    def __reduce__(self):          # code objects do not pickle: recompile in the worker
        return (_recompiled, (self.text, self.key, self.line))

    def holds(self, env: dict) -> bool:
        return bool(eval(self.code, {"__builtins__": SAFE_BUILTINS}, env))   # noqa: S307 - compiled, no builtins


def _recompiled(text: str, key, line: int) -> Assertion:
    return Assertion(text, key, compile(text, f"<check line {line}>", "eval"), line)


@dataclass
class FuzzSpec:
    models: list[str] = field(default_factory=lambda: ["immediate", "stop_machine", "kgraft", "livepatch"])
    runs: int = 100
    strategy: str = "directed"
    seed: int = 0
    horizon: float = 20.0       # seconds of virtual time after the last action
    window: int | None = None   # instructions over which start points vary (None: one cycle of the tasks)
    depth: int = 3              # PCT: d-1 priority change points
    probe: float = 10.0         # seconds of virtual time the probe may run (emu/runs/probe.py)


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
    assertions: list[Assertion] = field(default_factory=list)
    fuzz: FuzzSpec = field(default_factory=FuzzSpec)
    expect: dict[str, tuple[str, ...]] = field(default_factory=dict)    # model -> expectations

    @property
    def name(self) -> str:
        stem = self.path.name.removesuffix(".toml").removesuffix(".lpemu")
        return stem if stem != "scenario" else self.path.parent.name


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
    keyline = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')\s*=")
    depth = 0
    for no, raw in enumerate(text.splitlines(), 1):
        if depth == 0:
            m = header.match(raw)
            if m:
                name = m.group(2).replace('"', "").replace("'", "")
                if m.group(1) == "[[":
                    counts[name] = counts.get(name, -1) + 1
                    table = (name, counts[name])
                else:
                    parts = name.split(".")
                    table = (parts[0], counts[parts[0]], *parts[1:]) if parts[0] in counts else tuple(parts)
                lines.setdefault((table, None), no)
                continue
            m = keyline.match(raw)
            if m:
                lines.setdefault((table, m.group(1).strip("\"'")), no)
        depth += raw.count("[") - raw.count("]") if "=" in raw or depth else 0
        depth = max(depth, 0)
    return lines


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
            raise self.error(key, f"must be {_kind_name(kind)}, not {_toml_type(value)} {value!r}")
        return value

    def str_list(self, key: str, default=None, *, required: bool = False) -> list[str] | None:
        value = self.get(key, (list, str), default, required=required)
        if isinstance(value, str):
            value = [value]
        if value is not None and not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return value

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


def _toml_type(value) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def load(path) -> Scenario:
    """Read and check a scenario file. Raises ScenarioError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read it: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    lines = _key_lines(text)
    top = _Reader(path, lines, (), data, "scenario")
    here = path.parent

    def files(r: _Reader, key: str, *, required: bool = True) -> list[Path]:
        names = r.str_list(key, required=required) or []
        if required and not names:
            raise r.error(key, "names no file")
        out = []
        for name in names:
            p = (here / name).resolve()
            if not p.is_file():
                raise r.error(key, f"no such file: {name}")
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
    scn = Scenario(path, files(prog, "sources") + files(prog, "stubs", required=False),
                   prog.str_list("cflags", []))
    # cpu_features: X86_FEATURE_* numbers the CPU has; kernel objects' alternatives
    # are applied for them (absent: left original)
    features = prog.get("cpu_features", list)
    if features is not None and not all(isinstance(v, int) and not isinstance(v, bool) for v in features):
        raise prog.error("cpu_features", "must be a list of integers (X86_FEATURE_* numbers)")
    scn.cpu_features = features
    prog.finish()

    mach = table("machine")
    m = {}
    for key, kind in (("cpus", int), ("quantum", int), ("tick", int), ("preempt", str), ("unwinder", str),
                      ("policy", str)):
        value = mach.get(key, kind)
        if value is not None:
            m[key] = value
    for key, lo in (("cpus", 1), ("quantum", 1), ("tick", 1)):
        if key in m and m[key] < lo:
            raise mach.error(key, f"must be at least {lo}, not {m[key]}")
    if m.get("cpus", 1) > 64:
        raise mach.error("cpus", f"at most 64 CPUs, not {m['cpus']}")
    for key, allowed in (("preempt", ("none", "voluntary", "full")), ("unwinder", ("orc", "fp")),
                         ("policy", ("rr", "random", "pct"))):
        if key in m and m[key] not in allowed:
            raise mach.error(key, f"must be one of {', '.join(allowed)}, not {m[key]!r}")
    mach.finish()
    scn.machine = m

    names: set[str] = set()
    for r in array("task"):
        name = r.get("name", str, required=True)
        t = TaskSpec(name, r.get("entry", str, required=True), tuple(r.get("args", list, [])),
                     r.get("count", int, 1), r.get("kind", str, "user"), r.get("cpu", int), r.line())
        if not all(isinstance(a, int) and not isinstance(a, bool) for a in t.args):
            raise r.error("args", "must be a list of integers")
        if len(t.args) > 6:
            raise r.error("args", "at most 6 arguments")
        if t.kind not in ("user", "kthread"):
            raise r.error("kind", f"must be user or kthread, not {t.kind!r}")
        if t.count < 1:
            raise r.error("count", f"must be at least 1, not {t.count}")
        if t.cpu is not None and not 0 <= t.cpu < m.get("cpus", 1):
            raise r.error("cpu", f"no CPU {t.cpu} (the machine has {m.get('cpus', 1)})")
        for inst in t.instances():
            if inst in names:
                raise r.error("name", f"a second task named '{inst}'")
            names.add(inst)
        r.finish()
        scn.tasks.append(t)
    if not scn.tasks:
        raise ScenarioError(f"{path}: no [[task]]: the machine needs at least one task")
    if sum(t.count for t in scn.tasks) > 1000:
        raise ScenarioError(f"{path}: at most 1000 tasks")

    # One namespace for the program (VMLINUX), its modules and patches: an
    # image is found by name ("module:function"), and a patch named like the
    # image it patches would resolve its old functions to its new ones.
    images = {VMLINUX: "the program's image"}

    def image_name(r: _Reader, what: str) -> str:
        name = r.get("name", str, required=True)
        if not name or ":" in name:
            raise r.error("name", f"{name!r} is not a {what} name (non-empty, no ':')")
        if name in images:
            raise r.error("name", f"'{name}' is already the name of {images[name]}: the program, its "
                                  f"modules and its patches each need a name of their own")
        images[name] = f"{what} '{name}'"
        return name

    for r in array("module"):
        mod = ModuleSpec(image_name(r, "module"), files(r, "sources"), r.get("loaded", bool, False), r.line())
        r.finish()
        scn.modules.append(mod)

    for r in array("patch"):
        p = PatchSpec(image_name(r, "patch"), files(r, "sources"), r.str_list("functions"),
                      r.get("replace", bool, False), line=r.line())
        if p.functions is not None and not p.functions:
            raise r.error("functions", "is empty (leave it out to patch every function that differs)")
        for st in r.get("states", list, []):
            if not (isinstance(st, dict) and set(st) <= {"id", "version"} and isinstance(st.get("id"), int)):
                raise r.error("states", "each state is { id = N, version = V }")
            p.states.append((st["id"], int(st.get("version", 0))))
        p.force = r.str_list("force", [])
        r.finish()
        scn.patches.append(p)

    targets = {p.name: "patch" for p in scn.patches} | {mo.name: "module" for mo in scn.modules}
    for r in array("action"):
        at = r.get("at", int, required=True)
        if at < 0:
            raise r.error("at", f"must not be negative, not {at}")
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
    scn.unit = chk.get("unit", str, "syscall")
    for text in chk.str_list("assert", []):
        scn.assertions.append(_assertion(chk, "assert", text, None))
    observe = chk.get("observe", dict, {})
    for key, text in observe.items():
        if not re.fullmatch(r"-?\d+", key) or not isinstance(text, str):
            raise chk.error("observe", f"entries are KEY = \"expression\" with an integer key, not {key!r}")
        scn.assertions.append(_assertion(chk, "observe", text, int(key)))
    chk.finish()

    fz = table("fuzz")
    f = FuzzSpec()
    f.models = fz.str_list("models", f.models)
    for name in f.models:
        if name not in MODELS:
            raise fz.error("models", f"unknown model '{name}' (one of {', '.join(MODELS)})")
    f.runs = fz.get("runs", int, f.runs)
    f.strategy = fz.get("strategy", str, f.strategy)
    if f.strategy not in STRATEGIES:
        raise fz.error("strategy", f"must be one of {', '.join(STRATEGIES)}, not {f.strategy!r}")
    f.seed = fz.get("seed", int, f.seed)
    f.horizon = float(fz.get("horizon", (int, float), f.horizon))
    f.window = fz.get("window", int, None)
    f.depth = fz.get("depth", int, f.depth)
    f.probe = float(fz.get("probe", (int, float), f.probe))
    if not math.isfinite(f.probe) or f.probe <= 0:
        raise fz.error("probe", "must be a positive number of seconds")
    if f.runs < 1:
        raise fz.error("runs", f"must be at least 1, not {f.runs}")
    if not math.isfinite(f.horizon) or f.horizon <= 0:
        raise fz.error("horizon", "must be a positive number of seconds")
    if f.window is not None and f.window < 1:
        raise fz.error("window", "must be at least 1 instruction")
    if f.depth < 1:
        raise fz.error("depth", "must be at least 1")
    fz.finish()
    scn.fuzz = f
    scn.expect = _expectations(table("expect"))
    top.finish()
    return scn


def _expectations(r: _Reader) -> dict[str, tuple[str, ...]]:
    """[expect]: model = "word" or ["word", ...] (words of emu/runs/expect.py)."""
    out = {}
    for model in list(r.data):
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
        code = compile(text, f"{r.path}:{r.line(key)}", "eval")
    except SyntaxError as exc:
        raise r.error(key, f"not a Python expression: {text!r} ({exc.msg})") from None
    bad = [n for n in code.co_names if n.startswith("__")]
    if bad:
        raise r.error(key, f"{text!r} uses {bad[0]}: expressions see only key, value, task, time, kind")
    return Assertion(text, obs_key, code, r.line(key))


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
    scenario uses against the code. Raises ScenarioError, BuildError, PatchError."""
    from emu.images.build import build_c
    from emu.machine.machine import BASE_IMAGE, MODULE_ALIGN, MODULE_BASE, _align_up

    base = build_c(scn.sources, base=BASE_IMAGE, name=VMLINUX, cflags=scn.cflags,
                   cpu_features=scn.cpu_features)
    if base.stubs:   # kernel symbols nobody implements: said, never silent
        print(f"lpemu: note: {scn.path}: {len(base.stubs)} kernel symbols bound to stubs "
              f"(functions return 0, data is zeroed): {', '.join(base.stubs)}", file=sys.stderr)
    prog = Program(scn, base)
    at = MODULE_BASE
    for mod in scn.modules:
        img = build_c(mod.sources, base=at, name=mod.name, cflags=scn.cflags, link_against=base)
        prog.modules[mod.name] = img
        at = _align_up(img.hi, MODULE_ALIGN)
    known = set(base.functions)
    for mod_name, img in prog.modules.items():
        known |= {f"{mod_name}:{f}" for f in img.functions}
    for t in scn.tasks:
        if t.entry not in base.functions:
            raise ScenarioError(f"{scn.path}:{t.line}: task[{t.name}].entry: no function '{t.entry}' "
                                f"in the program")
    if scn.unit != "syscall" and scn.unit not in known:
        raise ScenarioError(f"{scn.path}: check.unit: no function '{scn.unit}' in the program "
                            f"(use \"syscall\" or a function name)")
    if scn.unit != "syscall":
        obj, _, fname = scn.unit.rpartition(":")
        if (prog.modules[obj] if obj else base).functions[fname].site is None:
            raise ScenarioError(f"{scn.path}: check.unit: '{scn.unit}' has no fentry site, so its units "
                                f"cannot be traced (was it built with -mfentry, or is it notrace?)")
    for p in scn.patches:
        # the diff refuses data changes (PatchError) even when functions are listed
        functions, reasons = _differing(scn, p, base, listed=p.functions is not None)
        if p.functions is not None:
            functions = p.functions
        for name in functions:
            obj, _, fname = name.rpartition(":")
            owner = prog.modules.get(obj) if obj else base
            if obj and owner is None:
                raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}].functions: no module '{obj}'")
            fn = owner.functions.get(fname)
            if fn is None:
                raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}].functions: no function "
                                    f"'{fname}' in {'module ' + obj if obj else 'the program'}")
            if fn.site is None:
                raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}].functions: '{fname}' has no "
                                    f"fentry site, so it cannot be patched (was it built with -mfentry?)")
        for f in p.force:
            if f not in functions:
                raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}].force: '{f}' is not one of "
                                    f"its functions")
        keep = {name.rpartition(":")[2] for name in functions} | set(reasons.get("_new", ()))
        img = build_c(p.sources, base=at, name=p.name, cflags=scn.cflags, link_against=base, keep=keep,
                      cpu_features=scn.cpu_features)
        missing = sorted(name for name in functions if name.rpartition(":")[2] not in img.functions)
        if missing:
            raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}]: its sources have no new version "
                                f"of {', '.join(missing)}")
        reasons.pop("_new", None)
        prog.patches[p.name] = (img, list(functions))
        prog.reasons[p.name] = reasons
        at = _align_up(img.hi, MODULE_ALIGN)
    return prog


def _differing(scn: Scenario, p: PatchSpec, base, *, listed: bool) -> tuple[list[str], dict]:
    """The functions a patch without a `functions` list carries: those its
    sources define differently from the program (emu/diff.py). Raises
    PatchError when the patch changes existing data."""
    from emu.images.diff import diff_objects, patch_plan

    try:
        objects = [f for f in p.sources if f.read_bytes()[:4] == b"\x7fELF"]
        if objects and len(objects) == len(p.sources):   # kernel objects: compared with the program's
            plan = diff_objects([f for f in scn.sources if f.read_bytes()[:4] == b"\x7fELF"], objects)
        else:
            plan = patch_plan(scn.sources, p.sources, cflags=scn.cflags)
    except PatchError as exc:
        raise PatchError(f"{scn.path}:{p.line}: patch[{p.name}]: {exc}") from None
    functions = [f for f in plan.changed if f in base.functions]
    for warning in plan.warnings:
        print(f"lpemu: warning: {scn.path}: patch[{p.name}]: {warning}", file=sys.stderr)
    if not functions and not listed:
        raise ScenarioError(f"{scn.path}:{p.line}: patch[{p.name}]: its sources change no function "
                            f"of the program")
    reasons = {f: plan.reasons.get(f, "differs") for f in functions}
    reasons["_new"] = list(plan.carry)
    return functions, reasons
