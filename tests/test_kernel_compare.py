"""`lpemu fuzz --kernel A --kernel B` compares kernel versions as it
compares models: the kernel travels in the campaign's plan to the workers,
every record says which kernel it ran on, and the summary has a row per
(kernel, model). examples/kernel-versions is the case whose answer depends
on the version: a CPU-bound kthread with cond_resched() switches on 6.8
(6.4 to 6.15) and stalls on 4.18 and 6.19 (emu/kernel/versions.py)."""
import json
from pathlib import Path

import pytest

from emu.app.cli import main
from emu.runs import campaign

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kernel-versions" / "scenario.toml"
KERNELS = ["4.18", "6.8", "6.19"]


def fuzz(capsys, *argv) -> tuple[int, dict]:
    code = main(["fuzz", str(EXAMPLE), *argv, "--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One campaign over three kernels, two workers, written to a directory."""
    out = tmp_path_factory.mktemp("k") / "c"
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["fuzz", str(EXAMPLE), *[a for k in KERNELS for a in ("--kernel", k)], "--runs", "2",
                     "--jobs", "2", "--out", str(out), "--json", "--quiet"])
    return code, json.loads(buf.getvalue()), out


def test_the_summary_has_a_row_per_kernel_and_model_with_each_kernels_answer(compared):
    _, summary, _ = compared
    assert summary["kernels"] == KERNELS
    rows = {(r["kernel"], r["model"]): r for r in summary["models"]}
    assert list(rows) == [(k, "livepatch") for k in KERNELS]
    # 6.8 switches the kthread at cond_resched(); 4.18 and 6.19 never do
    assert rows["6.8", "livepatch"]["completed"] == 2 and rows["6.8", "livepatch"]["stalled"] == 0
    for k in ("4.18", "6.19"):
        assert rows[k, "livepatch"]["stalled"] == 2 and rows[k, "livepatch"]["completed"] == 0
    assert [(v["kernel"], v["model"]) for v in summary["verdicts"]] == list(rows)


def test_every_record_names_the_kernel_it_ran_on_and_the_workers_ran_it_there(compared):
    _, _, out = compared
    recs = campaign.read_records(out / "runs.jsonl")
    assert sorted(recs) == sorted(campaign.Plan("", ["livepatch"], range(2), "exhaustive", KERNELS).runs())
    for (model, seed, kernel), rec in recs.items():
        assert rec["kernel"] == kernel and rec["spec"]["kernel"] == kernel
    # the same seed is the same timing on every kernel; the runs differ by the kernel alone
    starts = {rec["start"] for (_, seed, _), rec in recs.items() if seed == 0}
    assert len(starts) == 1
    assert json.loads((out / "campaign.json").read_text())["kernels"] == KERNELS


def test_resume_of_another_kernel_list_is_refused(compared, capsys):
    _, _, out = compared
    code = main(["fuzz", str(EXAMPLE), "--kernel", "4.18", "--kernel", "6.8", "--runs", "2", "--out", str(out),
                 "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "kernels" in err and "different campaign" in err


def test_resume_of_the_same_kernels_runs_nothing_again(compared, capsys):
    _, summary, out = compared
    code, again = fuzz(capsys, *[a for k in KERNELS for a in ("--kernel", k)], "--runs", "2", "--jobs", "1",
                       "--out", str(out), "--resume")
    assert again["models"] == summary["models"]


def test_one_kernel_replaces_the_scenarios_and_a_wrong_one_is_refused(capsys):
    code, summary = fuzz(capsys, "--kernel", "4.18", "--runs", "1", "--jobs", "1")
    assert "kernels" not in summary and summary["models"][0]["stalled"] == 1
    assert "kernel" not in summary["models"][0]
    assert main(["fuzz", str(EXAMPLE), "--kernel", "6.8", "--kernel", "7.42", "--runs", "1"]) == 2
    assert "--kernel: kernel version '7.42'" in capsys.readouterr().err


def test_the_replay_command_names_the_kernel(capsys):
    # the seed's unsafe patch fails under livepatch on every kernel: each
    # verdict's replay command carries its own --kernel
    seed = EXAMPLE.parent.parent / "seed" / "scenario.toml"
    code = main(["fuzz", str(seed), "--kernel", "4.18", "--kernel", "6.8", "--model", "livepatch",
                 "--runs", "1", "--jobs", "1", "--quiet"])
    assert code == 1
    text = capsys.readouterr().out
    assert "livepatch on 6.8" in text and "livepatch on 4.18" in text
    replays = [line for line in text.splitlines() if "replay:" in line]
    assert len(replays) == 2
    assert any("--kernel 6.8" in line for line in replays) and any("--kernel 4.18" in line for line in replays)


def test_each_kernels_row_is_judged_by_that_kernels_expectations(compared):
    code, summary, _ = compared
    verdicts = {v["kernel"]: v for v in summary["verdicts"]}
    # [expect.kernel."6.8"] on 6.8, [expect] on the others
    assert verdicts["6.8"]["expected"] == ["safe", "completes"]
    assert verdicts["4.18"]["expected"] == verdicts["6.19"]["expected"] == ["safe", "stalls"]
    assert code == 0 and summary["ok"] and all(v["ok"] for v in verdicts.values())


def test_a_kernel_whose_answer_is_not_its_expectation_fails_the_campaign_by_name(tmp_path, capsys):
    import shutil
    d = tmp_path / "kv"
    shutil.copytree(EXAMPLE.parent, d)
    text = (d / "scenario.toml").read_text()
    (d / "scenario.toml").write_text(text + '\n[expect.kernel."6.19"]\nlivepatch = ["safe", "completes"]\n')
    code = main(["fuzz", str(d / "scenario.toml"), "--kernel", "4.18", "--kernel", "6.19", "--runs", "1",
                 "--jobs", "1", "--json", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    verdicts = {v["kernel"]: v for v in summary["verdicts"]}
    assert code == 1 and not summary["ok"]
    assert verdicts["4.18"]["ok"] and not verdicts["6.19"]["ok"]
    assert verdicts["6.19"]["model"] == "livepatch" and verdicts["6.19"]["expected"] == ["safe", "completes"]
