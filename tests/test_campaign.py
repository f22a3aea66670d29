"""Campaigns lose nothing: a killed campaign resumes to the same summary; a
worker that dies is reported with its seed and the campaign goes on."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from emu.runs import campaign
from emu.runs import scenario

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed" / "scenario.toml"


def lpemu(*argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "emu", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_a_campaign_killed_midway_resumes_to_the_same_summary(tmp_path):
    args = ["fuzz", SEED, "--model", "stop_machine", "--model", "livepatch", "--runs", "150", "--jobs", "2",
            "--strategy", "random", "--json"]
    full = lpemu(*args, "--out", tmp_path / "full")
    out, err = full.communicate(timeout=300)
    assert full.returncode == 1, err      # stop_machine and livepatch have findings
    expected = json.loads(out)

    part = tmp_path / "part"
    p = lpemu(*args, "--out", part)
    runs = part / "runs.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not runs.exists() or len(runs.read_text().splitlines()) < 40):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    kept = runs.read_text().splitlines()
    assert 0 < len(kept) < 300, "the campaign should have been cut midway"
    assert json.loads(out)["interrupted"] is True

    again = lpemu(*args, "--out", part, "--resume")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 1, err
    resumed = json.loads(out)
    for key in ("out", "interrupted"):
        resumed.pop(key), expected.pop(key, None)
    assert resumed == expected
    lines = [json.loads(x) for x in runs.read_text().splitlines()]
    assert sorted((r["model"], r["seed"]) for r in lines) == \
        sorted((m, s) for m in ("stop_machine", "livepatch") for s in range(150))


def test_a_worker_that_dies_is_reported_with_its_seed(tmp_path, monkeypatch):
    prog = scenario.build(scenario.load(SEED))
    real = campaign.run_record

    def deadly(runner, strategy, model, seed):
        if seed == 5:
            os._exit(9)                 # the worker dies as if killed
        return real(runner, strategy, model, seed)

    monkeypatch.setattr(campaign, "run_record", deadly)
    plan = campaign.Plan(str(SEED), ["kgraft"], list(range(12)), "random")
    camp = campaign.Campaign(prog, plan, jobs=2, out=tmp_path / "c", batch=4)
    camp.run()
    camp.close()
    assert [c["seed"] for c in camp.crashes] == [5]
    summary = camp.summary()
    assert summary["models"][0]["runs"] == 12 and summary["models"][0]["crash"] == 1
    recs = campaign.read_records(tmp_path / "c" / "runs.jsonl")
    assert recs[("kgraft", 5)]["outcome"] == "crash" and "seed 5" in recs[("kgraft", 5)]["error"]
    assert all(recs[("kgraft", s)]["outcome"] == "completed" for s in range(12) if s != 5)
