"""Tests for posttrain.compute: matmul parameter counting and the compute ledger."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from rich.console import Console
from torch import nn

from posttrain.compute import ComputeLedger, matmul_params


class TinyLM(nn.Module):
    """Embedding(10, 4) + learned positions Embedding(8, 4) + Linear(4, 10, no bias)."""

    def __init__(self, tie: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.positions = nn.Embedding(8, 4)
        self.head = nn.Linear(4, 10, bias=False)
        if tie:
            self.head.weight = self.embed.weight


def test_matmul_params_untied_excludes_lookup_tables():
    # Only the head is a matmul: 4*10 = 40. The input table (40) and positions (32) are lookups.
    assert matmul_params(TinyLM(tie=False)) == 40


def test_matmul_params_tied_counts_shared_table_once():
    # The tied table is used by the head's matmul, counted once: 40. Positions (32) still excluded.
    assert matmul_params(TinyLM(tie=True)) == 40


def _qwen(tie: bool) -> nn.Module:
    config = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie,
    )
    return transformers.Qwen2ForCausalLM(config)


@pytest.mark.parametrize("tie", [False, True])
def test_matmul_params_tiny_qwen2_by_hand(tie):
    """Hand count, head_dim = 32/2 = 16, one KV head:
    q_proj 32*32+32 = 1056, k_proj 32*16+16 = 528, v_proj 528, o_proj 32*32 = 1024,
    mlp gate/up/down 3 * 32*64 = 6144, two RMSNorms 2*32 = 64  -> 9344 per layer, 18688 for two;
    final norm 32; lm_head 64*32 = 2048 (tied or not: the table is counted once, as the head).
    Total 18688 + 32 + 2048 = 20768.
    """
    model = _qwen(tie)
    assert matmul_params(model) == 20768
    # Sanity: the untied model has 2048 more parameters in total (the input table), all excluded.
    total = sum(p.numel() for p in model.parameters())
    assert total == 20768 + (0 if tie else 2048)


def test_record_forward_and_backward_flops():
    ledger = ComputeLedger()
    # N = 1000, 10 tokens forward: 2 * 1000 * 10 = 20,000 FLOPs.
    ledger.record("rollout", tokens=10, params=1000)
    # Same with backward: (2 + 4) * 1000 * 10 = 60,000 FLOPs.
    ledger.record("update", tokens=10, params=1000, backward=True)
    # Accumulates: another 5 forward tokens on "rollout" adds 2 * 1000 * 5 = 10,000.
    ledger.record("rollout", tokens=5, params=1000)
    m = ledger.metrics()
    assert m["compute/rollout/tokens"] == 15
    assert m["compute/rollout/flops"] == 30_000
    assert m["compute/update/tokens"] == 10
    assert m["compute/update/flops"] == 60_000
    assert m["compute/total/tokens"] == 25
    assert m["compute/total/flops"] == 90_000
    # Never timed: seconds are 0 and the undefined rate is left out.
    assert m["compute/rollout/seconds"] == 0.0
    assert "compute/rollout/tokens_per_s" not in m


def test_timed_accumulates_seconds_and_rate(monkeypatch):
    # A fake clock: each perf_counter() call returns the next value.
    ticks = iter([10.0, 12.0, 20.0, 21.0])
    monkeypatch.setattr("posttrain.compute.time.perf_counter", lambda: next(ticks))
    ledger = ComputeLedger()
    with ledger.timed("sft"):
        ledger.record("sft", tokens=100, params=1, backward=True)
    with ledger.timed("sft"):
        ledger.record("sft", tokens=50, params=1, backward=True)
    m = ledger.metrics()
    # (12 - 10) + (21 - 20) = 3 seconds; 150 tokens / 3 s = 50 tokens/s.
    torch.testing.assert_close(m["compute/sft/seconds"], 3.0)
    torch.testing.assert_close(m["compute/sft/tokens_per_s"], 50.0)


def test_timed_counts_time_even_when_body_raises(monkeypatch):
    ticks = iter([1.0, 4.5])
    monkeypatch.setattr("posttrain.compute.time.perf_counter", lambda: next(ticks))
    ledger = ComputeLedger()
    with pytest.raises(RuntimeError):
        with ledger.timed("eval"):
            raise RuntimeError("boom")
    torch.testing.assert_close(ledger.metrics()["compute/eval/seconds"], 3.5)


def test_state_dict_roundtrip_through_json_keeps_totals():
    ledger = ComputeLedger()
    ledger.record("reference", tokens=7, params=3)  # 2*3*7 = 42 FLOPs
    ledger.add_seconds("reference", 2.0)
    restored = ComputeLedger()
    restored.load_state_dict(json.loads(json.dumps(ledger.state_dict())))
    assert restored.metrics() == ledger.metrics()
    # Resumed totals keep growing: 42 + 2*3*1 = 48.
    restored.record("reference", tokens=1, params=3)
    assert restored.metrics()["compute/reference/flops"] == 48


def test_load_state_dict_rejects_garbage():
    with pytest.raises(ValueError, match="state_dict"):
        ComputeLedger().load_state_dict({"stages": {"x": {"tokens": 1}}})


@pytest.mark.parametrize(
    "kwargs, match",
    [({"tokens": -1, "params": 5}, "tokens"), ({"tokens": 1.5, "params": 5}, "tokens"), ({"tokens": 1, "params": -2}, "params")],
)
def test_record_rejects_bad_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ComputeLedger().record("sft", **kwargs)


def test_stage_name_validated():
    with pytest.raises(ValueError, match="stage"):
        ComputeLedger().record("a/b", tokens=1, params=1)


def test_table_lists_stages_and_total():
    ledger = ComputeLedger()
    ledger.record("rollout", tokens=10, params=1000)  # 20,000 FLOPs = 25% of 80,000
    ledger.record("update", tokens=10, params=1000, backward=True)  # 60,000 FLOPs = 75%
    console = Console(record=True, width=120)
    console.print(ledger.table())
    text = console.export_text()
    assert "rollout" in text and "update" in text and "total" in text
    assert "25.0%" in text and "75.0%" in text
    assert "8.000e+04" in text  # total FLOPs


def test_merged_sums_ranks_tokens_and_flops_and_keeps_the_slowest_seconds():
    """Two ranks' ledgers (data parallel): by hand, rollout 10 + 30 tokens at 1e3 params is
    2·1e3·40 = 80,000 FLOPs; update 5 + 7 backward tokens is 6·1e3·12 = 72,000; seconds the max;
    a stage only rank 1 used ("eval") comes after rank 0's."""
    a, b = ComputeLedger(), ComputeLedger()
    a.record("rollout", tokens=10, params=1000)
    a.record("update", tokens=5, params=1000, backward=True)
    a.add_seconds("rollout", 2.0)
    b.record("rollout", tokens=30, params=1000)
    b.record("update", tokens=7, params=1000, backward=True)
    b.add_seconds("rollout", 3.5)
    b.record("eval", tokens=4, params=1000)
    merged = ComputeLedger.merged([a.state_dict(), b.state_dict()])
    assert merged.stages == ["rollout", "update", "eval"]
    m = merged.metrics()
    assert (m["compute/rollout/tokens"], m["compute/rollout/flops"], m["compute/rollout/seconds"]) == (40, 80_000, 3.5)
    assert (m["compute/update/tokens"], m["compute/update/flops"]) == (12, 72_000)
    assert m["compute/rollout/tokens_per_s"] == pytest.approx(40 / 3.5)
    assert (m["compute/total/tokens"], m["compute/total/flops"]) == (56, 80_000 + 72_000 + 8_000)
    # One rank: the ledger itself; the inputs are untouched.
    assert ComputeLedger.merged([a.state_dict()]).metrics() == a.metrics()
    assert a.metrics()["compute/rollout/tokens"] == 10
