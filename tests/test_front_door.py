"""The front door, fuzzed: valid scenarios and option lists, mutated (keys
dropped, renamed, retyped, values at the limits of their types, nested,
grown), go through `lpemu` (emu.app.cli.main, in process). Every mutation
ends with exit status 0, 1 or 2 and never a traceback; none runs past its
time bound (ALARM seconds, far above the slowest run the limits allow).
A longer run: LPEMU_FRONT_DOOR_EXAMPLES=2000 pytest tests/test_front_door.py"""
import contextlib
import json
import math
import os
import re
import shutil
import signal
import tempfile
import tomllib
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from emu.app import cli

SEED_DIR = Path(__file__).resolve().parent.parent / "emu" / "seed"
ALARM = 90              # seconds one mutation may take (a run at the limits takes about 10)
EXAMPLES = int(os.environ.get("LPEMU_FRONT_DOOR_EXAMPLES", "30"))   # more for a soak run

SCENARIO = """\
[program]
sources = ["base.c"]
cflags = ["-O2"]

[machine]
cpus = 2
quantum = 500
preempt = "voluntary"
tick = 1000

[[task]]
name = "user"
entry = "user_entry"
args = [0]
count = 2

[[task]]
name = "kthread"
entry = "kthread_entry"
args = [2]
kind = "kthread"

[[patch]]
name = "p"
sources = ["patch.c"]
functions = ["bar", "baz"]
states = [{ id = 1, version = 2 }]

[[action]]
at = 20000
do = "enable"
patch = "p"

[check]
unit = "syscall"
assert = ["value == value"]
observe = { 2 = "value >= 1000" }

[fuzz]
models = ["kgraft", "livepatch"]
runs = 3
strategy = "random"
seed = 0
horizon = 20.0
depth = 3
"""
BASE = tomllib.loads(SCENARIO)


# ---- a small TOML writer (the mutated documents are data, written back as text) ----------------
class Raw(str):
    """TOML text inserted as it is (deep nesting the writer would recurse on)."""


def toml_value(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def toml_document(doc: dict) -> str:
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"\n[{toml_key(k)}]")
            lines += [f"{toml_key(a)} = {toml_value(b)}" for a, b in v.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines.append(f"\n[[{toml_key(k)}]]")
                lines += [f"{toml_key(a)} = {toml_value(b)}" for a, b in item.items()]
    return "\n".join(lines) + "\n"


# ---- mutations ---------------------------------------------------------------------------------
INTS = [0, -1, 1, 7, 2**31, 2**32 - 1, 2**63 - 1, -(2**63), 2**64, 10**30, 10**8, 10**8 + 1, 4096, 4097]
FLOATS = [0.0, -0.0, 1.9, -1.5, 1e-300, 1e308, math.inf, -math.inf, math.nan]
STRINGS = ["", " ", "x" * 5000, "\u00e9\u4e2d", "\x01", "../../../etc/passwd", "/dev/zero", "base.c",
           "value", "vlaue >= 1", "__import__('os')", "(lambda: 0)()", "-" * 3000 + "1", "1/0", "a:b",
           "livepatch", "syscall", "user_entry"]
VALUES = st.one_of(st.sampled_from(INTS), st.sampled_from(FLOATS), st.sampled_from(STRINGS), st.booleans(),
                   st.just([]), st.just({}), st.just([{}]), st.lists(st.sampled_from(INTS), max_size=8),
                   st.lists(st.sampled_from(STRINGS), max_size=4), st.integers(), st.text(max_size=40))


def locations(doc) -> list[tuple]:
    """Every (path to a container, key) in doc, containers included."""
    out = []

    def walk(node, path):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            out.append((path, k))
            if isinstance(v, (dict, list)):
                walk(v, path + (k,))
    walk(doc, ())
    return out


LOCATIONS = locations(BASE)


def container(doc, path):
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def mutation(draw):
    kind = draw(st.sampled_from(["drop", "rename", "retype", "nest", "grow", "deep", "duplicate", "add"]))
    return kind, draw(st.sampled_from(LOCATIONS)), draw(VALUES), draw(st.integers(1, 3000))


def mutate(doc: dict, kind, where, value, n) -> dict:
    path, key = where
    try:
        box = container(doc, path)
        box[key]
    except (KeyError, IndexError, TypeError):
        return doc                                   # an earlier mutation removed it
    if not isinstance(box, (dict, list)):
        return doc                                   # ... or replaced its container
    if kind == "drop":
        del box[key]
    elif kind == "rename" and isinstance(box, dict):
        box[str(value)[:30] or "x"] = box.pop(key)
    elif kind == "retype":
        box[key] = value
    elif kind == "nest":
        v = box[key]
        for _ in range(min(n, 40)):
            v = [v]
        box[key] = v
    elif kind == "grow":
        v = box[key]
        box[key] = (v * min(n, 2000))[:5000] if isinstance(v, (list, str)) and v else v
    elif kind == "deep":
        box[key] = Raw("[" * n * 30 + "]" * n * 30) if n % 2 else Raw("{a = " * n * 20 + "1" + " }" * n * 20)
    elif kind == "duplicate" and isinstance(box, list):
        box.extend([box[key]] * min(n, 80))
    elif kind == "add" and isinstance(box, dict):
        box[f"extra{n}"] = value
    return doc


OPTION_VALUES = {
    "--model": ["livepatch", "kgraft", "stop_machine", "kpatch", ""],
    "--seed": ["0", "-1", "3", str(2**63), "10**30", "x"],
    "--at": ["0", "-5", "20000", str(10**8), str(10**30), "1e5"],
    "--strategy": ["random", "exhaustive", "pct", "best"],
    "--schedule": ["rr", "random", "pct", "fifo"],
    "--sched-seed": ["0", "-1", str(2**40)],
    "--preempt": ["none", "full", "rt"],
    "--tasks": ["user0", "user0,kthread", "nobody", ",", "x" * 5000],
    "--runs": ["2", "0", "-3", str(10**12)],
    "--jobs": ["1", "0", "4000"],
    "--budget": ["3", "0", str(10**30)],
    "--trace": ["OUT/t.json", "OUT/missing/t.json", "OUT", "/dev/full", "/sys/t.json"],
    "--timeline": ["OUT/t.svg", "OUT/t.txt", "/dev/full", "OUT"],
    "--out": ["OUT/c", "OUT", "OUT/s.toml", "/sys/c"],
}
FLAGS = {"run": ["--json", "--force"], "replay": ["--json", "--force", "--shrink"],
         "fuzz": ["--json", "--force", "--resume"]}
ONE_RUN = {"--seed", "--at", "--strategy", "--schedule", "--sched-seed", "--preempt", "--tasks", "--trace",
           "--timeline"}
FOR = {"run": ONE_RUN, "replay": ONE_RUN | {"--budget"},
       "fuzz": {"--model", "--runs", "--jobs", "--strategy", "--seed", "--out"}}


@st.composite
def options(draw):
    command = draw(st.sampled_from(["run", "replay", "fuzz"]))
    argv = [command, "SCENARIO"]
    if command != "fuzz" and draw(st.integers(0, 9)):
        argv += ["--model", draw(st.sampled_from(OPTION_VALUES["--model"]))]
    if command == "fuzz":
        argv += ["--runs", "2", "--jobs", "1"]      # the campaign's size stays small; --runs is mutated below
    # mostly options the command has (their values mutated), sometimes one it has not
    pool = sorted(FOR[command]) if draw(st.integers(0, 4)) else sorted(OPTION_VALUES)
    for opt in draw(st.lists(st.sampled_from(pool), max_size=3, unique=True)):
        argv += [opt, draw(st.sampled_from(OPTION_VALUES[opt]))]
    argv += draw(st.lists(st.sampled_from(FLAGS[command]), max_size=2, unique=True))
    return argv


@contextlib.contextmanager
def time_bound(seconds: int):
    def hang(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")
    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def answer(capsys, argv) -> tuple[int, str]:
    with time_bound(ALARM):
        code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


def workdir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="lpemu-front-"))
    for name in ("base.c", "patch.c"):
        shutil.copy(SEED_DIR / name, d / name)
    return d


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutations=st.lists(mutation(), max_size=2), argv=options())
def test_mutated_scenarios_and_options_get_an_answer(capsys, mutations, argv):
    d = workdir()
    try:
        doc = tomllib.loads(SCENARIO)
        for m in mutations:
            doc = mutate(doc, *m)
        scn = d / "s.toml"
        scn.write_text(toml_document(doc))
        argv = [str(scn) if a == "SCENARIO" else a.replace("OUT", str(d)) for a in argv]
        code, err = answer(capsys, argv)
        event(f"{argv[0]}: exit {code}")
        assert code in (0, 1, 2), (code, err)
        assert "Traceback" not in err, err
        if code == 2:
            assert err.strip(), "an input error says what it is"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutations=st.lists(mutation(), min_size=1, max_size=4))
def test_mutated_scenarios_load_or_say_why(mutations):
    """Loading alone (no compile, no run): many more mutations, each either a
    Scenario or one ScenarioError naming the file."""
    from emu.errors import UserError
    from emu.runs import scenario
    d = workdir()
    try:
        doc = tomllib.loads(SCENARIO)
        for m in mutations:
            doc = mutate(doc, *m)
        (d / "s.toml").write_text(toml_document(doc))
        with time_bound(ALARM):
            try:
                scenario.load(d / "s.toml")
            except UserError as exc:
                assert str(exc).startswith(str(d / "s.toml")) and "\n" not in str(exc), str(exc)
    finally:
        shutil.rmtree(d, ignore_errors=True)
