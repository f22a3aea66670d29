"""The pytest plugin: scenario files become items per model, judged by their
[expect]; fixtures give the Python API. Run through pytester, the plugin
loaded as users get it (its pytest11 entry point)."""
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "emu" / "seed"
SCENARIO = (SEED / "scenario.toml").read_text()


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    (ep,) = [e for e in entry_points(group="pytest11") if e.name == "lpemu"]
    assert ep.value == "emu.app.pytest_plugin"


@pytest.fixture
def seed_dir(pytester):
    for name in ("base.c", "patch.c", "patch_foo.c"):
        shutil.copy(SEED / name, pytester.path / name)
    return pytester


def scenario(expect: str, **fuzz) -> str:
    text = SCENARIO
    for key, value in fuzz.items():
        text = text.replace(f"\n{key} = ", f"\n{key} = {value}\n#", 1)
    return text + "\n[expect]\n" + expect


def test_scenarios_pass_and_fail_as_their_expect_tables_say(seed_dir):
    # bar+baz: livepatch does not look for foo, so "safe" is a surprise; kGraft is safe
    seed_dir.makefile(".lpemu.toml", right=scenario('kgraft = ["safe", "completes"]\nlivepatch = "unsafe"\n'))
    seed_dir.makefile(".toml", wrong=scenario('livepatch = "safe"\nstop_machine = "completes"\n'))
    (seed_dir.path / "plain.toml").write_text("[tool]\nname = 'not a scenario'\n")   # no [expect]: ignored
    (seed_dir.path / "broken.toml").write_text("[expect\n")                          # not TOML: ignored
    result = seed_dir.runpytest("--lpemu-runs", "6", "-v")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*right.lpemu.toml::kgraft PASSED*",
        "*right.lpemu.toml::livepatch PASSED*",
        "*wrong.toml::livepatch FAILED*",
        "*wrong.toml::stop_machine PASSED*",
    ])
    out = result.stdout.str()
    # the failure names the model, the expectation, what happened, the first failing seed and its replay
    assert "livepatch: expected safe, but 5 of 6 runs were not (first: seed 0: inconsistent, assertion" in out
    assert "first failing seed: 0" in out
    assert "replay: lpemu replay " in out and "wrong.toml --model livepatch --seed 0 --strategy exhaustive" in out


def test_the_items_are_judged_by_the_expectations_of_the_scenarios_kernel(seed_dir):
    # the seed scenario names no kernel: the newest (6.19), whose entry replaces [expect]'s;
    # 4.18's entries are not this scenario's to meet
    seed_dir.makefile(".lpemu.toml", k=scenario('livepatch = "safe"\n\n[expect.kernel."6.19"]\n'
                                                 'livepatch = "unsafe"\n\n[expect.kernel."4.18"]\n'
                                                 'kgraft = "unsafe"\n'))
    result = seed_dir.runpytest("--lpemu-runs", "4", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*k.lpemu.toml::livepatch PASSED*"])


def test_a_scenario_without_expect_fails_on_findings(seed_dir):
    seed_dir.makefile(".lpemu.toml", plain=SCENARIO.replace(
        'models = ["immediate", "stop_machine", "kgraft", "livepatch"]', 'models = ["kgraft", "livepatch"]'))
    result = seed_dir.runpytest("--lpemu-runs", "4", "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*plain.lpemu.toml::kgraft PASSED*", "*plain.lpemu.toml::livepatch FAILED*"])
    assert "livepatch: 4 of 4 runs with findings" in result.stdout.str()


@pytest.mark.parametrize("option,value", [("--lpemu-runs", "0"), ("--lpemu-runs", "-1"),
                                          ("--lpemu-runs", "1000001"), ("--lpemu-jobs", "0"),
                                          ("--lpemu-jobs", "-3"), ("--lpemu-jobs", "x")])
def test_an_option_out_of_range_is_a_usage_error_naming_it(seed_dir, option, value):
    """Not a traceback of the campaign's own check in every item (nor, for
    --lpemu-runs 0, a silent fall back to [fuzz] runs)."""
    seed_dir.makefile(".lpemu.toml", s=scenario('kgraft = "safe"\n'))
    result = seed_dir.runpytest(option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"argument {option}: " in result.stderr.str()


def test_more_jobs_than_cores_start_one_worker_a_core(seed_dir, monkeypatch):
    """--lpemu-jobs 4096 starts no more workers than the cores this process
    may use, as `lpemu fuzz --jobs` (it forked thousands). One core here."""
    from emu.runs import campaign
    made = []
    real = campaign.Campaign

    class Counting(real):
        def __init__(self, *a, jobs, **k):
            made.append(jobs)
            super().__init__(*a, jobs=jobs, **k)
    monkeypatch.setattr(campaign, "Campaign", Counting)
    monkeypatch.setattr(campaign, "default_jobs", lambda: 1)
    seed_dir.makefile(".lpemu.toml", s=scenario('kgraft = "safe"\n', runs=2))
    result = seed_dir.runpytest_inprocess("--lpemu-jobs", "4096")
    result.assert_outcomes(passed=1)
    assert made == [1]


def test_a_bad_scenario_fails_with_its_own_message(seed_dir):
    seed_dir.makefile(".lpemu.toml", bad=scenario('livepatch = "fast"\n'))
    result = seed_dir.runpytest()
    result.assert_outcomes(failed=1)
    assert "expect.livepatch: unknown expectation 'fast'" in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


def test_the_example_folder_and_its_fixtures(pytester):
    ci = ROOT / "examples" / "ci"
    shutil.copytree(SEED, pytester.path / "seed")
    shutil.copytree(ci, pytester.path / "ci", ignore=shutil.ignore_patterns("__pycache__"))
    result = pytester.runpytest("ci", "--lpemu-runs", "4", "-v")
    # 8 scenario items (4 models x 2 files) and the example's 2 tests
    result.assert_outcomes(passed=10)
    result.stdout.fnmatch_lines(["*seed-foo.lpemu.toml::stop_machine PASSED*",
                                 "*test_seed_patch.py::test_the_new_baz_sees_an_old_value_under_stop_machine PASSED*"])
