"""The lpemu command as CI and people use it: exit status, --fail-on,
[expect], --junit, help, tables at 80 columns and in a pipe, progress,
--json purity."""
import json
import os
import pty
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from emu import __version__
from emu.app import cli
from emu.app.progress import Progress
from emu.app.tables import format_table
from emu.runs import expect

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "emu" / "seed"
SEED_SCENARIO = (SEED / "scenario.toml").read_text()


def lpemu(*argv, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu", *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)


def seed_scenario(tmp_path, name="s.toml", *, expect_table: str = "", models=None) -> Path:
    """The seed scenario beside copies of its sources, with an [expect] table."""
    for src in ("base.c", "patch.c", "patch_foo.c"):
        (tmp_path / src).write_text((SEED / src).read_text())
    text = SEED_SCENARIO
    if models is not None:
        text = text.replace('models = ["immediate", "stop_machine", "kgraft", "livepatch"]',
                            f"models = {json.dumps(models)}")
    path = tmp_path / name
    path.write_text(text + ("\n[expect]\n" + expect_table if expect_table else ""))
    return path


# ---- exit status ------------------------------------------------------------------------------
def test_fuzz_exits_1_on_an_unsafe_scenario_and_0_on_a_safe_one(tmp_path):
    unsafe = lpemu("fuzz", seed_scenario(tmp_path, models=["livepatch"]), "--runs", 6, "--jobs", 1)
    assert unsafe.returncode == 1, unsafe.stderr
    assert "FAIL livepatch:" in unsafe.stdout and "replay: lpemu replay" in unsafe.stdout
    safe = lpemu("fuzz", seed_scenario(tmp_path, "k.toml", models=["kgraft"]), "--runs", 6, "--jobs", 1)
    assert safe.returncode == 0, safe.stderr
    assert "ok   kgraft: no findings in 6 runs" in safe.stdout
    # --fail-on none: findings are reported, nothing fails
    none = lpemu("fuzz", seed_scenario(tmp_path, models=["livepatch"]), "--runs", 3, "--jobs", 1, "--fail-on", "none")
    assert none.returncode == 0


def test_expect_decides_per_model_and_names_the_surprise(tmp_path, capsys):
    path = seed_scenario(tmp_path, expect_table='livepatch = "unsafe"\nkgraft = ["safe", "completes"]\n'
                                                'stop_machine = "safe"\n',
                         models=["stop_machine", "kgraft", "livepatch"])
    rc = cli.main(["fuzz", str(path), "--runs", "6", "--jobs", "1", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["ok"] is False
    verdicts = {v["model"]: v for v in out["verdicts"]}
    assert verdicts["livepatch"]["ok"] and verdicts["kgraft"]["ok"]
    sm = verdicts["stop_machine"]
    assert not sm["ok"] and sm["expected"] == ["safe"] and sm["first_failing_seed"] == 0
    assert sm["why"].startswith("stop_machine: expected safe, but 5 of 6 runs were not (first: seed 0: inconsistent")
    # the same campaign with stop_machine's expectation right passes
    path.write_text(path.read_text().replace('stop_machine = "safe"', 'stop_machine = "unsafe"'))
    assert cli.main(["fuzz", str(path), "--runs", "6", "--jobs", "1", "--json", "--quiet"]) == 0
    capsys.readouterr()


def test_an_expectation_no_run_showed_is_a_surprise_without_a_seed():
    records = [{"seed": s, "outcome": "completed", "inconsistent": False, "violation_count": 0} for s in range(4)]
    v = expect.judge("kgraft", ("unsafe",), expect.DEFAULT_FAIL_ON, records)
    assert not v.ok and v.seed is None and v.why == "kgraft: expected unsafe, but none of 4 runs was unsafe"
    assert expect.judge("kgraft", ("safe", "completes"), (), records).ok
    stalled = records + [{"seed": 9, "outcome": "stalled", "inconsistent": False, "violation_count": 0}]
    v = expect.judge("kgraft", ("safe", "completes"), (), stalled)
    assert not v.ok and v.seed == 9 and "expected completes" in v.why
    assert expect.judge("kgraft", ("stalls",), (), stalled).ok
    # without expectations, fail_on decides; stalls are not in the default
    assert expect.judge("kgraft", (), expect.DEFAULT_FAIL_ON, stalled).ok
    assert not expect.judge("kgraft", (), expect.parse_fail_on("stalled"), stalled).ok


def test_findings_of_a_record_and_fail_on_words():
    rec = {"seed": 1, "inconsistent": True, "violation_count": 2, "handovers": [{"x": 1}], "outcome": "fault"}
    assert expect.findings(rec) == ["inconsistent", "assertion", "handover", "fault"]
    assert expect.failing(rec, ("fault", "stalled")) == ["fault"]
    assert expect.parse_fail_on("all") == tuple(expect.FINDINGS)
    assert expect.parse_fail_on("none") == ()
    assert expect.parse_fail_on("stalled, inconsistent") == ("inconsistent", "stalled")
    with pytest.raises(ValueError, match="unknown finding kind 'bogus'"):
        expect.parse_fail_on("inconsistent,bogus")


def test_run_exit_status_follows_fail_on(capsys):
    scenario = str(SEED / "scenario.toml")
    base = ["run", scenario, "--model", "livepatch", "--at", "20633", "--json"]
    assert cli.main(base) == 1
    out = json.loads(capsys.readouterr().out)
    # the seed's bug: a mixed unit, the failed assertion, and bar v0's value handed to baz v1
    kinds = ["inconsistent", "assertion", "handover"]
    assert out["findings"] == kinds and out["failing"] == kinds
    assert cli.main(base + ["--fail-on", "stalled,fault"]) == 0
    capsys.readouterr()
    assert cli.main(base + ["--fail-on", "nonsense"]) == 2
    assert "--fail-on: unknown finding kind 'nonsense'" in capsys.readouterr().err
    assert cli.main(["run", scenario, "--model", "kgraft", "--at", "20633", "--json"]) == 0
    capsys.readouterr()


def test_sched_seed_seeds_the_runs_schedule_or_is_refused(capsys):
    """--sched-seed is the seed of the run's random or PCT schedule, whether
    --schedule or the run seed chose it; under round robin it would change
    nothing, so it is an input error, not silently dropped."""
    base = ["run", str(SEED / "scenario.toml"), "--model", "livepatch", "--strategy", "random", "--seed", "1",
            "--json"]

    def spec(*extra):
        assert cli.main(base + list(extra)) in (0, 1)
        out = json.loads(capsys.readouterr().out)
        return out["spec"], out["trace_hash"], out["command"]

    own, _, _ = spec()
    assert own["schedule"] == "random"
    for value in (own["sched_seed"] + 1, own["sched_seed"] + 2):
        alone, hashed, command = spec("--sched-seed", str(value))
        assert alone["schedule"] == "random" and alone["sched_seed"] == value
        assert f"--sched-seed {value}" in command
        # the same run as with the schedule named too
        assert spec("--schedule", "random", "--sched-seed", str(value))[:2] == (alone, hashed)
    assert cli.main(["run", str(SEED / "scenario.toml"), "--model", "livepatch", "--sched-seed", "5"]) == 2
    assert "--sched-seed 5: the run's schedule is rr" in capsys.readouterr().err


@pytest.mark.parametrize("argv, status", [
    (["run", "--model", "kgraft", "--at", "20633"], 0),
    (["run", "--model", "livepatch", "--at", "20633"], 1),
    (["run", "--model", "livepatch", "--at", "20633", "--json"], 1),
    (["fuzz", "--model", "kgraft", "--runs", "4", "--jobs", "1", "--quiet"], 0),
    (["fuzz", "--model", "livepatch", "--runs", "4", "--jobs", "1", "--quiet"], 1),
])
def test_a_reader_that_leaves_early_does_not_change_the_exit_status(argv, status):
    """`lpemu fuzz s.toml | head -1` under `set -o pipefail` fails on a
    finding and passes without one: the output is cut, the verdict is not
    (a closed pipe made `fuzz` exit 0 and `run` exit 1, whatever they found)."""
    p = subprocess.Popen([sys.executable, "-m", "emu", argv[0], str(SEED / "scenario.toml"), *argv[1:]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()                          # the reader is gone before the first line
    err = p.stderr.read()
    assert p.wait(timeout=600) == status, err
    assert "Traceback" not in err and "Broken pipe" not in err and "Exception ignored" not in err, err


def test_bad_scenario_and_usage_errors_exit_2(tmp_path):
    bad = seed_scenario(tmp_path, expect_table='livepatch = "fast"\n')
    r = lpemu("fuzz", bad, "--runs", 2)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert re.search(r"s\.toml:\d+: expect\.livepatch: unknown expectation 'fast'", r.stderr)
    assert lpemu("fuzz").returncode == 2                          # argparse: missing scenario
    assert lpemu("run", SEED / "scenario.toml", "--model", "nope").returncode == 2


# ---- JUnit ----------------------------------------------------------------------------------------
def test_junit_may_go_into_the_out_directory_the_campaign_makes(tmp_path):
    """--junit DIR/FILE with --out DIR not made yet: the campaign makes DIR,
    then writes the report there; a directory nothing makes is still refused."""
    path = seed_scenario(tmp_path, models=["kgraft"])
    out = tmp_path / "new"
    r = lpemu("fuzz", path, "--runs", 2, "--jobs", 1, "--out", out, "--junit", out / "junit.xml")
    assert r.returncode in (0, 1), r.stderr
    assert ET.parse(out / "junit.xml").getroot().tag == "testsuites" and (out / "runs.jsonl").exists()
    r = lpemu("fuzz", path, "--runs", 2, "--jobs", 1, "--out", tmp_path / "other", "--junit", tmp_path / "no" / "j.xml")
    assert r.returncode == 2 and "--junit" in r.stderr and "no such directory" in r.stderr
    assert not (tmp_path / "other").exists()
    r = lpemu("fuzz", path, "--runs", 2, "--jobs", 1, "--out", tmp_path / "third", "--junit", tmp_path / "third")
    assert r.returncode == 2 and "is the --out directory" in r.stderr and not (tmp_path / "third").exists()


def test_junit_has_one_testcase_per_model_and_replays_failures(tmp_path):
    path = seed_scenario(tmp_path, expect_table='kgraft = "safe"\nlivepatch = "safe"\n',
                         models=["kgraft", "livepatch"])
    report = tmp_path / "out" / "junit.xml"
    report.parent.mkdir()
    r = lpemu("fuzz", path, "--runs", 5, "--jobs", 1, "--junit", report)
    assert r.returncode == 1, r.stderr
    root = ET.parse(report).getroot()
    # the JUnit schema's required structure: testsuites > testsuite(name, tests, failures, errors)
    # > testcase(name, classname) > failure(message, type)
    assert root.tag == "testsuites"
    (suite,) = root
    assert suite.tag == "testsuite" and suite.get("name") == "s"
    for attr in ("tests", "failures", "errors", "skipped", "time"):
        assert suite.get(attr) is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    cases = {c.get("name"): c for c in suite}
    assert set(cases) == {"kgraft", "livepatch"}
    for c in cases.values():
        assert c.tag == "testcase" and c.get("classname") == "s" and float(c.get("time")) >= 0
        assert all(child.tag in ("failure", "error", "skipped", "system-out", "system-err") for child in c)
    assert cases["kgraft"].find("failure") is None
    failure = cases["livepatch"].find("failure")
    assert failure.get("type") == "surprise" and failure.get("message").startswith("livepatch: expected safe")
    text = failure.text
    assert "first failing seed: 0" in text and "summary: seed 0: inconsistent, assertion" in text
    assert f"replay: lpemu replay {path} --model livepatch --seed 0 --strategy exhaustive --shrink" in text
    # the replay command it prints reproduces the failure
    replay = lpemu(*text.split("replay: lpemu ")[1].split(), "--budget", 5, "--json")
    assert replay.returncode == 1 and json.loads(replay.stdout)["inconsistent"]


# ---- the command line ---------------------------------------------------------------------------
def test_version_and_help():
    r = lpemu("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"lpemu {__version__}"
    bare = lpemu()
    assert bare.returncode == 0 and bare.stdout.startswith("usage: lpemu") and "fuzz" in bare.stdout
    assert "exit status: 0 no finding, 1 findings" in bare.stdout


@pytest.mark.parametrize("command,findings", [("run", True), ("replay", True), ("fuzz", True), ("demo", True),
                                              ("first-failure", False), ("diff", False), ("bench", False)])
def test_each_commands_help_names_the_exit_statuses_it_can_return(command, findings):
    text = cli.build_parser()._subparsers._group_actions[0].choices[command].epilog
    assert ("1 findings" in text) == findings, text
    assert "2 usage or input error" in text and "128 + the signal when interrupted (130 Ctrl-C, 143 SIGTERM" in text


def test_every_subcommand_and_option_has_help_and_each_command_an_example():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) == {"demo", "run", "replay", "fuzz", "first-failure", "bench", "diff"}
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, command in sub.choices.items():
        assert helps[name], name
        assert "example" in (command.epilog or "") and "lpemu " + name in command.epilog, name
        for action in command._actions:
            assert action.help, (name, action.dest)


def _tty_output(*argv, columns=80) -> str:
    """stdout of lpemu on a terminal COLUMNS wide."""
    main, other = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    proc = subprocess.Popen([sys.executable, "-m", "emu", *map(str, argv)], stdout=other,
                            stderr=subprocess.DEVNULL, env=env)
    os.close(other)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=600)
    os.close(main)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def _numbers(summary: dict) -> list[str]:
    """Every number of a fuzz summary, as the table prints it."""
    out = []
    for s in summary["models"]:
        for key in ("runs", "inconsistent", "bad_values", "completed", "failed", "stalled", "latency_median",
                    "latency_max", "pause_median", "pause_max", "first_failing_seed"):
            v = s[key]
            if v is not None:
                out.append(str(int(v)) if float(v).is_integer() else str(v))
    return out


def test_fuzz_table_keeps_every_number_at_80_columns_and_in_a_pipe(capsys):
    argv = ["fuzz", SEED / "scenario.toml", "--runs", "12", "--jobs", "1", "--strategy", "random"]
    assert cli.main([str(a) for a in argv] + ["--json", "--quiet"]) == 1
    numbers = _numbers(json.loads(capsys.readouterr().out))
    text = _tty_output(*argv, columns=80)
    table = text.split("times in virtual")[0]
    assert all(len(line) <= 80 for line in text.splitlines() if not line.startswith(("FAIL", "ok", "     replay")))
    cells = re.findall(r"[\d.]+", "\n".join(line for line in table.splitlines()[1:]))
    for n in numbers:
        assert n in cells, n                         # no number cut or dropped
    piped = lpemu(*argv)
    lines = piped.stdout.splitlines()
    header = lines[1]
    assert header.split("  ")[0] == "model" and "first failing seed" in header   # one header line, whole
    assert set(lines[2]) <= {"-", " "}
    assert all(line == line.rstrip() for line in lines)                          # no padding
    assert max(len(line) for line in lines[:8]) > 80                             # not fitted to any width


def test_tables_wrap_headers_then_shorten_names_then_split_never_cut_numbers():
    heads = ["model", "runs", "inconsistent", "latency median", "latency max", "first failing seed"]
    rows = [["a-very-long-model-name", "123456", "7", "1234567.5", "99999999", "-"], ["kgraft", "1", "0", "-", "5", "12"]]
    natural = format_table(heads, rows)
    assert "\n" not in natural.split("\n")[0] and natural.splitlines()[0].startswith("model")
    for width in (80, 60, 40, 30, 24):
        text = format_table(heads, rows, width=width)
        assert all(len(line) <= width for line in text.splitlines()), (width, text)
        for cell in ("123456", "1234567.5", "99999999", "12"):
            assert re.search(rf"(?<![\d.]){re.escape(cell)}(?![\d.])", text), (width, cell)
    split = format_table(heads, rows, width=40)
    assert "a-very-long-model-name" in split and split.count("\n\n") >= 1      # split, names whole
    narrow = format_table(heads, rows, width=24)
    assert "~" in narrow and "a-very-long-model-name" not in narrow               # shortened only when needed


def test_json_prints_nothing_but_json_on_stdout(tmp_path):
    for argv in (["fuzz", SEED / "scenario.toml", "--runs", 3, "--jobs", 1],
                 ["run", SEED / "scenario.toml", "--model", "kgraft"],
                 ["demo", "--runs", 1]):
        r = lpemu(*argv, "--json")
        json.loads(r.stdout)                       # one object and nothing else
        assert r.stdout.count("\n") == 1


def test_progress_line_and_per_model_eta():
    class Clock:
        t = 0.0

        def __call__(self):
            return self.t

    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

        def isatty(self):
            return False

    clock, sink = Clock(), Sink()
    p = Progress("fuzzing", {"fast": 10, "slow": 10}, stream=sink, clock=clock, every=0)
    for _ in range(5):
        clock.t += 0.1
        p.advance("fast", 1, 1)
    for _ in range(2):
        clock.t += 1.0
        p.advance("slow", 1, 0)
    # left: 5 fast at 0.1 s and 8 slow at 1 s each
    assert p.eta() == pytest.approx(5 * 0.1 + 8 * 1.0)
    assert p.line() == "fuzzing: 7/20 runs, 2.8 runs/s, 5 with findings, ETA 0:08"
    assert sink.text.splitlines()[-1] == p.line()


def test_run_keeps_the_blockers_of_every_attempt_after_completion(capsys):
    """kpatch's first try finds user0 asleep inside foo; a retry 2 s apart
    completes, and every failed try's blocker stays in the record."""
    argv = ["run", str(SEED / "scenario-foo.toml"), "--model", "stop_machine", "--seed", "2",
            "--strategy", "exhaustive"]
    assert cli.main(argv + ["--json"]) == 0
    (t,) = json.loads(capsys.readouterr().out)["transitions"]
    assert t["result"] == "completed" and t["attempts"] > 1 and t["blockers"] == []
    assert [a["attempt"] for a in t["attempt_log"]] == list(range(1, t["attempts"]))
    attempt = t["attempt_log"][0]
    assert attempt["attempt"] == 1 and attempt["clock"] < t["completed_at"]
    (blocker,) = attempt["blockers"]
    assert blocker["task"] == "user0" and any(line.startswith("foo+") for line in blocker["stack"])
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"seed_patch_foo: attempt 1 at t={attempt['clock']} blocked by user0" in out


_words = st.text(alphabet="abcdefghij_-", min_size=1, max_size=14)


@settings(max_examples=150, deadline=None)
@given(heads=st.lists(st.lists(_words, min_size=1, max_size=3).map(" ".join), min_size=2, max_size=9),
       data=st.data(), width=st.integers(min_value=24, max_value=120))
def test_any_table_fits_and_keeps_every_number(heads, data, width):
    n = len(heads)
    number = st.one_of(st.integers(-10**9, 10**12).map(str), st.floats(0, 1e6, allow_nan=False).map(
        lambda f: f"{f:.1f}"), st.just("-"))
    rows = data.draw(st.lists(st.tuples(_words, *[number] * (n - 1)).map(list), min_size=1, max_size=6))
    text = format_table(heads, rows, width=width)
    # fits whenever the widest number and a shortened name fit side by side
    widest = max(max(len(w) for w in h.split()) for h in heads[1:])
    widest = max([widest] + [len(c) for r in rows for c in r[1:]])
    if widest + 2 + max(8, max(len(w) for w in heads[0].split())) <= width:
        assert all(len(line) <= width for line in text.splitlines())
    cells = text.split()
    for r in rows:
        for c in r[1:]:
            assert c in cells                     # every number whole, as its own cell
    piped = format_table(heads, rows)
    assert len(piped.splitlines()) == len(rows) + 2 and all(l == l.rstrip() for l in piped.splitlines())


_record = st.fixed_dictionaries({
    "inconsistent": st.booleans(), "violation_count": st.integers(0, 3),
    "handovers": st.lists(st.just({"value": 7}), max_size=1),
    "outcome": st.sampled_from(["completed", "failed", "stalled", "fault", "error", "crash", "idle"])})


@given(st.lists(_record, max_size=8), st.lists(st.sampled_from(list(expect.EXPECTATIONS)), min_size=1, max_size=3,
                                               unique=True))
def test_expectations_hold_exactly_as_defined(records, words):
    records = [r | {"seed": i} for i, r in enumerate(records)]
    unsafe = [r["inconsistent"] or r["violation_count"] > 0 or bool(r["handovers"]) for r in records]
    outcome = [r["outcome"] for r in records]
    holds = {
        "safe": not any(unsafe),
        "unsafe": any(unsafe),
        "completes": not any(o in ("failed", "error", "stalled", "fault", "crash") for o in outcome),
        "stalls": "stalled" in outcome,
        "fails": any(o in ("failed", "error") for o in outcome),
        "faults": any(o in ("fault", "crash") for o in outcome),
    }
    verdict = expect.judge("livepatch", tuple(words), (), records)
    assert verdict.ok == all(holds[w] for w in words)
    if not verdict.ok and verdict.seed is not None:       # the seed named is a run that breaks it
        broken = next(w for w in words if not holds[w])
        assert broken in ("safe", "completes")
        r = records[verdict.seed]
        assert (unsafe[verdict.seed] if broken == "safe" else r["outcome"] != "completed")


def test_demo_exits_1_when_a_model_answers_the_seed_question_unexpectedly(capsys, monkeypatch):
    from emu.app import demo
    assert cli.main(["demo", "--runs", "4", "--quiet"]) == 0
    assert "every model answered the seed question as expected" in capsys.readouterr().out
    wrong = {variant: dict(models) for variant, models in demo.EXPECTED.items()}
    wrong["bar+baz"]["livepatch"] = ("safe",)          # the seed's bug: livepatch is not safe without foo
    monkeypatch.setattr(demo, "EXPECTED", wrong)
    assert cli.main(["demo", "--runs", "4", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAIL bar+baz: livepatch: expected safe, but 4 of 4 runs were not (first: seed 0: inconsistent" in out


def test_run_lists_what_became_of_each_module():
    """lpemu run says when each module came, went live, went and was gone
    (EV_MODULE), and which insmod or rmmod did it; in --json too. A run
    with no module says nothing of modules."""
    path = ROOT / "examples" / "modules" / "scenario.toml"
    r = lpemu("run", path, "--model", "livepatch")
    assert r.returncode == 0, r.stderr
    section = r.stdout.split("\nmodules\n")[1].split("\n\n")[0].splitlines()
    assert [line.split("] ")[1].split(" (")[0] for line in section] == \
        ["codec: coming", "codec: live", "codec: going", "codec: gone"]
    assert "(insmod-codec)" in section[1] and "(rmmod-codec)" in section[2]
    moments = json.loads(lpemu("run", path, "--model", "livepatch", "--json").stdout)["modules"]
    assert [(mo["module"], mo["became"]) for mo in moments] == [("codec", k) for k in ("coming", "live", "going", "gone")]
    assert [mo["time"] for mo in moments] == sorted(mo["time"] for mo in moments)
    plain = lpemu("run", ROOT / "examples" / "seed" / "scenario.toml", "--model", "livepatch")
    assert "\nmodules\n" not in plain.stdout
    assert json.loads(lpemu("run", ROOT / "examples" / "seed" / "scenario.toml", "--model", "livepatch",
                            "--json").stdout)["modules"] == []
