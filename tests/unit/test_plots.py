"""Tests for posttrain.plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from posttrain.plots import moving_average, plot_metrics, read_metric_series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def metrics_file(tmp_path) -> Path:
    # 50 training steps with a noisy decreasing loss, plus an eval line every 10 steps.
    rng = np.random.default_rng(0)
    records = []
    for step in range(1, 51):
        records.append({"step": step, "time": 1000.0 + step, "loss": 2.0 / step + 0.1 * float(rng.random())})
        if step % 10 == 0:
            records.append({"step": step, "time": 1000.5 + step, "eval/accuracy": step / 100})
    records[5]["loss"] = None  # step 6 without a value, as older versions of Run.log wrote it
    return _write_metrics(tmp_path / "metrics.jsonl", records)


def test_plot_writes_png_and_skips_missing_keys(metrics_file, tmp_path):
    out = plot_metrics(metrics_file, ["loss", "eval/accuracy", "not/there"], tmp_path / "plots" / "curves.png", title="t")
    assert out == tmp_path / "plots" / "curves.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000  # two axes with lines, not an empty canvas


def test_plot_with_none_of_the_keys_is_a_clear_error(metrics_file, tmp_path):
    with pytest.raises(ValueError, match=r"none of the keys \['reward'\].*available keys: \['loss', 'eval/accuracy'\]"):
        plot_metrics(metrics_file, ["reward"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_read_metric_series_shapes_and_nulls(metrics_file):
    series = read_metric_series(metrics_file, ["loss", "eval/accuracy", "missing"])
    assert set(series) == {"loss", "eval/accuracy"}
    steps, values = series["loss"]
    assert steps.shape == values.shape == (49,)  # step 6 (null) is skipped, not read as NaN or 0
    assert steps.tolist() == [s for s in range(1, 51) if s != 6] and np.isfinite(values).all()
    steps, values = series["eval/accuracy"]
    assert steps.tolist() == [10, 20, 30, 40, 50]
    torch.testing.assert_close(values.tolist(), [0.1, 0.2, 0.3, 0.4, 0.5])


@pytest.fixture
def gappy_file(tmp_path) -> Path:
    """RL-style steps where `reward/kept` has no value at every other step: absent (what Run.log
    writes now), null, NaN or Infinity (older files, other writers); `all_null` never has one."""
    records = []
    for step in range(1, 31):
        record = {"step": step, "time": float(step), "loss": 1.0 / step, "all_null": None}
        if step % 2 == 1:
            record["reward/kept"] = 0.5 + step / 100
        elif step % 8 == 2:
            record["reward/kept"] = None
        elif step % 8 == 4:
            record["reward/kept"] = math.nan
        elif step % 8 == 6:
            record["reward/kept"] = math.inf
        records.append(record)
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))  # json.dumps writes NaN / Infinity
    return path


def test_points_without_a_value_are_skipped_not_read_as_nan_or_zero(gappy_file):
    series = read_metric_series(gappy_file, ["reward/kept", "all_null", "loss"])
    assert set(series) == {"reward/kept", "loss"}  # a key that never has a value is left out
    steps, values = series["reward/kept"]
    assert steps.tolist() == list(range(1, 31, 2))
    torch.testing.assert_close(values.tolist(), [0.5 + s / 100 for s in range(1, 31, 2)])


def test_plot_joins_the_points_that_have_a_value(gappy_file, tmp_path, monkeypatch):
    """What is drawn holds only the steps with values: no NaN (which would cut a line drawn
    without markers into invisible pieces), no zeros; moving averages stay finite too."""
    from matplotlib.axes import Axes

    drawn = []
    real_plot = Axes.plot

    def recording_plot(self, x, y, *args, **kwargs):
        drawn.append((self, np.asarray(x), np.asarray(y)))  # the title is set after plotting
        return real_plot(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", recording_plot)
    out = plot_metrics(gappy_file, ["reward/kept", "all_null", "loss"], tmp_path / "gappy.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    drawn_titles = set()
    for axis, x, y in drawn:
        title = axis.get_title()
        drawn_titles.add(title)
        assert np.isfinite(y).all() and (y != 0).all(), title
        if title == "reward/kept":
            assert x.tolist() == list(range(1, 31, 2))
    assert drawn_titles == {"reward/kept", "loss"}


def test_keys_that_only_have_missing_values_count_as_absent(gappy_file, tmp_path):
    with pytest.raises(ValueError, match=r"none of the keys \['all_null'\] appear in it with a value.*"
                                         r"available keys: \['loss', 'reward/kept'\]"):
        plot_metrics(gappy_file, ["all_null"], tmp_path / "x.png")


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"loss": 2.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: .*'step'"):
        plot_metrics(path, ["loss"], tmp_path / "x.png")


def test_moving_average_by_hand():
    """Window 2 over [1, 3, nan, 5, 7]:
    pos0: mean(1) = 1; pos1: mean(1, 3) = 2; pos2: window (3, nan) -> finite mean 3;
    pos3: window (nan, 5) -> 5; pos4: mean(5, 7) = 6.
    """
    values = np.array([1.0, 3.0, math.nan, 5.0, 7.0])
    torch.testing.assert_close(moving_average(values, 2).tolist(), [1.0, 2.0, 3.0, 5.0, 6.0])
    # All-NaN window stays NaN: window 1 over [nan, 2] -> [nan, 2].
    out = moving_average(np.array([math.nan, 2.0]), 1)
    assert math.isnan(out[0]) and out[1] == 2.0
