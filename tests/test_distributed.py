"""Campaigns on Dask distributed: a real scheduler and worker processes on
loopback give the local summary for the same seeds, and a worker killed
mid-campaign loses nothing."""
import faulthandler
import logging
import json
import os
import signal
import sys
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from emu.runs import campaign
from emu.app import cli
from emu.runs import scenario  # noqa: E402

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed" / "scenario.toml"
MODELS = ["stop_machine", "livepatch"]


@pytest.fixture(scope="module", autouse=True)
def watchdog():
    """No hang: dump the stacks and exit if the module takes too long."""
    faulthandler.dump_traceback_later(180, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1", silence_logs=logging.ERROR, timeout="60s") as c:
        yield c


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster, timeout="30s") as c:
        c.wait_for_workers(2, timeout=60)
        yield c


@pytest.fixture(scope="module")
def program():
    return scenario.build(scenario.load(SEED))


def plan(n):
    return campaign.Plan(str(SEED), MODELS, list(range(n)), "random")


def local_summary(program, p):
    camp = campaign.Campaign(program, p, jobs=1)
    camp.run()
    return camp.summary()


def lines(path):
    return [json.loads(x) for x in (path / campaign.RUNS_FILE).read_text().splitlines()]


def test_a_distributed_campaign_gives_the_local_summary(tmp_path, program, client, cluster):
    p = plan(20)
    camp = campaign.Campaign(program, p, out=tmp_path / "d", batch=3)
    done = []
    camp.run(progress=done.append, client=client)
    camp.close()
    assert camp.summary() == local_summary(program, p)
    assert sum(done) == 40
    recs = lines(tmp_path / "d")
    assert sorted((r["model"], r["seed"]) for r in recs) == sorted(p.runs())

    # the CLI, by scheduler address; then --resume of a local campaign cut short, on the cluster
    argv = ["fuzz", str(SEED), *sum((["--model", m] for m in MODELS), []), "--runs", "20",
            "--strategy", "random", "--json"]
    # exit 1: the seed patch has findings under some models
    assert cli.main([*argv, "--scheduler", cluster.scheduler_address, "--out", str(tmp_path / "cli")]) == 1
    part = tmp_path / "part"
    assert cli.main([*argv, "--jobs", "1", "--runs", "20", "--out", str(part)]) == 1
    kept = (part / campaign.RUNS_FILE).read_text().splitlines()[:13]
    (part / campaign.RUNS_FILE).write_text("\n".join(kept) + "\n")
    assert cli.main([*argv, "--scheduler", cluster.scheduler_address, "--out", str(part), "--resume"]) == 1
    assert sorted((r["model"], r["seed"]) for r in lines(part)) == sorted(p.runs())
    sums = [json.loads((d / campaign.SUMMARY_FILE).read_text()) for d in (tmp_path / "cli", part)]
    for s in sums + [ref := camp.summary()]:
        s.pop("scenario")       # the CLI resolves the path (examples/seed links to emu/seed)
    assert sums[0] == sums[1] == ref


def test_killing_a_worker_mid_campaign_loses_nothing(tmp_path, program, client):
    p = plan(40)
    pids = client.run(os.getpid)
    killed = []

    def progress(n):
        if not killed:           # after the first batch: kill a worker that is running one
            busy = [w for w, keys in client.processing().items() if keys] or list(pids)
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])

    camp = campaign.Campaign(program, p, out=tmp_path / "k", batch=2)
    camp.run(progress=progress, client=client)
    camp.close()
    assert killed
    recs = lines(tmp_path / "k")
    assert len(recs) == 80
    assert sorted((r["model"], r["seed"]) for r in recs) == sorted(p.runs())     # each exactly once
    assert not camp.crashes and all(r["outcome"] != "crash" for r in recs)
    assert camp.summary() == local_summary(program, p)


def test_losing_every_worker_that_held_the_program_loses_nothing(tmp_path, program, client):
    """Scattered data is not recomputed: with both workers killed, the
    program is gone from the cluster and the batches that need it are
    cancelled; it is scattered again and they run again."""
    p = plan(30)
    pids = client.run(os.getpid)
    killed = []

    def progress(n):
        if not killed:           # after the first batch: every worker at once
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            killed.append(True)

    camp = campaign.Campaign(program, p, out=tmp_path / "all", batch=2)
    camp.run(progress=progress, client=client)
    camp.close()
    assert killed
    recs = lines(tmp_path / "all")
    assert sorted((r["model"], r["seed"]) for r in recs) == sorted(p.runs())     # each exactly once
    assert not camp.crashes and all(r["outcome"] != "crash" for r in recs)
    assert camp.summary() == local_summary(program, p)


def test_scheduler_without_dask_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)          # import distributed -> ImportError
    assert cli.main(["fuzz", str(SEED), "--runs", "2", "--scheduler", "tcp://127.0.0.1:1",
                     "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'livepatch-emu[dask]'" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
