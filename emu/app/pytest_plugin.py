"""The pytest plugin (entry point `pytest11: lpemu`): scenario files as tests.

Collected files:
- every `*.lpemu.toml` in the directories pytest collects;
- any other `*.toml` there whose top level has an `[expect]` table
  (a file that is not valid TOML is left alone).

Each collected scenario gives one test item per model, named
`FILE::MODEL`: the models of its `[expect]` table, each judged by its
expectations (emu/runs/expect.py); a `*.lpemu.toml` without `[expect]`
gives its `[fuzz] models`, each failing on any finding of the default
kinds (expect.DEFAULT_FAIL_ON). An item runs a campaign of that model
(`[fuzz] runs` seeds from `[fuzz] seed`, its strategy) and fails with
the first failing seed, what that run found and the `lpemu replay`
command. A scenario that does not load or build fails each of its items
with the file's own message.

Options: --lpemu-runs N (runs per model instead of [fuzz] runs),
--lpemu-jobs J (worker processes per campaign, at most one a core; default 1).

Fixtures for tests written in Python:
- lpemu_program(path): the scenario at path, loaded and built (a
  emu.runs.scenario.Program; built once per path in the session);
- lpemu_runner(path_or_program): an emu.runs.fuzz.Runner, closed when
  the test ends; runner.execute(runner.plan(model, seed)) is one run.
"""
from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest

from emu.errors import EmuError

SUFFIX = ".lpemu.toml"


def pytest_addoption(parser) -> None:
    from emu.app.cli import MAX_JOBS, int_in
    from emu.runs.scenario import MAX_RUNS
    group = parser.getgroup("lpemu", "lpemu scenario files")
    group.addoption("--lpemu-runs", type=int_in(1, MAX_RUNS), default=None, metavar="N",
                    help="runs per model of each scenario (default: its [fuzz] runs)")
    group.addoption("--lpemu-jobs", type=int_in(1, MAX_JOBS), default=1, metavar="J",
                    help="worker processes per scenario campaign, at most one a core (default: 1)")


def pytest_collect_file(file_path: Path, parent):
    if file_path.name.endswith(SUFFIX) or (file_path.suffix == ".toml" and _has_expect(file_path)):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def _has_expect(path: Path) -> bool:
    try:
        return isinstance(tomllib.loads(path.read_text()).get("expect"), dict)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


class ScenarioFile(pytest.File):
    """A scenario: one item per model (module docstring)."""

    def collect(self):
        from emu.runs import scenario
        try:
            scn = scenario.load(self.path)
        except EmuError as exc:
            yield ScenarioItem.from_parent(self, name="load", model=None, expected=(), problem=str(exc))
            return
        expected = scn.expected_models()
        if expected:
            models = [(m, scn.expected(m)) for m in expected]
        else:
            models = [(m, ()) for m in scn.fuzz.models]
        for model, words in models:
            yield ScenarioItem.from_parent(self, name=model, model=model, expected=words, problem=None)

    def program(self):
        """The scenario built, once for all its items (EmuError if it cannot be)."""
        if not hasattr(self, "_program"):
            from emu.runs import scenario
            try:
                self._program = scenario.build(scenario.load(self.path))
            except EmuError as exc:
                self._program = exc
        if isinstance(self._program, EmuError):
            raise self._program
        return self._program


class ScenarioFailure(Exception):
    """An item's campaign broke its expectation (or had a finding)."""


class ScenarioItem(pytest.Item):
    def __init__(self, *, model, expected, problem, **kw):
        super().__init__(**kw)
        self.model = model
        self.expected = tuple(expected)
        self.problem = problem
        if model is not None:
            self.user_properties.append(("expect", ",".join(expected) or "no findings"))

    def runtest(self) -> None:
        from emu.runs import campaign, expect
        if self.problem is not None:
            raise ScenarioFailure(self.problem)
        try:
            prog = self.parent.program()
        except EmuError as exc:
            raise ScenarioFailure(str(exc)) from None
        fz = prog.scenario.fuzz
        runs = self.config.getoption("lpemu_runs") or fz.runs
        plan = campaign.Plan(str(self.path), [self.model], list(range(fz.seed, fz.seed + runs)), fz.strategy)
        # as `lpemu fuzz --jobs`: no more workers than the cores this process may use
        jobs = min(self.config.getoption("lpemu_jobs"), campaign.default_jobs())
        camp = campaign.Campaign(prog, plan, jobs=jobs)
        try:
            camp.run()
        finally:
            camp.close()
        records = list(camp.records.values())
        verdict = expect.judge(self.model, self.expected, expect.DEFAULT_FAIL_ON, records)
        if not verdict.ok:
            lines = [verdict.why]
            if verdict.seed is not None:
                first = camp.records[self.model, verdict.seed]
                lines += [f"first failing seed: {verdict.seed} ({expect.summary_line(first)})",
                          f"replay: lpemu replay {shlex.quote(str(self.path))} --model {self.model} --seed {verdict.seed} "
                          f"--strategy {fz.strategy} --shrink"]
            raise ScenarioFailure("\n".join(lines))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ScenarioFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        what = f"expect {', '.join(self.expected)}" if self.expected else "no findings"
        return self.path, None, f"{self.path.name}::{self.name} ({what})"


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _lpemu_programs():
    return {}


@pytest.fixture
def lpemu_program(_lpemu_programs):
    """lpemu_program(path) -> the scenario at path, built (cached per session)."""
    from emu.runs import scenario

    def build(path):
        key = Path(path).resolve()
        if key not in _lpemu_programs:
            _lpemu_programs[key] = scenario.build(scenario.load(key))
        return _lpemu_programs[key]
    return build


@pytest.fixture
def lpemu_runner(lpemu_program):
    """lpemu_runner(path or Program) -> a Runner, closed when the test ends."""
    from emu.runs.fuzz import Runner
    from emu.runs.scenario import Program
    made = []

    def runner(what):
        prog = what if isinstance(what, Program) else lpemu_program(what)
        made.append(Runner(prog))
        return made[-1]
    yield runner
    for r in made:
        r.close()
