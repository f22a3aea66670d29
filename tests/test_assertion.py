"""The assertion language: what it accepts evaluates as the same expression
would in Python; everything outside it is refused when the scenario loads,
naming the file, the line and the key; nothing is evaluated by eval."""
import operator
import pickle
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.errors import ScenarioError
from emu.runs import scenario
from emu.runs.assertion import MAX_DEPTH, MAX_NODES, MAX_TEXT, Assertion, AssertionSyntax

ENV = {"key": 2, "value": 1500, "time": 123456, "task": "user0", "kind": "user"}


# ---- the language, generated: it means what Python means ----------------------------------------
def integers():
    leaf = st.one_of(st.sampled_from(["key", "value", "time", "True", "False"]),
                     st.integers(-10**6, 10**6).map(str))

    def grow(inner):
        return st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "//", "%", "&", "|", "^"]), inner)
              .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, st.sampled_from(["<<", ">>"]), st.integers(0, 64))
              .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda x: f"(-{x})"),
            inner.map(lambda x: f"(~{x})"),
            st.tuples(st.sampled_from(["min", "max"]), st.lists(inner, min_size=2, max_size=3))
              .map(lambda t: f"{t[0]}({', '.join(t[1])})"),
            inner.map(lambda x: f"abs({x})"),
            st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        )
    return st.recursive(leaf, grow, max_leaves=8)


def numbers():
    """Integers, and floats where the language takes them (no bitwise operator)."""
    leaf = st.one_of(integers(), st.sampled_from(["0.5", "1e3", "-2.25"]))

    def grow(inner):
        return st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%"]), inner)
              .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(st.sampled_from(["min", "max"]), st.lists(inner, min_size=2, max_size=3))
              .map(lambda t: f"{t[0]}({', '.join(t[1])})"),
        )
    return st.recursive(leaf, grow, max_leaves=6)


def conditions():
    cmp = st.tuples(numbers(), st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), numbers()) \
        .map(lambda t: f"{t[0]} {t[1]} {t[2]}")
    member = st.tuples(numbers(), st.sampled_from(["in", "not in"]),
                       st.lists(st.integers(-5, 2000), min_size=1, max_size=4)) \
        .map(lambda t: f"{t[0]} {t[1]} ({', '.join(map(str, t[2]))},)")
    text = st.tuples(st.sampled_from(["task", "kind"]), st.sampled_from(["==", "!=", "<"]),
                     st.sampled_from(['"user0"', '"kthread"', '"user"', "kind", "task"])) \
        .map(lambda t: f"{t[0]} {t[1]} {t[2]}")
    text_in = st.sampled_from(['task in ("user0", "user1")', 'kind not in ("kthread",)'])
    leaf = st.one_of(cmp, member, text, text_in)
    return st.recursive(leaf, lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda x: f"not ({x})")), max_leaves=6)


envs = st.fixed_dictionaries({"key": st.integers(-2**63, 2**63), "value": st.integers(-2**63, 2**64),
                              "time": st.integers(0, 10**8), "task": st.sampled_from(["user0", "user1", "kthread"]),
                              "kind": st.sampled_from(["user", "kthread"])})


def python(text, env):
    """The reference: Python's own evaluation of the same text (tests only)."""
    try:
        return ("ok", bool(eval(text, {"__builtins__": {"abs": abs, "min": min, "max": max}}, dict(env))))  # noqa: S307
    except (ArithmeticError, ValueError) as exc:
        return ("error", type(exc).__name__)


def ours(text, env):
    a = Assertion(text)
    try:
        return ("ok", a.holds(env))
    except (ArithmeticError, ValueError) as exc:
        return ("error", type(exc).__name__)


@settings(max_examples=300, deadline=None)
@given(text=conditions(), env=envs)
def test_generated_assertions_mean_what_python_means(text, env):
    if len(text) > MAX_TEXT:
        return
    try:
        mine = ours(text, env)
    except AssertionSyntax as exc:         # only the size bounds may refuse a generated expression
        assert "at most" in str(exc) or "nested" in str(exc), (text, exc)
        return
    assert mine == python(text, env), text


def test_the_examples_of_the_readme():
    for text, want in [("value >= 1000", True), ("value in (0, 1, 2)", False), ("key == 2 and value > 0", True),
                       ('task == "user0" or kind == "kthread"', True), ("0 <= value < 10**4", True),
                       ("abs(value - 1500) <= max(1, key)", True), ("value % 100 == 0", True),
                       ("(value >> 4) & 1 == 1", True), ("time // 1000 > 100", True),
                       ("value if key == 2 else 0", True), ('kind not in ("kthread",)', True)]:
        if "**" in text:
            with pytest.raises(AssertionSyntax, match=r"'\*\*' is not in the language"):
                Assertion(text)
            continue
        assert Assertion(text).holds(ENV) is want, text


# ---- outside the language: refused at load, before any run --------------------------------------
HOSTILE = {
    "a lambda walking to os.system": ("(lambda: 0).__globals__['os'].system('true')", "attribute"),
    "a lambda": ("(lambda: 1)() == 1", "lambda is not in the language"),
    "an import": ("__import__('os').system('true') == 0", "attribute"),
    "a call of an import": ("__import__('os') == 0", "unknown function '__import__'"),
    "a dunder name": ("__builtins__ == 1", "unknown name '__builtins__'"),
    "an attribute": ("value.real > 0", "attribute"),
    "a subscript": ("task[0] == 'u'", "subscript"),
    "a comprehension": ("any(x for x in (1, 2))", "unknown function 'any'"),
    "a bare comprehension": ("[x for x in (1, 2)] == 0", "comprehension"),
    "a walrus": ("(x := 1) == 1", "assignment"),
    "an f-string": ('f"{value}" == "1"', "f-string"),
    "a power": ("2 ** 10 ** 10 > 0", "'**' is not in the language"),
    "a misspelt name": ("vlaue >= 1000", "unknown name 'vlaue'"),
    "an unknown function": ("len(task) > 0", "unknown function 'len'"),
    "a string compared with a number": ("task > 1", "compares a string with a number"),
    "arithmetic on a string": ('task + "x" == "y"', "takes a number, not a string"),
    "is": ("value is 1", "use == or !="),
    "in over a name": ("value in task", "tuple of literals"),
    "in over an expression": ("value in (key, 2)", "tuple of literals"),
    "a dict": ("{1: 2} == 0", "dict"),
    "keyword arguments": ("max(1, 2, key=3) > 0", "max takes"),
    "min of one": ("min(value) > 0", "min takes"),
    "not an expression": ("value >=", "not an expression"),
    "a statement": ("import os", "not an expression"),
    "3000 unary minuses": ("-" * 3000 + "value > 0", f"at most {MAX_TEXT}"),
    "deep parentheses": ("(" * 400 + "value" + ")" * 400 + " > 0", "nested"),
    "deep unary minuses": ("-" * 300 + "value > 0", "nested too deeply"),
    "too many nodes": (" + ".join(["max(" + ", ".join("1" * 16) + ")"] * 14) + " > 0", f"at most {MAX_NODES}"),
    "bitwise on a float": ("(value & 0.5) == 0", "takes an integer, not a number"),
    "a shift of a float": ("(1.5 << 2) == 0", "takes an integer"),
    "a None": ("value == None", "not a number or string"),
    "bytes": ("task == b'x'", "not a number or string"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_outside_the_language_is_refused(name):
    text, words = HOSTILE[name]
    with pytest.raises(AssertionSyntax) as info:
        Assertion(text)
    assert words in str(info.value), str(info.value)


@pytest.mark.parametrize("name", ["a lambda walking to os.system", "a misspelt name", "3000 unary minuses"])
def test_refused_at_load_naming_file_line_and_key(seed_copy, name):
    text, words = HOSTILE[name]
    body = textwrap.dedent(f"""\
        [program]
        sources = ["base.c"]

        [[task]]
        name = "user"
        entry = "user_entry"

        [check]
        unit = "syscall"
        assert = [{text!r}]
        """).replace("\\\\", "\\")
    (seed_copy / "s.toml").write_text(body)
    with pytest.raises(ScenarioError) as info:
        scenario.load(seed_copy / "s.toml")
    msg = str(info.value)
    assert msg.startswith(f"{seed_copy / 's.toml'}:10: check.assert: ") and words in msg, msg


def test_runtime_errors_fail_the_observation_not_the_run():
    a = Assertion("value // (key - 2) > 0")
    with pytest.raises(ZeroDivisionError):
        a.holds(ENV)
    with pytest.raises(ValueError, match="shift count"):
        Assertion("value << time > 0").holds(ENV)


def test_an_assertion_travels_to_workers_and_back():
    a = Assertion("value in (1, 1500) and task != 'x'", key=2, line=7)
    b = pickle.loads(pickle.dumps(a))
    assert (b.text, b.key, b.line) == (a.text, a.key, a.line) and b.holds(ENV) and a == b


def test_depth_bound_is_the_documented_one():
    ok = "(" * (MAX_DEPTH - 4) + "value" + ")" * (MAX_DEPTH - 4) + " > 0"
    assert Assertion(ok).holds(ENV)


def test_operators_are_the_operators():
    for sym, fn in [("+", operator.add), ("-", operator.sub), ("*", operator.mul), ("//", operator.floordiv),
                    ("%", operator.mod), ("&", operator.and_), ("|", operator.or_), ("^", operator.xor)]:
        assert Assertion(f"(value {sym} key) == {fn(1500, 2)}").holds(ENV), sym


# ---- in a run: every observation against every assertion of its key, in order -------------------
POOL = [("value >= 1000", 2), ("value >= 1000", None), ("time % 3 != 0", None), ("task != 'user0'", 1),
        ("kind == 'user'", None), ("value // (time % 2) >= 0", None), ("key == 2", 2),
        ("value in (5, 5000) and task != 'kthread'", None), ("time < 0", 1)]


@pytest.fixture(scope="module")
def seed_program():
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "examples" / "seed" / "scenario.toml"
    return scenario.build(scenario.load(path))


@settings(max_examples=25, deadline=None)
@given(picked=st.lists(st.sampled_from(POOL), min_size=1, max_size=6),
       model=st.sampled_from(["immediate", "kgraft", "livepatch"]),
       seeds=st.lists(st.integers(0, 7), min_size=1, max_size=3))
def test_a_run_checks_every_observation_against_every_assertion_of_its_key(seed_program, picked, model, seeds):
    """Result.violations: for each lpemu_observe() in trace order, each
    assertion of its key or of every key, in the scenario's order, that
    fails or raises on it (read here from the trace, one by one); also for
    the later runs of a runner, which keeps verdicts from run to run."""
    from dataclasses import replace
    from emu.engine import core
    from emu.runs.fuzz import MAX_REPORTED, Runner
    checks = [Assertion(text, key, line) for line, (text, key) in enumerate(picked, 1)]
    prog = replace(seed_program, scenario=replace(seed_program.scenario, assertions=checks))
    with Runner(prog) as runner:
        for seed in seeds:
            res, m, _ = runner.execute(runner.plan(model, seed, strategy="exhaustive"), keep=True)
            want = []
            for clock, kind, task, key, value, _ in m.trace.records():
                if kind != core.EV_OBSERVE:
                    continue
                t = m.tasks[task]
                env = {"key": key, "value": value, "time": clock, "task": t.name, "kind": t.kind.value}
                for a in checks:
                    if a.key not in (None, key):
                        continue
                    try:
                        why = None if a.holds(env) else "fails"
                    except ArithmeticError as exc:
                        why = f"{type(exc).__name__}: {exc}"
                    if why is not None:
                        want.append({"assert": a.text, "line": a.line, "task": t.name, "time": clock, "key": key,
                                     "value": value, "error": None if why == "fails" else why})
            m.engine.close()
            assert any(r[1] == core.EV_OBSERVE for r in m.trace.records())
            assert res.violation_count == len(want)
            assert res.violations == want[:MAX_REPORTED]
