"""The framework benchmarks' pure helpers (benchmarks/_stages.py, benchmarks/peak.py): precision
modes and their aliases, per-step amounts from the ledger's running totals, a stage's GFLOP/s and
% of peak, and the matmul-peak measurement's shape (tiny matrices: this checks the bookkeeping,
not the machine)."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _stages  # noqa: E402
import peak  # noqa: E402


def test_precision_modes_expand_aliases_in_order_without_duplicates():
    assert _stages.parse_precision_modes("fp32") == ["fp32"]
    assert _stages.parse_precision_modes("both") == ["fp32", "bf16-mixed"]
    assert _stages.parse_precision_modes("recommended, both,fp32") == ["recommended", "fp32", "bf16-mixed"]
    assert _stages.parse_precision_modes("all") == ["fp32", "bf16-mixed", "recommended"]
    assert _stages.PRECISION_MODES["recommended"] == ("auto", None)  # None: TRL's own default
    with pytest.raises(ValueError, match="unknown precision mode 'fp16'"):
        _stages.parse_precision_modes("fp16")
    with pytest.raises(ValueError, match="no precision mode"):
        _stages.parse_precision_modes(" , ")


def test_increments_and_peak_dtype():
    assert _stages.increments([2.0, 5.0, 5.5]) == [2.0, 3.0, 0.5]
    assert _stages.increments([]) == []
    assert _stages.peak_dtype("bf16-mixed") == "bf16"
    assert _stages.peak_dtype("fp32") == "fp32"


def test_stage_figures_are_medians_of_per_step_rates_against_the_peak():
    figures = _stages.stage_figures("gen", [1.0, 2.0, 4.0], [10e9, 10e9, 40e9], peak_gflops=20.0)
    assert figures["gen_s_per_step"] == 2.0
    assert figures["gen_gflops"] == 10.0  # rates 10, 5, 10
    assert figures["gen_pct_peak"] == 50.0
    empty = _stages.stage_figures("update", [0.0], [5.0], peak_gflops=10.0)  # an untimed stage: no rate
    assert math.isnan(empty["update_gflops"]) and math.isnan(empty["update_pct_peak"])
    assert math.isnan(_stages.ratio(1.0, 0.0)) and _stages.ratio(3.0, 2.0) == 1.5


def test_peak_measure_reports_both_dtypes_and_restores_the_thread_count():
    import torch

    before = torch.get_num_threads()
    result = peak.measure(sizes=[16, 32], reps=1, threads=1)
    assert torch.get_num_threads() == before
    assert result["threads"] == 1 and result["sizes"] == [16, 32]
    assert set(result["gflops"]) == {"fp32", "bf16"} and set(result["gflops"]["fp32"]) == {"16", "32"}
    assert result["peak_gflops"]["fp32"] == max(result["gflops"]["fp32"].values()) > 0
    assert result["bf16_over_fp32"] == pytest.approx(result["peak_gflops"]["bf16"] / result["peak_gflops"]["fp32"])
    table = peak.format_table(result)
    assert "CPU capability" in table and "bf16 / fp32 peak" in table
    with pytest.raises(ValueError, match="unknown dtypes"):
        peak.measure(sizes=[8], dtypes=["fp16"])
