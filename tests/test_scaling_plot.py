"""The scaling plot draws medians with their spread over start points and
marks the 1 s retry period."""
from emu.app import bench


def result(samples):
    second = 100_000
    rows = [{"tasks": n, "livepatch_latency": samples(n), "stop_machine_pause": 300 * n} for n in (1, 4, 16)]
    return {"scaling": {"instructions_per_second": second, "by_tasks": rows, "by_depth": []}}


def test_samples_over_start_points_give_a_median_line_and_a_band(tmp_path):
    fig = bench.scaling_figure(result(lambda n: [5_000 * n + i * 1000 for i in range(11)]))
    try:
        ax = fig.axes[0]
        line = next(l for l in ax.get_lines() if l.get_label() == "livepatch latency")
        assert list(line.get_ydata()) == [5_000 * n + 5_000 for n in (1, 4, 16)]       # medians
        (band,) = ax.collections                                                       # one band: the samples'
        ys = band.get_paths()[0].vertices[:, 1]
        assert min(ys) == 5_000 + 1_000 and max(ys) == 80_000 + 9_000                  # 10th..90th percentile
        retry = [l for l in ax.get_lines() if list(l.get_ydata()) == [100_000, 100_000]]
        assert retry and "retry" in " ".join(t.get_text() for t in ax.texts)
        assert "median over start points" in fig.get_suptitle()
    finally:
        fig.clear()
    assert bench.write_scaling_plot(result(lambda n: [n, 2 * n]), tmp_path / "s.png").stat().st_size > 0


def test_single_figures_are_points_without_a_band():
    fig = bench.scaling_figure(result(lambda n: 5_000 * n))
    try:
        assert not fig.axes[0].collections and "median" not in fig.get_suptitle()
    finally:
        fig.clear()
