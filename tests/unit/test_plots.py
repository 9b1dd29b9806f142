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
    records[5]["loss"] = None  # a non-finite value logged by Run.log
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
    assert steps.shape == values.shape == (50,)
    assert math.isnan(values[5]) and np.isfinite(np.delete(values, 5)).all()
    steps, values = series["eval/accuracy"]
    assert steps.tolist() == [10, 20, 30, 40, 50]
    torch.testing.assert_close(values.tolist(), [0.1, 0.2, 0.3, 0.4, 0.5])


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
