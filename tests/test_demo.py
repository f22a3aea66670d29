"""The seed question, answered by running it (the `lpemu demo` table)."""
import json

from emu.app import cli
from emu.app import demo


def test_demo_finds_the_seed_bug_where_it_exists_and_only_there():
    results = {(s.model, s.variant): s for s in demo.run_demo(runs=12)}
    for model in ("immediate", "stop_machine"):
        assert results[model, "bar+baz"].inconsistent > 0
        assert results[model, "bar+baz"].bad_values > 0       # a new baz got an old-form value
    assert results["kgraft", "bar+baz"].inconsistent == 0
    assert results["kgraft", "foo+bar+baz"].inconsistent == 0
    assert results["stop_machine", "foo+bar+baz"].inconsistent == 0
    assert results["livepatch", "bar+baz"].inconsistent > 0
    assert results["livepatch", "foo+bar+baz"].inconsistent == 0
    example = results["immediate", "bar+baz"].example
    assert "bar v0" in example and "baz v1" in example


def test_demo_json_is_one_object(capsys):
    assert cli.main(["demo", "--runs", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    row = out["results"][0]
    assert set(row) >= {"model", "variant", "runs", "inconsistent", "completed", "failed", "stalled"}


def test_bad_option_exits_2_without_traceback(capsys):
    assert cli.main(["demo", "--runs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--runs" in err and "Traceback" not in err


def test_the_readme_shows_what_make_demo_prints(capsys):
    """The README opens with `make demo` and the output of a real run: the
    same runs print the same text (a change of runs updates the README)."""
    from pathlib import Path
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    shown = readme.split("From a real run (`make demo`", 1)[1].split("```\n", 2)[1]
    assert cli.main(["demo", "--quiet"]) == 0
    assert capsys.readouterr().out == shown
