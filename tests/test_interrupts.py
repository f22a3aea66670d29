"""A signal that stops a command (Ctrl-C's SIGINT, SIGTERM from kill or a CI
timeout, SIGHUP from a closed terminal) ends every command alike: one line
`lpemu: interrupted`, no traceback, exit 128 + the signal as a shell
reports a process the signal killed (130, 143, 129), what was written by
then kept (emu/runs/interrupt.py)."""
import json
import os
import shutil
import signal
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from emu.app import cli

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "examples" / "seed"
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def _where(command: str, d: Path):
    """(argv, module, name): command's arguments, and a function it calls
    once it is at work, where the signal is sent."""
    scenario = d / "scenario.toml"
    return {
        "run": (["run", scenario, "--model", "livepatch"], "emu.runs.fuzz", "Runner.execute"),
        "replay": (["replay", scenario, "--model", "livepatch", "--seed", "1"], "emu.runs.fuzz", "Runner.execute"),
        "fuzz": (["fuzz", scenario, "--runs", "2", "--jobs", "1", "--quiet", "--out", d / "out"],
                 "emu.runs.campaign", "run_record"),
        "diff": (["diff", ROOT / "tests/diff/inline/old.c", ROOT / "tests/diff/inline/new.c"],
                 "emu.images.diff", "diff_files"),
        "bench": (["bench", "--quick"], "emu.app.bench", "run_bench"),
        "demo": (["demo", "--runs", "1"], "emu.app.demo", "run_demo"),
        "first-failure": (["first-failure", scenario, "--limit", "2"], "emu.runs.first_failure", "compare"),
    }[command]


@pytest.fixture
def guarded():
    """The test's own handlers while lpemu's are not set: a signal that
    reached them was missed by lpemu (and the test run lives on)."""
    missed = []
    before = {sig: signal.signal(sig, lambda signum, frame: missed.append(signum)) for sig in SIGNALS}
    ours = {sig: signal.getsignal(sig) for sig in SIGNALS}
    try:
        yield missed, ours
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("command", ["run", "replay", "fuzz", "diff", "bench", "demo", "first-failure"])
def test_each_command_a_signal_stops_exits_128_plus_the_signal(tmp_path, capsys, monkeypatch, guarded, command, sig):
    import importlib
    missed, ours = guarded
    shutil.copytree(SEED, tmp_path, dirs_exist_ok=True)
    argv, module, name = _where(command, tmp_path)
    owner = importlib.import_module(module)
    attr = name.split(".")
    if len(attr) == 2:
        owner, attr = getattr(owner, attr[0]), attr[1]
    else:
        attr = attr[0]
    real = getattr(owner, attr)

    def signalled(*a, **k):
        os.kill(os.getpid(), sig)
        return real(*a, **k)
    monkeypatch.setattr(owner, attr, signalled)
    if sig == signal.SIGINT:       # Python's own Ctrl-C, as a terminal's foreground job has it
        signal.signal(signal.SIGINT, signal.default_int_handler)
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 128 + sig, err
    # (fuzz says it under its summary: "interrupted: N runs kept; continue with --resume ...")
    said = "interrupted: 0 runs kept; continue with --resume" in out if command == "fuzz" else \
        err.strip() == "lpemu: interrupted"
    assert said and "Traceback" not in err, (out, err)
    assert not missed
    assert all(signal.getsignal(s) is ours[s] for s in (signal.SIGTERM, signal.SIGHUP))   # lpemu's are gone again


def test_an_interrupted_campaign_keeps_its_runs_and_resumes(tmp_path, capsys, monkeypatch, guarded):
    """SIGTERM after the third run of a campaign: exit 143, the runs finished
    by then are in runs.jsonl, and --resume runs only the others."""
    from emu.runs import campaign
    shutil.copytree(SEED, tmp_path, dirs_exist_ok=True)
    real, done = campaign.run_record, []

    def record(*a, **k):
        if len(done) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        done.append(a)
        return real(*a, **k)
    monkeypatch.setattr(campaign, "run_record", record)
    argv = ["fuzz", str(tmp_path / "scenario.toml"), "--model", "kgraft", "--runs", "6", "--jobs", "1", "--json",
            "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 143
    assert json.loads(capsys.readouterr().out)["interrupted"] is True
    assert len((tmp_path / "out" / "runs.jsonl").read_text().splitlines()) == 3
    done.clear()
    monkeypatch.setattr(campaign, "run_record", real)
    assert cli.main([*argv, "--resume"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["interrupted"] is False and out["models"][0]["runs"] == 6


DURING_IMPORTS = """\
import os, signal, sys
from importlib.metadata import entry_points
sig = int(sys.argv[1])
signal.signal(signal.SIGINT, signal.default_int_handler)   # whatever this test run inherited
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == "emu.app.cli":                       # the command's modules start to load
            os.kill(os.getpid(), sig)
        return None
sys.meta_path.insert(0, Hook())
main = entry_points(group="console_scripts")["lpemu"].load()
sys.exit(main(["--version"]))
"""


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_while_the_command_loads_is_an_interrupt_too(sig):
    """The `lpemu` console script takes the stop signals before the command's
    modules load: a signal then ends as later (no traceback, no death by the
    signal's default action)."""
    assert "lpemu" in entry_points(group="console_scripts").names
    r = subprocess.run([sys.executable, "-c", DURING_IMPORTS, str(int(sig))], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 128 + sig and r.stderr.strip() == "lpemu: interrupted", (r.returncode, r.stderr)
    assert r.stdout == ""


def test_an_ignored_hangup_stays_ignored(tmp_path):
    """nohup: a SIGHUP the process inherited as ignored does not stop it."""
    code = ("import os, signal, sys\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "from emu.app import cli, demo\n"
            "real = demo.run_demo\n"
            "def hup(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGHUP)\n"
            "    return real(*a, **k)\n"
            "demo.run_demo = hup\n"
            "sys.exit(cli.main(['demo', '--runs', '1', '--json']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1) and json.loads(r.stdout)["results"], r.stderr


def test_a_model_an_interrupted_campaign_did_not_settle_is_no_pass(tmp_path, capsys, monkeypatch, guarded):
    """SIGTERM as the fourth run starts (models run in turn, two runs each):
    kgraft ran both runs without a finding (ok), stop_machine's first run
    already has one (FAIL, with its seed), livepatch never ran: it reads as
    not run, in the text, in the JSON (not ok, interrupted) and in the
    JUnit report (skipped, not passed and not failed)."""
    import xml.etree.ElementTree as ET
    from emu.runs import campaign
    shutil.copytree(SEED, tmp_path, dirs_exist_ok=True)
    real, started = campaign.run_record, []

    def record(*a, **k):
        started.append(a)
        if len(started) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)
    monkeypatch.setattr(campaign, "run_record", record)
    argv = ["fuzz", str(tmp_path / "scenario.toml"), "--model", "kgraft", "--model", "stop_machine",
            "--model", "livepatch", "--runs", "2", "--jobs", "1", "--junit", str(tmp_path / "j.xml")]
    assert cli.main(argv) == 143
    out = capsys.readouterr().out
    lines = {line.split()[1].rstrip(":"): line for line in out.splitlines()
             if line[:4] in ("ok  ", "FAIL", "----")}
    assert lines["kgraft"].startswith("ok   kgraft: no findings in 2 runs"), out
    assert lines["stop_machine"].startswith("FAIL stop_machine: 1 of 1 runs with findings"), out
    assert lines["livepatch"] == "---- livepatch: not run (the campaign was interrupted before its first run)", out
    assert "no findings in 0 runs" not in out

    started.clear()
    assert cli.main([*argv, "--json"]) == 143
    summary = json.loads(capsys.readouterr().out)
    verdicts = {v["model"]: v for v in summary["verdicts"]}
    assert verdicts["kgraft"]["ok"] and not verdicts["kgraft"]["interrupted"]
    assert not verdicts["stop_machine"]["ok"] and verdicts["stop_machine"]["first_failing_seed"] == 0
    assert not verdicts["livepatch"]["ok"] and verdicts["livepatch"]["interrupted"]
    assert summary["ok"] is False and summary["interrupted"] is True

    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["kgraft"].find("failure") is None and cases["kgraft"].find("skipped") is None
    assert cases["stop_machine"].find("failure") is not None
    assert cases["livepatch"].find("failure") is None and "not run" in cases["livepatch"].find("skipped").get("message")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")


def test_a_model_run_in_part_is_judged_only_by_what_settles_it():
    """expect.judge with planned runs: a partial set without a failing run
    is interrupted (an `unsafe` still unseen, no finding yet), one with a
    run that breaks `safe` fails; a whole set is judged as ever."""
    from emu.runs import expect
    clean = [{"seed": s, "outcome": "completed"} for s in range(3)]
    bad = [*clean, {"seed": 3, "outcome": "completed", "inconsistent": True}]
    v = expect.judge("m", (), expect.DEFAULT_FAIL_ON, clean, 10)
    assert not v.ok and v.interrupted and v.why == "m: interrupted after 3 of 10 runs, not judged (no findings in 3 runs)"
    assert expect.judge("m", ("unsafe",), (), clean, 10).interrupted
    v = expect.judge("m", ("safe",), (), bad, 10)
    assert not v.ok and not v.interrupted and v.seed == 3
    assert expect.judge("m", (), expect.DEFAULT_FAIL_ON, clean, 3).ok
    assert expect.judge("m", (), expect.DEFAULT_FAIL_ON, [], 3).why.startswith("m: not run")
