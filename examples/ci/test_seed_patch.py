"""A patch's tests next to the patch: `pytest examples/ci`.

The two scenario files here are test items by themselves (one per model
in their [expect] tables, through the lpemu pytest plugin); the tests
below use the plugin's fixtures for questions a table cannot ask.
"""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_livepatch_with_foo_completes_by_its_second_attempt(lpemu_runner):
    runner = lpemu_runner(HERE / "seed-foo.lpemu.toml")
    for seed in range(8):
        result = runner.execute(runner.plan("livepatch", seed))
        assert not result.failing and result.outcome == "completed"
        # the first attempt may find a task asleep in foo; the retry (1 s later) does not
        (transition,) = result.transitions
        assert transition["attempts"] <= 2
        assert len(transition["attempt_log"]) == transition["attempts"] - 1


def test_the_new_baz_sees_an_old_value_under_stop_machine(lpemu_runner):
    runner = lpemu_runner(HERE / "seed.lpemu.toml")
    result = runner.execute(runner.plan("stop_machine", 0))
    assert result.inconsistent
    bad = result.inconsistencies[0]["entries"]
    assert [(e["function"], e["version"]) for e in bad] == [("bar", 0), ("baz", 1)]
