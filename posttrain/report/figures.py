"""The report's figures: matplotlib on an Agg canvas, returned as PNG bytes to embed.

One figure per kind of curve (reward, accuracy, KL, ...), each holding every metric of that kind
the run logged, so a page shows the figures a run has and none that it does not.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

from posttrain.plots import SMOOTH_ABOVE, moving_average
from posttrain.report.inputs import finite_number


def _accuracy(key: str) -> bool:
    return key.startswith(("eval/accuracy", "eval/preference_accuracy")) or key in (
        "reward/accuracy", "train/accuracy")


def _eval_reward(key: str) -> bool:
    return key.startswith("eval/reward_") and not key.startswith(("eval/reward_errors", "eval/reward_mean"))


# (title, which metric keys it draws). A key goes to the first curve that takes it.
CURVES: list[tuple[str, Callable[[str], bool]]] = [
    ("Reward", lambda k: k in ("reward/mean", "reward/kept_mean", "reward/score_mean", "reward/penalised_mean")
     or _eval_reward(k)),
    ("Accuracy", _accuracy),
    ("KL to the reference", lambda k: k in ("kl/mean", "kl/sequence_mean")),
    ("Entropy", lambda k: k == "entropy/mean"),
    ("Response length (tokens)", lambda k: k == "response/length_mean"),
    ("Loss", lambda k: k in ("train/loss", "eval/loss", "train/policy_loss", "train/value_loss", "train/sft_loss")),
]


def metric_series(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{key: (steps, values)}` over every numeric key of the records (non-finite values and
    non-numbers skipped: a missing point), sorted by step."""
    points: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, raw in record.items():
            value = finite_number(raw)
            if key in ("step", "time") or value is None:
                continue
            points.setdefault(key, []).append((record["step"], value))
    out = {}
    for key, pts in points.items():
        pts.sort(key=lambda p: p[0])  # stable: equal steps keep file order
        out[key] = (np.array([p[0] for p in pts], dtype=np.int64), np.array([p[1] for p in pts]))
    return out


def curve_groups(series: dict) -> list[tuple[str, list[str]]]:
    """The curves this run has: (title, keys) for each kind with at least one logged key."""
    taken: set[str] = set()
    groups = []
    for title, wanted in CURVES:
        keys = [k for k in series if k not in taken and wanted(k)]
        taken.update(keys)
        if keys:
            groups.append((title, keys))
    return groups


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def curve_png(title: str, keys: list[str], series: dict) -> bytes:
    """One axis, one line per key against the step; noisy series get a trailing mean on top."""
    figure = _figure(5.6, 3.4)
    axis = figure.subplots()
    for index, key in enumerate(keys):
        steps, values = series[key]
        colour = f"C{index}"
        if len(values) > SMOOTH_ABOVE:
            window = max(3, len(values) // 10)
            axis.plot(steps, values, color=colour, alpha=0.25, linewidth=1)
            axis.plot(steps, moving_average(values, window), color=colour, linewidth=2,
                      label=f"{key} (mean of {window})")
        else:
            axis.plot(steps, values, color=colour, marker="o" if len(values) < 30 else None, markersize=3,
                      label=key)
    axis.set_title(title, fontsize="medium")
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="x-small")
    return _png(figure)


def ledger_png(stages: list[str], flop_share: list[float], time_share: list[float]) -> bytes:
    """Each stage's share of the FLOPs and of the timed seconds, as paired horizontal bars."""
    figure = _figure(5.6, 0.8 + 0.45 * len(stages))
    axis = figure.subplots()
    y = np.arange(len(stages))
    axis.barh(y - 0.2, [100 * s for s in flop_share], height=0.4, color="C0", label="FLOPs")
    axis.barh(y + 0.2, [100 * s for s in time_share], height=0.4, color="C1", label="seconds")
    axis.set_yticks(y, stages)
    axis.invert_yaxis()
    axis.set_xlim(0, 100)
    axis.set_xlabel("share of the run (%)")
    axis.grid(alpha=0.3, axis="x")
    figure.legend(fontsize="x-small", loc="outside upper center", ncols=2)
    return _png(figure)
