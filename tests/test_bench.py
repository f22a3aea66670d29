"""`lpemu bench` smoke tests: the whole run in quick mode gives one JSON-able
object with every key, the table renders, the plot is written. No timing
is asserted here: figures come from `lpemu bench` and benchmarks/."""
import json

import pytest

from emu.app import bench


@pytest.fixture(scope="module")
def quick():
    return bench.run_bench(quick=True)


def test_quick_run_has_every_key_and_is_json(quick):
    data = json.loads(json.dumps(quick))
    for key in bench.TARGETS:
        assert key in data
    for key in ("redirect_ratio", "unwind_ratio", "throughput_ratio"):
        assert isinstance(data[key], float)          # a ratio of timings: its size is the bench's business
    assert data["fuzz_runs_per_s"] > 0 and data["rss_growth"] > 0
    assert data["campaign"]["runs"] == 500
    assert set(data["meets"]) == set(bench.TARGETS)
    assert data["redirect"]["c"]["state"] == "completed"
    assert data["redirect"]["c"]["added_instructions_per_call"] == 2      # call + trampoline + new NOP - old NOP
    assert data["throughput"]["machine"]["transition_pending"] is True
    assert data["unwind"]["orc"]["entries_per_stack"] == 17                # rip, 15 returns into sink_down, the entry


def test_models_section_has_each_phase(quick):
    models = quick["models"]
    assert set(models) == {"immediate", "stop_machine", "kgraft", "livepatch"}
    assert set(models["immediate"]) == {"after"}
    for name in ("stop_machine", "kgraft", "livepatch"):
        assert models[name]["during"]["state"] == "during"
        assert models[name]["after"]["state"] == "completed"
    # kpatch's handler skips the new function's own fentry NOP: one instruction less
    assert models["stop_machine"]["after"]["added_instructions_per_call"] == 1


def test_scaling_tables_cover_their_points(quick):
    sc = quick["scaling"]
    assert [r["tasks"] for r in sc["by_tasks"]] == list(bench.Sizes.quick().scaling_tasks)
    assert [r["depth"] for r in sc["by_depth"]] == list(bench.Sizes.quick().scaling_depths)
    pauses = [r["stop_machine_pause"] for r in sc["by_tasks"]]
    assert all(p and p > 0 for p in pauses) and pauses == sorted(pauses)


def test_format_and_plot(quick, tmp_path):
    text = bench.format_bench(quick)
    for word in ("redirect_ratio", "unwind_ratio", "throughput_ratio", "livepatch", "Scaling"):
        assert word in text
    for suffix in (".png", ".svg"):
        path = bench.write_scaling_plot(quick, tmp_path / f"scaling{suffix}")
        assert path.stat().st_size > 1000
    with pytest.raises(ValueError):
        bench.write_scaling_plot(quick, tmp_path / "scaling.pdf")
    with pytest.raises(ValueError):
        bench.write_scaling_plot({}, tmp_path / "none.png")


def test_sections_can_be_chosen():
    with pytest.raises(ValueError, match="unknown bench section"):
        bench.run_bench(quick=True, sections=["nope"])
    r = bench.run_bench(quick=True, sections=["campaign"])
    assert r["redirect_ratio"] is None and r["meets"]["redirect_ratio"] is None


def test_scale_figures_and_tables(quick):
    # a floor lost in the noise (a loaded machine, quick sizes) gives no ratio, as documented
    floor = quick["redirect"]["in_guest_trampoline"]["added_ns_per_call"]
    assert isinstance(quick["redirect_floor_ratio"], float) if floor > 0 else quick["redirect_floor_ratio"] is None
    assert quick["redirect"]["c_redirect_only"]["call_events"] == "off"
    assert quick["redirect"]["c_redirect_only"]["added_instructions_per_call"] == 2   # the events change no run
    s = bench.Sizes.quick()
    assert isinstance(quick["scale_throughput_ratio"], float) and quick["scale_rss_mib"] > 0
    assert quick["scale"]["large"]["tasks"] == s.scale_tasks and quick["scale"]["large"]["cpus"] == s.scaling_cpus
    sc = quick["scaling"]
    assert [r["cpus"] for r in sc["by_cpus"]] == list(s.scaling_cpu_counts)
    assert all(r["tasks"] == s.scaling_cpus_tasks for r in sc["by_cpus"])
    assert all(r["cpus"] == s.scaling_cpus for r in sc["by_tasks"])
    for r in sc["by_tasks"] + sc["by_cpus"]:
        assert r["livepatch_results"] == ["completed"] and r["stop_machine_results"] == ["completed"]


def test_the_scaling_plan_grows_with_the_run_rate():
    """campaign_scaling's plan keeps one worker busy SCALING_SECONDS at the
    measured rate, and never shrinks below 2,000 seeds a model."""
    from emu.app.bench.campaign import SCALING_SECONDS, scaling_seeds
    assert scaling_seeds(True, 10_000, 4) == 25
    assert scaling_seeds(False, None, 4) == 2_000
    assert scaling_seeds(False, 1_000, 4) == 2_000
    fast = scaling_seeds(False, 8_000, 4)
    assert fast * 4 >= 8_000 * SCALING_SECONDS and (fast - 1) * 4 < 8_000 * SCALING_SECONDS


HEADERS = ("figure", "value", "target", "met", "added instructions", "ns, entry events off", "stop_machine pause",
           "wait for stop", "livepatch latency", "last switch", "kgraft latency", "last migration")


def test_tables_piped_to_a_file_keep_their_headers_whole(quick, monkeypatch, capsys):
    """Not on a terminal (a pipe, a file), `lpemu bench` prints its tables as
    wide as their content: every header whole on its table's one header
    line (they were cut to 'stop_machi…' at a fixed width). On a narrow
    terminal the headers wrap at spaces and no number is cut."""
    from emu.app import cli
    monkeypatch.setattr(bench, "run_bench", lambda **kw: quick)
    assert cli.main(["bench", "--quick"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    for head in HEADERS:
        assert any(head in line for line in lines), head
    assert "…" not in text and "~" not in text
    heads = [lines[i - 1] for i, line in enumerate(lines) if line.startswith("-----")]
    assert all(head in " ".join(heads) for head in HEADERS)
    narrow = bench.format_bench(quick, width=60)
    for row in quick["scaling"]["by_tasks"]:
        assert bench.table.fmt(row["livepatch_latency"]) in narrow
    assert all(len(line) <= 60 for line in narrow.splitlines() if not line.startswith(("  ", "Scaling", "redirect,",
                                                                                         "throughput", "Redirect")))
