"""The pure parts of bench/scale.py: arguments, the ratios per size step, the tables and the target checks.
The benchmark itself is not run here (it takes hours at its sizes)."""

import argparse
import math

import pytest

from tests.support.bench import bench_module


@pytest.fixture(scope="module")
def scale():
    return bench_module("scale")


def test_sizes_are_read_with_k_and_m_suffixes_and_sorted(scale):
    assert scale.sizes_parse("10M,1M,3M") == [1_000_000, 3_000_000, 10_000_000]
    assert scale.sizes_parse("500k, 2500000") == [500_000, 2_500_000]
    assert scale.sizes_parse("1.5M") == [1_500_000]
    assert scale.arguments_parse([]).sizes == [1_000_000, 3_000_000, 10_000_000]


@pytest.mark.parametrize("text", ["", "ten", "1G", "-1M", "999", "1M,1M", "1.0000005k"])
def test_sizes_that_are_no_sizes_are_refused(scale, text):
    with pytest.raises(argparse.ArgumentTypeError):
        scale.sizes_parse(text)


def test_a_bad_size_on_the_command_line_exits_with_usage(scale, capsys):
    with pytest.raises(SystemExit) as exit_:
        scale.arguments_parse(["--sizes", "1X"])

    assert exit_.value.code == 2
    assert "not a size: '1X'" in capsys.readouterr().err


def test_size_labels_read_as_the_sizes_were_given(scale):
    assert [scale.size_label(n) for n in (1_000_000, 3_000_000, 10_000_000, 500_000, 1_500_000, 1234)] == [
        "1M", "3M", "10M", "500k", "1.5M", "1234",
    ]  # fmt: skip


def _rows(scale, times: dict[int, float], **extra):
    return [scale.ScaleRow(events=n, train_s=t, **extra) for n, t in times.items()]


def test_a_step_of_three_times_the_events_counts_as_one_point_six_doublings(scale):
    steps = scale.scaling_steps(_rows(scale, {1_000_000: 100.0, 3_000_000: 330.0}), "train_s")

    (step,) = steps
    assert (step.size_ratio, step.time_ratio) == (3.0, pytest.approx(3.3))
    assert step.normalised == pytest.approx(1.1)
    assert step.per_doubling == pytest.approx(3.3 ** (1 / math.log2(3)))
    assert step.per_doubling ** math.log2(3) == pytest.approx(3.3)


def test_steps_skip_sizes_where_that_time_was_not_measured(scale):
    rows = _rows(scale, {1_000_000: 100.0, 3_000_000: math.nan, 10_000_000: 1500.0})

    (step,) = scale.scaling_steps(rows, "train_s")

    assert (step.smaller, step.larger, step.time_ratio) == (1_000_000, 10_000_000, 15.0)
    assert scale.scaling_steps(rows, "dask_train_s") == []


def _verdicts(checks) -> dict[str, bool | None]:
    return {check.name: check.passed for check in checks}


def test_linear_time_passes_the_doubling_target_and_the_10m_targets_are_pending_without_a_10m_row(scale):
    verdicts = _verdicts(scale.checks(_rows(scale, {1_000_000: 100.0, 3_000_000: 300.0})))

    assert verdicts == {
        "10M events train in < 30 min, < 8 GB in-process": None,
        "doubling the events costs <= 2.2x time in-process, 1M -> 3M": True,
        "doubling the events costs <= 2.2x time on Dask": None,
    }


def test_a_step_costing_more_than_2_2x_per_doubling_fails(scale):
    # 1M -> 3M is 1.585 doublings: 2.2 ** 1.585 = 3.49x is the most the step may cost
    passing = scale.checks(_rows(scale, {1_000_000: 100.0, 3_000_000: 348.0}))
    failing = scale.checks(_rows(scale, {1_000_000: 100.0, 3_000_000: 350.0}))

    assert [c.passed for c in passing if "doubling" in c.name and "in-process" in c.name] == [True]
    assert [c.passed for c in failing if "doubling" in c.name and "in-process" in c.name] == [False]
    assert any(c.line().startswith("FAIL") for c in failing)


def test_the_10m_row_is_held_to_30_minutes_and_8_gb(scale):
    fast = scale.ScaleRow(events=10_000_000, train_s=1700.0, peak_mb=7000.0)
    slow = scale.ScaleRow(events=10_000_000, train_s=1900.0, peak_mb=9000.0)

    assert _verdicts(scale.checks([fast]))["10M events train in < 30 min in-process"] is True
    assert _verdicts(scale.checks([fast]))["10M events peak < 8 GB in-process"] is True
    assert _verdicts(scale.checks([slow]))["10M events train in < 30 min in-process"] is False
    assert _verdicts(scale.checks([slow]))["10M events peak < 8 GB in-process"] is False


def test_every_dask_worker_must_stay_under_half_the_in_process_peak(scale):
    under = scale.ScaleRow(events=1_000_000, peak_mb=1000.0, worker_peaks_mb=[400.0, 499.0])
    over = scale.ScaleRow(events=1_000_000, peak_mb=1000.0, worker_peaks_mb=[400.0, 501.0])

    name = "each Dask worker's peak < half the in-process peak, 1M"
    assert _verdicts(scale.checks([under]))[name] is True
    assert _verdicts(scale.checks([over]))[name] is False


def test_the_tables_carry_the_figures_and_a_dash_where_nothing_was_measured(scale):
    rows = [
        scale.ScaleRow(
            events=1_000_000, generate_s=20, import_s=300, train_s=120, peak_mb=800, dask_train_s=200,
            dask_trainer_peak_mb=600, worker_peaks_mb=[500, 510],
            ndcg={"ranker": 0.2, "popularity": 0.1, "ease": 0.16}, dask_ndcg=0.19,
        ),
        scale.ScaleRow(events=3_000_000, generate_s=60, import_s=900, train_s=400, peak_mb=2000),
    ]  # fmt: skip

    table, steps, quality = scale.table_lines(rows), scale.steps_lines(rows), scale.quality_lines(rows)

    assert table[2] == "| 1M | 20 | 300 | 120 | 800 | 200 | 600 | 500 / 510 |"
    assert table[3] == "| 3M | 60 | 900 | 400 | 2,000 | - | - | - |"
    assert "| 1M -> 3M | 3.00 | train in-process | 3.33x | 1.11 | 2.14x |" in steps
    assert not any("train on Dask" in line for line in steps)
    assert scale.steps_lines(rows[:1]) == ["no step between sizes: one size measured"]
    assert quality[0].startswith("| events | NDCG@10 ranker | ease | popularity |")
    assert quality[2] == "| 1M | 0.2000 | 0.1600 | 0.1000 | 1.25x | 0.1900 |"


def test_the_projection_carries_the_largest_time_at_the_last_cost_per_doubling(scale):
    rows = _rows(scale, {1_000_000: 100.0, 2_000_000: 210.0})

    line = scale.projection_line(rows, "train_s")

    assert line.startswith("train_s projected to 10M at 2.10x per doubling: ")
    assert f"{210 * 2.1 ** math.log2(5):,.0f} s" in line
    assert scale.projection_line(_rows(scale, {1_000_000: 1.0, 10_000_000: 9.0}), "train_s") is None


def test_the_disk_estimate_grows_with_the_events(scale):
    assert scale.disk_needed_bytes(10_000_000) == 10 * scale.disk_needed_bytes(1_000_000) > 0


def test_ndcg_figures_take_the_ranker_and_the_ranking_baselines_of_the_train_json(scale):
    summary = {
        "metrics": {"ndcg@10": 0.3, "rmse": 0.8},
        "baselines": {"popularity": {"ndcg@10": 0.1}, "ease": {"ndcg@10": 0.2}, "bias": {"rmse": 0.9}},
    }

    assert scale.ndcg_figures(summary) == {"ranker": 0.3, "popularity": 0.1, "ease": 0.2}
