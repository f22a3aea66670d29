"""Actions in any order: a scenario's enables, disables, forces, loads and
unloads, generated at random times around a module the patch carries
(examples/modules), and over two patches the second of which replaces the
first (the held-out replace-reversed), run under every model. Whatever the order, each action
is either done or refused the kernel's way (with its -errno: a module not
loaded cannot go, a loaded one cannot come again, an enabled patch is not
enabled again, ...); no run faults, none breaks its model's own promise,
and a repeat gives the same run. Before the refusals were modelled, an
unload before the load ran the module's exit at an unmapped address (a
guest fault), and a second enable broke kGraft's promise."""
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from emu.errors import UserError
from emu.models import MODEL_NAMES
from emu.runs import scenario
from emu.runs.fuzz import Runner

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "modules"
# p1 (f, g) and p2 (g, replace = true) over one base
REPLACE = Path(__file__).resolve().parent / "data" / "heldout" / "replace-reversed"
TIMES = (100, 20_000, 20_500, 30_000, 200_000, 400_000, 1_000_000)
DOS = ("enable", "disable", "force", "load", "unload")
# a refusal names its errno; a module's init that fails says what it returned
REFUSAL = re.compile(r"\(-E[A-Z]+[:)]|returned -?\d+")


def base_of(src: Path, d: Path, horizon: float | None = None) -> tuple[str, str]:
    """src's scenario split around its actions (its [expect] table dropped,
    its horizon replaced when given), its C sources copied into d."""
    for c in src.glob("*.c"):
        shutil.copy(c, d)
    text = (src / "scenario.toml").read_text()
    head, tail = text.split("[[action]]", 1)[0], "[check]" + text.split("[check]", 1)[1]
    tail = re.sub(r"\[expect\][\s\S]*", "", tail)
    if horizon is not None:
        tail = re.sub(r"(?m)^horizon = .*$", f"horizon = {horizon}", tail)
    return head, tail


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("orders")
    return (d, *base_of(EXAMPLE, d))


@pytest.fixture(scope="module")
def replacedir(tmp_path_factory):
    d = tmp_path_factory.mktemp("replace")
    return (d, *base_of(REPLACE, d, horizon=2.0))


def scenario_text(head: str, tail: str, actions) -> str:
    """head, one [[action]] per (at, do[, target]) (the target defaults to
    examples/modules' codec and fix), tail."""
    out = [head]
    for at, do, *target in actions:
        what = target[0] if target else ("codec" if do in ("load", "unload") else "fix")
        key = "" if do == "force" else f'{"module" if do in ("load", "unload") else "patch"} = "{what}"\n'
        out.append(f'[[action]]\nat = {at}\ndo = "{do}"\n{key}\n')
    return "".join(out) + tail


def run_every_model(path: Path) -> None:
    """Build path (an input error is skipped: two transitions at one
    instant are refused as input, exit 2) and hold every model's run to the
    rule of this module."""
    try:
        program = scenario.build(scenario.load(path))
    except UserError:
        assume(False)
    with Runner(program) as r:
        for model in MODEL_NAMES:
            res = r.execute(r.plan(model, 0))
            assert res.fault is None, (model, res.fault)
            assert not res.promise, (model, res.promise[:1])
            for e in res.errors:
                assert REFUSAL.search(e["error"]), (model, e)
            again = r.execute(r.plan(model, 0))
            assert (again.trace_hash, again.errors) == (res.trace_hash, res.errors), model


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(st.tuples(st.sampled_from(TIMES), st.sampled_from(DOS)), min_size=1, max_size=6))
def test_any_order_of_actions_is_done_or_refused_never_a_fault(workdir, actions):
    d, head, tail = workdir
    path = d / "s.toml"
    path.write_text(scenario_text(head, tail, sorted(actions)))
    run_every_model(path)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(st.tuples(st.sampled_from((100, 20_000, 200_000, 440_000, 540_000)),
                                  st.sampled_from(("enable", "disable", "force")),
                                  st.sampled_from(("p1", "p2"))), min_size=1, max_size=5))
def test_any_order_of_two_patches_one_a_replace_is_done_or_refused(replacedir, actions):
    """The same over two patches, the second an atomic replace of the
    first (the held-out replace-reversed, its horizon 2 s after the last
    action)."""
    d, head, tail = replacedir
    path = d / "s.toml"
    path.write_text(scenario_text(head, tail, sorted(actions)))
    run_every_model(path)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_an_unload_before_the_load_is_refused_and_the_load_goes_on(workdir, model):
    """The example found by the generator first: unload at 100, enable at
    20000, load at 20500. delete_module finds no module (-ENOENT); the
    load then comes as in the example."""
    d, head, tail = workdir
    path = d / "first.toml"
    path.write_text(scenario_text(head, tail, [(100, "unload"), (20_000, "enable"), (20_500, "load")]))
    with Runner(scenario.build(scenario.load(path))) as r:
        res = r.execute(r.plan(model, 0))
    assert res.fault is None and not res.promise
    # Ksplice refuses the update too: its target codec is not loaded at the
    # enable (kmodsrc/ksplice.c apply_update, TARGET_NOT_LOADED)
    assert [(e["time"], e["action"]) for e in res.errors] == \
        [(100, "unload codec")] + ([(20_000, "enable fix")] if model == "ksplice" else [])
    assert "module 'codec' is not loaded (-ENOENT" in res.errors[0]["error"]
    assert res.outcome == "failed"                  # a refused action
