"""Campaigns lose nothing: a killed campaign resumes to the same summary; a
worker that dies is reported with its seed and the campaign goes on."""
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emu.app import cli
from emu.kernel import versions
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
    assert json.loads(out)["interrupted"] is True and p.returncode == 128 + signal.SIGTERM, err

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
    frozen = gc.get_freeze_count()
    camp.run()
    camp.close()
    assert gc.get_freeze_count() == frozen      # what the pool froze (its records) is collectable again
    assert [c["seed"] for c in camp.crashes] == [5]
    summary = camp.summary()
    assert summary["models"][0]["runs"] == 12 and summary["models"][0]["crash"] == 1
    recs = campaign.read_records(tmp_path / "c" / "runs.jsonl")
    assert recs[("kgraft", 5)]["outcome"] == "crash" and "seed 5" in recs[("kgraft", 5)]["error"]
    assert all(recs[("kgraft", s)]["outcome"] == "completed" for s in range(12) if s != 5)


# ---- a run that ends badly does not end the campaign ------------------------------------------
STALL_BASE = """\
#include "lpemu.h"
volatile long sink;
__attribute__((noinline)) long work(long n) { return n + 1; }
__attribute__((noinline)) void spin(long n) { for (long i = 0; i < n; i++) sink += i; }
void user_entry(long a) { sink += work(a); lpemu_sleep(1); }
void hog_entry(long n) { for (;;) spin(n); }
"""
STALL_PATCH = '#include "lpemu.h"\n__attribute__((noinline)) long work(long n) { return n + 2; }\n'
STALL = """\
[program]
sources = ["base.c"]
[machine]
cpus = 2
preempt = "none"
[[task]]
name = "user"
entry = "user_entry"
[[task]]
name = "hog"
entry = "hog_entry"
args = [1000000000]
kind = "kthread"
cpu = 1
[[patch]]
name = "p"
sources = ["patch.c"]
functions = ["work"]
[[action]]
at = 20000
do = "enable"
patch = "p"
[fuzz]
models = ["stop_machine"]
horizon = 3
window = 1000
strategy = "exhaustive"
"""


def stall_program(d: Path):
    """A kthread spins without a scheduling point under preempt=none, so
    stop_machine never gets its CPU: every run ends with stop_machine still
    waiting (stalled), before the soft-lockup detector would fire."""
    d.mkdir(exist_ok=True)
    (d / "base.c").write_text(STALL_BASE)
    (d / "patch.c").write_text(STALL_PATCH)
    (d / "s.toml").write_text(STALL)
    return scenario.build(scenario.load(d / "s.toml"))


def test_a_run_left_mid_stop_machine_does_not_poison_the_pool(tmp_path):
    from emu.runs.fuzz import Runner
    prog = stall_program(tmp_path / "stall")
    pooled = Runner(prog)
    results = [pooled.execute(pooled.plan("stop_machine", s)) for s in range(4)]
    assert [r.outcome for r in results] == ["stalled"] * 4
    for seed in (1, 3):                     # a dropped machine built anew gives the same run
        with Runner(prog) as fresh:
            assert fresh.execute(fresh.plan("stop_machine", seed)).trace_hash == results[seed].trace_hash
    pooled.close()


def test_a_campaign_of_stalled_runs_finishes(tmp_path):
    prog = stall_program(tmp_path / "stall")
    plan = campaign.Plan(str(tmp_path / "stall" / "s.toml"), ["stop_machine"], range(6), "exhaustive")
    camp = campaign.Campaign(prog, plan, jobs=1, out=tmp_path / "c")
    camp.run()
    camp.close()
    assert camp.summary()["models"][0]["stalled"] == 6


# ---- nothing lost, nothing twice ---------------------------------------------------------------
SMALL = dict(models=["kgraft"], runs=6)


def small_campaign(out: Path, *extra):
    return cli.main(["fuzz", str(SEED), "--model", "kgraft", "--runs", "6", "--jobs", "1", "--json",
                     "--out", str(out), *map(str, extra)])


def summary_of(capsys) -> dict:
    out = json.loads(capsys.readouterr().out)
    out.pop("out", None)
    return out


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_bytes().decode().splitlines()]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The summary and the records of the small campaign run without trouble."""
    out = tmp_path_factory.mktemp("clean") / "c"
    assert small_campaign(out) == 0
    return out


def altered(line: bytes, **fields) -> bytes:
    """line, a record, with fields replaced (a hostile or damaged record of the right kind)."""
    return (json.dumps(json.loads(line) | fields) + "\n").encode()


DAMAGE = {
    # name: (how the file is damaged, how many lines must be set aside)
    "torn last line": (lambda lines: lines[:-1] + [lines[-1][:len(lines[-1]) // 2].rstrip(b"\n")], 1),
    "not UTF-8 in the middle": (lambda lines: lines[:2] + [b"\xff\xfe{\"model\": \x80}\n"] + lines[2:], 1),
    "absurdly nested in the middle": (lambda lines: lines[:3] + [b"[" * 100_000 + b"]" * 100_000 + b"\n"] + lines[3:], 1),
    "a record cut in the middle": (lambda lines: lines[:1] + [lines[1][:40] + b"\n"] + lines[2:], 1),
    "JSON that is not a record": (lambda lines: [b'{"model": "kgraft", "seed": "3"}\n', b"[1, 2]\n"] + lines, 2),
    "records whose fields have the wrong types":
        (lambda lines: lines[:1] + [altered(lines[1], latency="x"), altered(lines[2], met={"user0": {"b": 1}}),
                                    altered(lines[3], promise_breaches=1, promise=[]),
                                    altered(lines[4], inconsistencies=[{"task": "user0"}])] + lines[5:], 4),
    # counts and times that no run has: a latency of true (1), a negative count, summed
    # and taken the median of
    "records whose counts and times are no counts":
        (lambda lines: lines[:1] + [altered(lines[1], latency=True), altered(lines[2], pause=-1),
                                    altered(lines[3], violation_count=-1), altered(lines[4], units=False)]
         + lines[5:], 4),
    # an outcome no run has (a hand edit, another version's word): counted under no
    # outcome, it would pass as a run without findings
    "records with outcomes no run has":
        (lambda lines: lines[:1] + [altered(lines[1], outcome="maybe"), altered(lines[2], outcome="Completed")]
         + lines[3:], 2),
    "a record twice": (lambda lines: lines + lines[2:3], 0),
    # another strategy's run of seed 2, appended: it would take the place of this campaign's
    "a failed run of another strategy after its seed's record":
        (lambda lines: lines + [altered(lines[2], strategy="pct", outcome="failed", inconsistent=True)], 1),
    "an endless line": (lambda lines: lines[:2] + [b"x" * (3 << 20) + b"\n"] + lines[2:], 1),
    "everything at once": (lambda lines: [b"\x00\x01\n"] + lines[:2] + lines[1:2] + [b"{" * 5000 + b"\n"]
                           + lines[3:-1] + [lines[-1][:10]], 3),
}


@pytest.mark.parametrize("name", DAMAGE)
def test_resume_repairs_a_damaged_runs_file(tmp_path, capsys, clean, name):
    damage, rejected = DAMAGE[name]
    expected = json.loads((clean / "summary.json").read_text())
    part = tmp_path / "c"
    shutil.copytree(clean, part)
    (part / "summary.json").unlink()
    lines = (part / "runs.jsonl").read_bytes().splitlines(keepends=True)
    (part / "runs.jsonl").write_bytes(b"".join(damage(lines)))

    assert small_campaign(part, "--resume") == 0
    err = capsys.readouterr()
    assert "Traceback" not in err.err
    assert json.loads(err.out)["models"] == expected["models"]
    assert json.loads((part / "summary.json").read_text()) == expected
    recs = lines_of(part / "runs.jsonl")           # every line whole, every run once
    assert sorted(r["seed"] for r in recs) == list(range(6))
    if rejected:
        assert "set aside" in err.err and "run again" in err.err and "Traceback" not in err.err
        text = (part / "rejected.txt").read_bytes()
        assert text.startswith(b"# ") and b"could not read" in text
        assert text.count(b"\n# line ") + text.startswith(b"# line ") == rejected
    else:
        assert "written twice" in err.err and not (part / "rejected.txt").exists()


def test_a_full_disk_loses_no_record_and_says_so(tmp_path, clean):
    """A file-size limit makes the writes of runs.jsonl fail midway, as a full
    disk does: one message, exit 2, only whole lines kept; --resume finishes."""
    out = tmp_path / "c"
    limit = len((clean / "runs.jsonl").read_bytes()) // 2

    # the limit is set once the program is built (gcc's own files stay below no limit)
    driver = ("import resource, signal, sys\n"
              "from emu.app import cli\nfrom emu.runs import scenario\n"
              "build = scenario.build\n"
              "def limited(scn):\n"
              "    prog = build(scn)\n"
              "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of the signal\n"
              f"    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
              "    return prog\n"
              "scenario.build = limited\n"
              "sys.exit(cli.main(sys.argv[1:]))\n")
    p = subprocess.Popen([sys.executable, "-c", driver, "fuzz", str(SEED), "--model", "kgraft", "--runs", "6",
                          "--jobs", "1", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, err
    assert "Traceback" not in err and err.count("lpemu: error:") == 1 and "cannot write" in err
    assert "--resume" in err
    kept = lines_of(out / "runs.jsonl")                      # whole lines only
    assert 0 < len(kept) < 6
    p = lpemu("fuzz", SEED, "--model", "kgraft", "--runs", "6", "--jobs", "1", "--out", out, "--resume",
              "--json")
    got, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert sorted(r["seed"] for r in lines_of(out / "runs.jsonl")) == list(range(6))
    expected = json.loads((clean / "summary.json").read_text())
    assert json.loads(got)["models"] == expected["models"]


# ---- one campaign per directory ----------------------------------------------------------------
def test_a_second_campaign_in_a_directory_in_use_exits_2_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "c"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom emu.runs import campaign, scenario\n"
         "prog = scenario.build(scenario.load(sys.argv[1]))\n"
         "c = campaign.Campaign(prog, campaign.Plan(sys.argv[1], ['kgraft'], range(6), 'exhaustive'), out=sys.argv[2])\n"
         "print('ready', flush=True)\ntime.sleep(120)", str(SEED.resolve()), str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for extra in (["--resume"], ["--force"]):
            assert small_campaign(out, *extra) == 2
            err = capsys.readouterr().err
            assert f"pid {holder.pid}" in err and "Traceback" not in err and err.count("\n") == 1
        assert not (out / "runs.jsonl").read_bytes()         # the second one wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert small_campaign(out, "--resume") == 0              # the lock went with its holder
    assert sorted(r["seed"] for r in lines_of(out / "runs.jsonl")) == list(range(6))


# ---- --force replaces a campaign's files, never the user's ---------------------------------------
@pytest.mark.parametrize("name,mine", [
    ("summary.json", '{"my": "notes"}\n'),
    ("runs.jsonl", "precious\n"),
    ("campaign.json", '["my", "plan"]\n'),
    ("rejected.txt", "my list of rejects\n"),
    ("lock", "not a pid\n"),
])
def test_force_over_a_directory_no_campaign_wrote_keeps_the_users_files(tmp_path, capsys, name, mine):
    """A file of the user's that has the name of one of a campaign's is
    refused by name, with or without --force or --resume: --force replaces a
    campaign's results, not what the user keeps under the same name."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text(mine)
    (out / "notes.txt").write_text("kept\n")
    for extra in ([], ["--force"], ["--resume"]):
        assert small_campaign(out, *extra) == 2
        err = capsys.readouterr().err
        assert f"{name} there is not a file a campaign wrote" in err and "even with --force" in err, err
        assert "Traceback" not in err and err.count("\n") == 1
        assert sorted(p.name for p in out.iterdir()) == sorted([name, "notes.txt"])
        assert (out / name).read_text() == mine and (out / "notes.txt").read_text() == "kept\n"


def test_force_replaces_a_campaigns_own_files_and_leaves_the_rest(tmp_path, capsys):
    out = tmp_path / "c"
    assert small_campaign(out) == 0
    capsys.readouterr()
    with open(out / "runs.jsonl", "a") as f:
        f.write("a damaged line\n")              # a campaign's runs.jsonl, damaged: --resume sets it aside
    assert small_campaign(out, "--resume") == 0
    capsys.readouterr()
    assert (out / "rejected.txt").exists()
    (out / "notes.txt").write_text("kept\n")
    assert small_campaign(out) == 2                  # the directory holds a campaign: say how to go on
    assert "holds a campaign; continue it with --resume or replace its results with --force" in capsys.readouterr().err
    assert small_campaign(out, "--force") == 0
    capsys.readouterr()
    assert not (out / "rejected.txt").exists() and (out / "notes.txt").read_text() == "kept\n"
    assert sorted(r["seed"] for r in lines_of(out / "runs.jsonl")) == list(range(6))
    # a runs.jsonl of records, campaign.json gone: still a campaign's, replaced
    (out / "campaign.json").unlink()
    assert small_campaign(out, "--force") == 0
    capsys.readouterr()
    # a directory of the user's own other files: --force writes the campaign beside them
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("kept\n")
    assert small_campaign(other) == 2
    assert "holds no campaign (no campaign.json)" in capsys.readouterr().err
    assert small_campaign(other, "--force") == 0
    assert (other / "notes.txt").read_text() == "kept\n" and (other / "summary.json").exists()


# ---- a campaign is the program it started with -------------------------------------------------
def test_resume_refuses_a_changed_program_and_says_what_changed(tmp_path, capsys, seed_copy):
    scn = seed_copy / "scenario.toml"
    shutil.copy(SEED, scn)
    out = tmp_path / "c"

    def fuzz(*extra):
        return cli.main(["fuzz", str(scn), "--model", "kgraft", "--runs", "3", "--jobs", "1", "--out", str(out),
                         *extra])
    assert fuzz() == 0
    capsys.readouterr()
    before = (out / "runs.jsonl").read_bytes()
    (seed_copy / "base.c").write_text((seed_copy / "base.c").read_text() + "\n/* a change */\n")
    assert fuzz("--resume") == 2
    err = capsys.readouterr().err
    assert "base.c changed" in err and "--force" in err and "Traceback" not in err
    scn.write_text(scn.read_text().replace("quantum = 500", "quantum = 400"))
    assert fuzz("--resume") == 2
    err = capsys.readouterr().err
    assert "the scenario file changed" in err and "base.c changed" in err
    assert (out / "runs.jsonl").read_bytes() == before       # nothing of the old campaign was touched
    assert fuzz("--force") == 0                              # starting over is allowed
    capsys.readouterr()
    assert fuzz("--resume") == 0                             # and is the new program's campaign
    assert len(lines_of(out / "runs.jsonl")) == 3

def test_resume_refuses_another_kernel_than_the_campaign_ran_on(tmp_path, capsys):
    """One --kernel replaces [machine] kernel, which decides every livepatch
    run: a campaign run on the newest kernel and resumed with --kernel 4.18
    would count its old runs as 4.18's."""
    out = tmp_path / "c"
    newest = versions.kernel().name                          # the seed names no kernel

    def fuzz(*extra):
        return cli.main(["fuzz", str(SEED), "--model", "livepatch", "--runs", "3", "--jobs", "1", "--out", str(out),
                         "--fail-on", "none", *extra])
    assert fuzz() == 0
    capsys.readouterr()
    before = (out / "runs.jsonl").read_bytes()
    assert fuzz("--resume", "--kernel", "4.18") == 2
    err = capsys.readouterr().err
    assert f"the kernel changed ({newest} -> 4.18)" in err and "--force" in err and "Traceback" not in err
    assert (out / "runs.jsonl").read_bytes() == before
    assert fuzz("--resume", "--kernel", newest) == 0         # the scenario's kernel (the newest): the same
    assert fuzz("--force", "--kernel", "4.18") == 0
    assert fuzz("--resume", "--kernel", "4.18") == 0
    assert fuzz("--resume") == 2


# ---- no orphans --------------------------------------------------------------------------------
def children(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(d.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_die_with_a_parent_killed_with_sigkill(tmp_path):
    """Batches of slow runs: a worker that outlived its parent would go on
    for many seconds; one that dies with it is gone at once."""
    stall_program(tmp_path / "stall")
    p = subprocess.Popen([sys.executable, "-m", "emu", "fuzz", str(tmp_path / "stall" / "s.toml"), "--runs", "400",
                          "--jobs", "2", "--out", str(tmp_path / "c")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runs = tmp_path / "c" / "runs.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (runs.exists() and runs.stat().st_size):
            time.sleep(0.05)
        workers = children(p.pid)
        assert len(workers) >= 2
    finally:
        p.kill()
        p.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.05)
    left = [w for w in workers if alive(w)]
    for w in left:                   # do not leave them behind when the test fails
        os.kill(w, signal.SIGKILL)
    assert not left


def test_a_ctrl_c_that_lands_while_the_pool_forks_interrupts_the_campaign(tmp_path):
    """The terminal sends Ctrl-C to every process of the group, the pool's
    workers as they are forked too. Sent from each new worker the instant it
    is forked (the worst moment), it must stop the campaign (exit 130 from
    lpemu, KeyboardInterrupt here), never be lost (the campaign running on to
    its end) nor leave a worker behind that the parent then waits for at exit;
    the worker forked second sends its own Ctrl-C while the first one stops
    the campaign: the shutdown must not be cut short by it either.

    The driver takes Ctrl-C as a terminal's foreground job does, whatever
    this test run inherited: a test run started in the background of a
    shell (`make test &` beside a soak) ignores SIGINT, its children
    inherit that, Python then installs no KeyboardInterrupt for it, and the
    campaign rightly ran on to its end ("finished 400")."""
    driver = ("import os, signal, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "from emu.runs import campaign, scenario\n"
              "prog = scenario.build(scenario.load(sys.argv[1]))\n"
              "os.register_at_fork(after_in_child=lambda: os.killpg(os.getpgrp(), signal.SIGINT))\n"
              "c = campaign.Campaign(prog, campaign.Plan(sys.argv[1], ['livepatch'], range(400), 'exhaustive'),\n"
              "                      jobs=2, batch=4)\n"
              "try:\n"
              "    c.run()\n"
              "except KeyboardInterrupt:\n"
              "    print('interrupted', len(c.records), flush=True)\n"
              "else:\n"
              "    print('finished', len(c.records), flush=True)\n")
    for _ in range(6):                        # before, most tries lost the signal or hung
        p = subprocess.Popen([sys.executable, "-c", driver, str(SEED)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            pytest.fail("the campaign hung after a Ctrl-C that came while its pool forked")
        assert p.returncode == 0, err
        assert out.startswith("interrupted"), (out, err)
        assert "Traceback" not in err, err


def test_jobs_beyond_the_cores_are_capped_with_a_warning(capsys, tmp_path):
    assert cli.main(["fuzz", str(SEED), "--model", "kgraft", "--runs", "2", "--jobs", "4000", "--json"]) == 0
    err = capsys.readouterr().err
    assert "--jobs 4000" in err and f"{campaign.default_jobs()} workers" in err


# ---- faults are findings -----------------------------------------------------------------------
def test_the_summary_names_the_first_fault_and_its_seed(tmp_path, seed_copy, capsys):
    base = seed_copy / "base.c"
    base.write_text(base.read_text().replace("return 5 + zero;", "return 5 + *(volatile long *)0x10;"))
    scn = seed_copy / "scenario.toml"
    shutil.copy(SEED, scn)
    assert cli.main(["fuzz", str(scn), "--model", "kgraft", "--runs", "3", "--jobs", "1", "--seed", "4"]) == 1   # a finding
    out = capsys.readouterr().out
    assert "kgraft: first faulting seed 4" in out and "unmapped" in out
    assert "lpemu replay" in out
    plan = campaign.Plan(str(scn), ["kgraft"], range(4, 7), "random")
    recs = {("kgraft", s): {"model": "kgraft", "seed": s, "outcome": "fault" if s != 4 else "completed",
                            "fault": f"report {s}"} for s in range(4, 7)}
    row = campaign.summarize(plan, recs)["models"][0]
    assert row["first_fault_seed"] == 5 and row["first_fault"] == "report 5" and row["fault"] == 2


# ---- medians of instructions are instructions ------------------------------------------------
def test_latency_and_pause_medians_are_a_runs_whole_instructions():
    """An even count of latencies has two middle ones: the median is the
    lower (a latency a run had), never the x.5 between them."""
    plan = campaign.Plan("s.toml", ["stop_machine"], range(4), "exhaustive")
    recs = {("stop_machine", s): {"model": "stop_machine", "seed": s, "strategy": "exhaustive", "outcome": "completed",
                                  "latency": lat, "pause": pause}
            for s, lat, pause in [(0, 300, 7), (1, 101, 4), (2, 100, 5), (3, 900, None)]}
    row = campaign.summarize(plan, recs)["models"][0]
    assert (row["latency_median"], row["pause_median"]) == (101, 5)
    assert type(row["latency_median"]) is int and type(row["pause_median"]) is int
    assert campaign.median([]) is None and campaign.median([3]) == 3 and campaign.median([1, 2]) == 1


def test_the_summary_prints_the_median_as_its_json_has_it(capsys):
    argv = ["fuzz", str(SEED), "--model", "kgraft", "--model", "stop_machine", "--runs", "4", "--jobs", "1", "--quiet"]
    cli.main(argv + ["--json"])
    rows = {m["model"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    cli.main(argv)
    text = capsys.readouterr().out
    assert "median: the middle run's, the lower of the two middle ones for an even count" in text
    for model, row in rows.items():
        assert type(row["latency_median"]) is int, row
        line = next(ln for ln in text.splitlines() if ln.startswith(model))
        assert f" {row['latency_median']} " in f" {line} " and ".5 " not in f"{line} ", line


def test_junit_never_takes_the_place_of_a_campaign_file(tmp_path, capsys):
    """--junit naming runs.jsonl (or summary.json, by name or a hard link) in
    --out replaced the campaign's records with the report."""
    out = tmp_path / "c"
    assert small_campaign(out) == 0
    before = (out / "runs.jsonl").read_bytes()
    os.link(out / "summary.json", tmp_path / "hard.xml")
    for junit in (out / "runs.jsonl", out / "summary.json", tmp_path / "hard.xml", out / "lock"):
        capsys.readouterr()
        assert small_campaign(out, "--resume", "--junit", junit) == 2
        assert "is the campaign's own" in capsys.readouterr().err
    assert (out / "runs.jsonl").read_bytes() == before and json.loads((out / "summary.json").read_text())["models"]


def test_resume_of_a_hard_linked_copy_leaves_the_other_copy_alone(tmp_path, capsys):
    """A campaign copied with hard links (cp -al, a backup by hard links)
    and resumed in the copy: appending runs.jsonl (and rejected.txt) in
    place grew the other copy's too."""
    out, backup = tmp_path / "c", tmp_path / "backup"
    assert small_campaign(out) == 0
    backup.mkdir()
    for p in out.iterdir():
        os.link(p, backup / p.name)
    before = (backup / "runs.jsonl").read_bytes()

    def resume(runs):
        capsys.readouterr()
        assert cli.main(["fuzz", str(SEED), "--model", "kgraft", "--runs", str(runs), "--jobs", "1", "--json",
                         "--quiet", "--out", str(out), "--resume"]) == 0
    resume(9)
    assert (backup / "runs.jsonl").read_bytes() == before
    assert sorted(r["seed"] for r in lines_of(out / "runs.jsonl")) == list(range(9))
    (backup / "rejected.txt").write_text("# 2000-01-01: lines of runs.jsonl that lpemu fuzz --resume could not read\n")
    os.link(backup / "rejected.txt", out / "rejected.txt")
    saved = (backup / "rejected.txt").read_bytes()
    with open(out / "runs.jsonl", "ab") as f:
        f.write(b"a damaged line\n")
    resume(9)
    assert (backup / "rejected.txt").read_bytes() == saved
    assert b"a damaged line" in (out / "rejected.txt").read_bytes()
