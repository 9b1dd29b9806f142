"""Helpers shared by ``grpo_vs_trl.py`` and ``dpo_vs_trl.py``: precision modes, per-stage figures.

Pure functions (no TRL, no model) apart from ``DtypeProbe``, which only needs torch. Nothing here
is imported by the ``posttrain`` package.

Precision modes (``--precision``, comma-separated):

* ``fp32``: posttrain ``precision=fp32`` against TRL ``bf16=False``;
* ``bf16-mixed``: posttrain ``precision=bf16-mixed`` against TRL ``bf16=True`` (on CPU, accelerate
  runs the model's forward under ``torch.autocast("cpu", torch.bfloat16)``; weights, gradients
  and AdamW state stay float32 on both sides);
* ``recommended``: each side as its own documentation advises: posttrain ``precision=auto``
  (bf16-mixed only where a bf16 matmul measures >= 1.5x faster than fp32), TRL without any ``bf16``
  argument, i.e. its config default (``bf16=True`` unless ``fp16`` is set, for both GRPOConfig
  and DPOConfig in TRL 1.16);
* ``both`` = ``fp32,bf16-mixed``; ``all`` = ``fp32,bf16-mixed,recommended``.
"""

from __future__ import annotations

import math
import statistics

# mode -> (posttrain `precision`, TRL `bf16`; None = leave TRL's config default)
PRECISION_MODES: dict[str, tuple[str, bool | None]] = {
    "fp32": ("fp32", False),
    "bf16-mixed": ("bf16-mixed", True),
    "recommended": ("auto", None),
}
PRECISION_ALIASES = {"both": ["fp32", "bf16-mixed"], "all": ["fp32", "bf16-mixed", "recommended"],
                     "bf16": ["bf16-mixed"]}


def parse_precision_modes(text: str) -> list[str]:
    """``"fp32,both"`` -> ``["fp32", "bf16-mixed"]``: known modes and aliases, duplicates dropped, order kept."""
    modes: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        expanded = PRECISION_ALIASES.get(item, [item])
        for mode in expanded:
            if mode not in PRECISION_MODES:
                raise ValueError(f"unknown precision mode {item!r}; choose from "
                                 f"{sorted(PRECISION_MODES) + sorted(PRECISION_ALIASES)}")
            if mode not in modes:
                modes.append(mode)
    if not modes:
        raise ValueError("no precision mode given")
    return modes


def peak_dtype(precision: str) -> str:
    """The peak to compare against: "bf16" for bf16-mixed (its matmuls run in bf16), else "fp32"."""
    return "bf16" if precision in ("bf16-mixed", "bf16") else "fp32"


def increments(cumulative: list[float]) -> list[float]:
    """Per-step amounts from running totals (the compute ledger logs totals since the start)."""
    return [b - a for a, b in zip([0.0] + list(cumulative), cumulative)]


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def stage_figures(stage: str, seconds: list[float], flops: list[float], peak_gflops: float) -> dict:
    """``{stage}_s_per_step`` (median), ``{stage}_gflops`` (median over steps of the step's FLOPs /
    seconds, in GFLOP/s) and ``{stage}_pct_peak`` (that, in % of ``peak_gflops``)."""
    rates = [f / s / 1e9 if s > 0 else float("nan") for s, f in zip(seconds, flops)]
    gflops = _median(rates)
    return {f"{stage}_s_per_step": _median(list(seconds)),
            f"{stage}_gflops": gflops,
            f"{stage}_pct_peak": 100.0 * gflops / peak_gflops if peak_gflops > 0 else float("nan")}


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


class DtypeProbe:
    """Records the output dtype of one of the model's linear layers, per phase ("generate" while
    ``phase`` says so, "train" otherwise): a check that a framework's bf16 switch really put the
    matmuls in bf16 (autocast returns bf16 from a linear), without touching its code path."""

    def __init__(self, model) -> None:
        from torch import nn

        linear = next((m for name, m in model.named_modules() if isinstance(m, nn.Linear)
                       and "lm_head" not in name), None)
        self.phase = "train"
        self.seen: dict[str, set[str]] = {}
        if linear is not None:
            linear.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.seen.setdefault(self.phase, set()).add(str(getattr(output, "dtype", "?")).removeprefix("torch."))

    def as_dict(self) -> dict[str, list[str]]:
        return {phase: sorted(dtypes) for phase, dtypes in self.seen.items()}


def start_report(benchmark: str, args) -> tuple[dict, dict]:
    """The matmul peak the stages are measured against (this machine, this thread count, this
    invocation; printed) and the report every run is appended to: {benchmark, args, peak, runs}."""
    from pathlib import Path

    from peak import format_table, measure

    peak = measure([int(n) for n in args.peak_sizes.split(",") if n.strip()], threads=args.threads)
    print(format_table(peak))
    report = {"benchmark": benchmark, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "peak": peak, "runs": []}
    return peak, report


def add_report_arguments(parser) -> None:
    """The flags both framework benchmarks share: --precision, --peak-sizes, --json."""
    from pathlib import Path

    parser.add_argument("--precision", default="fp32",
                        help="comma-separated modes: fp32 (posttrain precision=fp32 vs TRL bf16=False), bf16-mixed "
                             "(precision=bf16-mixed vs bf16=True), recommended (precision=auto vs TRL's default, "
                             "bf16=True); both = fp32,bf16-mixed; all = all three")
    parser.add_argument("--peak-sizes", default="1024,1536,2048", help="matrix sizes of the matmul-peak measurement")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure (and per-step lists) here")
