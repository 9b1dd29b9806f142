"""Plot training curves from a run's metrics.jsonl."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

# Many points are noisy (per-step RL rewards); above this count a moving average is drawn on top.
SMOOTH_ABOVE = 20


def read_metric_series(metrics_jsonl: str | os.PathLike, keys: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{key: (steps, values)}`` for each key with at least one value in the file, sorted by step.

    Shapes: ``steps`` int64 ``[n_key]`` and ``values`` float64 ``[n_key]``, where ``n_key`` is
    the number of lines carrying a finite value for that key. A step where a metric has no value
    is skipped for that metric, whether the key is absent from the line (what ``Run.log`` writes),
    ``null`` or non-finite (``NaN``/``Infinity``, from older files or other writers): it is a
    missing point, never a zero. Keys without any value are left out.
    """
    path = Path(metrics_jsonl)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metrics file not found")
    series: dict[str, list[tuple[int, float]]] = {key: [] for key in keys}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}, line {number}: not a metrics record with a 'step' ({err})") from err
            for key in keys:
                value = record.get(key)
                if value is None:  # no value at this step
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{path}, line {number}: metric {key!r} is not a number: {value!r}")
                if math.isfinite(value):
                    series[key].append((step, float(value)))
    out = {}
    for key, points in series.items():
        if points:
            points.sort(key=lambda p: p[0])  # stable: equal steps keep file order
            out[key] = (np.array([p[0] for p in points], dtype=np.int64), np.array([p[1] for p in points]))
    return out


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` finite values; ``[n] -> [n]``.

    NaNs are skipped rather than propagated, so a single non-finite step does not blank out a
    whole window of the smoothed curve; positions whose window holds no finite value are NaN.
    """
    if window < 1:
        raise ValueError(f"moving_average: window must be >= 1, got {window}")
    finite = np.isfinite(values)
    sums = np.cumsum(np.where(finite, values, 0.0))
    counts = np.cumsum(finite.astype(np.int64))
    # Subtract the running totals from `window` positions earlier to get each window's totals.
    sums[window:] = sums[window:] - sums[:-window].copy()
    counts[window:] = counts[window:] - counts[:-window].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plot_metrics(
    metrics_jsonl: str | os.PathLike,
    keys: list[str],
    out_png: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """One subplot per key (vs step) written to ``out_png``; keys without any value are skipped.

    Steps where a metric has no value (absent, null, NaN) are skipped, so its line joins the steps
    that have one. Raises ValueError when none of ``keys`` has a value in the file (listing the
    keys that do).
    """
    # The object-oriented API with an Agg canvas never touches pyplot's global backend, so this
    # works headless and does not disturb a notebook that imported matplotlib interactively.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not keys:
        raise ValueError("plot_metrics: keys is empty; name at least one metric to plot")
    series = read_metric_series(metrics_jsonl, keys)
    if not series:
        raise ValueError(
            f"{metrics_jsonl}: none of the keys {keys} appear in it with a value; "
            f"available keys: {_available_keys(metrics_jsonl)}"
        )

    ncols = min(len(series), 3)
    nrows = math.ceil(len(series) / ncols)
    figure = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for axis, (key, (steps, values)) in zip(axes, series.items()):
        if len(values) > SMOOTH_ABOVE:
            axis.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=1, label="raw")
            window = max(3, len(values) // 10)
            axis.plot(steps, moving_average(values, window), color="tab:blue", linewidth=2, label=f"mean of {window}")
            axis.legend(fontsize="small")
        else:
            axis.plot(steps, values, color="tab:blue", marker="o" if len(values) < 5 else None)
        axis.set_title(key, fontsize="medium")
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in axes[len(series):]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out


def _available_keys(metrics_jsonl: str | os.PathLike) -> list[str]:
    """Keys with at least one finite number in the file, in order of first appearance."""
    found: dict[str, None] = {}
    with open(metrics_jsonl, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            found.update(dict.fromkeys(
                key for key, value in record.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ))
    return [key for key in found if key not in ("step", "time")]
