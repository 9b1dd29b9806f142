"""Truncated / masked importance weights for the sampler–trainer mismatch, worked by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.mismatch import importance_weights

LN = math.log


def _sampler_below(old, ratios):
    """Sampler log-probs that make the token ratios π_old/μ equal `ratios` (μ = π_old / ρ)."""
    return old - torch.tensor(ratios).log()


def test_equal_log_probs_give_weight_one_at_every_level_and_mode():
    old = torch.tensor([[-0.3, -1.2, -2.0], [-0.7, -0.1, -5.0]])
    mask = torch.ones(2, 3)
    for level in ("token", "sequence"):
        for mode in ("truncate", "mask"):
            out = importance_weights(old, old.clone(), mask, level=level, mode=mode)
            assert_close(out.weights, torch.ones(2, 3))
            assert_close(out.mean, torch.tensor(1.0))
            assert_close(out.truncated_fraction, torch.tensor(0.0))


def test_token_truncation_caps_ratios_above_the_cap_only():
    """C = 2, ratios [3, 0.5, 2, 1.5]: weights min(ρ, 2) = [2, 0.5, 2, 1.5] (a ratio equal to the
    cap is not over it); mean (2 + 0.5 + 2 + 1.5)/4 = 1.5; truncated 1/4."""
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    out = importance_weights(old, _sampler_below(old, [3.0, 0.5, 2.0, 1.5]), torch.ones(1, 4), cap=2.0)
    assert_close(out.weights, torch.tensor([[2.0, 0.5, 2.0, 1.5]]))
    assert_close(out.mean, torch.tensor(1.5))
    assert_close(out.truncated_fraction, torch.tensor(0.25))


def test_token_mask_mode_drops_the_tokens_over_the_cap_and_keeps_the_others_ratio():
    """MIS, C = 2, ratios [3, 0.5, 2, 1.5]: weights ρ·1[ρ ≤ 2] = [0, 0.5, 2, 1.5]; mean 1.0; masked 1/4."""
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    out = importance_weights(old, _sampler_below(old, [3.0, 0.5, 2.0, 1.5]), torch.ones(1, 4), cap=2.0,
                             mode="mask")
    assert_close(out.weights, torch.tensor([[0.0, 0.5, 2.0, 1.5]]))
    assert_close(out.mean, torch.tensor(1.0))
    assert_close(out.truncated_fraction, torch.tensor(0.25))


def test_sequence_level_multiplies_the_token_ratios_and_broadcasts_the_weight():
    """Row 0: ratios [1.5, 1.2] → ρ = 1.8 ≤ 3, weight 1.8 on both tokens.
    Row 1: ratios [2, 2, 1] → ρ = 4 > 3: truncated to 3 on its 3 tokens (mask mode: 0).
    Token means: truncate (2·1.8 + 3·3)/5 = 2.52; mask (2·1.8 + 0)/5 = 0.72; fraction over 3/5."""
    old = torch.tensor([[-1.0, -0.4, -9.0], [-0.2, -0.3, -0.9]])
    sampler = _sampler_below(old, [[1.5, 1.2, 1.0], [2.0, 2.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = importance_weights(old, sampler, mask, level="sequence", cap=3.0)
    assert_close(out.weights, torch.tensor([[1.8, 1.8, 0.0], [3.0, 3.0, 3.0]]))
    assert_close(out.mean, torch.tensor(2.52))
    assert_close(out.truncated_fraction, torch.tensor(0.6))
    masked = importance_weights(old, sampler, mask, level="sequence", cap=3.0, mode="mask")
    assert_close(masked.weights, torch.tensor([[1.8, 1.8, 0.0], [0.0, 0.0, 0.0]]))
    assert_close(masked.mean, torch.tensor(0.72))
    assert_close(masked.truncated_fraction, torch.tensor(0.6))


def test_padding_is_ignored_even_when_it_holds_garbage():
    """Position 1 is padding with log-probs that would give ratio e^1000 (and a nan): it gets
    weight 0 and changes neither the sequence product nor the statistics. Valid ratios [0.5, 4]:
    token weights [0.5, 2], mean 1.25, truncated 1/2; sequence ρ = 2 ≤ 2, weight 2 on both."""
    old = torch.tensor([[-1.0, 0.0, -2.0, float("nan")]])
    sampler = torch.tensor([[-1.0 - LN(0.5), -1000.0, -2.0 - LN(4.0), 0.0]])
    mask = torch.tensor([[True, False, True, False]])
    out = importance_weights(old, sampler, mask, cap=2.0)
    assert_close(out.weights, torch.tensor([[0.5, 0.0, 2.0, 0.0]]))
    assert_close(out.mean, torch.tensor(1.25))
    assert_close(out.truncated_fraction, torch.tensor(0.5))
    seq = importance_weights(old, sampler, mask, level="sequence", cap=2.0)
    assert_close(seq.weights, torch.tensor([[2.0, 0.0, 2.0, 0.0]]))
    assert_close(seq.truncated_fraction, torch.tensor(0.0))


def test_huge_sequence_log_ratios_do_not_overflow():
    """Σ log-ratio = 100 · 5 = 500 (e^500 overflows float32): bounded at e^20, then capped at 2."""
    old = torch.zeros(1, 100)
    out = importance_weights(old, old - 5.0, torch.ones(1, 100), level="sequence", cap=2.0)
    assert torch.isfinite(out.weights).all()
    assert_close(out.weights, torch.full((1, 100), 2.0))


def test_no_valid_token_gives_zero_statistics_not_nan():
    out = importance_weights(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    assert out.mean.item() == 0.0 and out.truncated_fraction.item() == 0.0


def test_weights_carry_no_gradient():
    old = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    sampler = torch.tensor([[-1.5, -2.0]], requires_grad=True)
    assert not importance_weights(old, sampler, torch.ones(1, 2)).weights.requires_grad


@pytest.mark.parametrize("kwargs, message", [
    ({"level": "chunk"}, "level"), ({"mode": "clip"}, "mode"), ({"cap": 0.0}, "cap"), ({"cap": True}, "cap"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        importance_weights(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), **kwargs)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="sampler_logp has shape"):
        importance_weights(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1, 2))
