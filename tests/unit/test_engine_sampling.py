"""Tests for posttrain.engines.sampling, with values worked out by hand."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from posttrain.engines.sampling import (
    filter_top_k,
    filter_top_p,
    reported_logprobs,
    sample_categorical,
    select_next_tokens,
)

INF = float("inf")


def test_filter_top_k_keeps_the_k_largest_per_row():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [5.0, -1.0, 4.0, 4.5]])
    # Row 0: the two largest are 3 (idx 1) and 2 (idx 2); row 1: 5 (idx 0) and 4.5 (idx 3).
    expected = torch.tensor([[-INF, 3.0, 2.0, -INF], [5.0, -INF, -INF, 4.5]])
    assert_close(filter_top_k(logits, 2), expected)
    assert filter_top_k(logits, 0) is logits  # 0 = off
    assert filter_top_k(logits, 4) is logits  # k >= V keeps all


def test_filter_top_p_keeps_the_smallest_nucleus():
    # probs = [0.5, 0.2, 0.3]; sorted: idx0 0.5, idx2 0.3, idx1 0.2; mass before each: 0, 0.5, 0.8.
    # A token is dropped when the mass before it is >= top_p.
    logits = torch.tensor([[0.5, 0.2, 0.3]]).log()
    assert_close(filter_top_p(logits, 0.45), torch.tensor([[math.log(0.5), -INF, -INF]]))
    assert_close(filter_top_p(logits, 0.75), torch.tensor([[math.log(0.5), -INF, math.log(0.3)]]))
    assert_close(filter_top_p(logits, 0.81), logits)
    assert filter_top_p(logits, 1.0) is logits
    # The most likely token always survives, even for a tiny top_p.
    assert torch.isfinite(filter_top_p(logits, 1e-6)).tolist() == [[True, False, False]]


def test_reported_logprobs_use_the_unfiltered_temperature_scaled_softmax():
    # logits [0, ln 3]: at T=1 probs are [1/4, 3/4]; at T=0.5 logits/T = [0, 2 ln 3] -> probs [1/10, 9/10].
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    tokens = torch.tensor([1, 0])
    assert_close(reported_logprobs(logits, tokens, 1.0), torch.tensor([math.log(0.75), math.log(0.25)]))
    assert_close(reported_logprobs(logits, tokens, 0.5), torch.tensor([math.log(0.9), math.log(0.1)]))
    # T = 0 (greedy) reports the T = 1 log-probs.
    assert_close(reported_logprobs(logits, tokens, 0.0), torch.tensor([math.log(0.75), math.log(0.25)]))


def test_select_next_tokens_greedy_is_argmax_with_t1_logprobs():
    logits = torch.tensor([[0.0, math.log(3.0), -1.0], [2.0, 0.0, 1.0]])
    tokens, logprobs = select_next_tokens(logits, temperature=0, top_k=1, top_p=0.1)
    assert tokens.tolist() == [1, 0]
    assert_close(logprobs, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])


def test_select_next_tokens_reports_unfiltered_logprobs_under_top_k():
    # With top_k=1 only token 1 can be drawn, but its reported log-prob is under the full softmax at T=0.5:
    # logits/T = [0, 2 ln 3] -> log(9/10).
    logits = torch.tensor([[0.0, math.log(3.0)]]).repeat(5, 1)
    tokens, logprobs = select_next_tokens(logits, temperature=0.5, top_k=1, generator=torch.Generator().manual_seed(0))
    assert tokens.tolist() == [1] * 5
    assert_close(logprobs, torch.full((5,), math.log(0.9)))


def test_sample_categorical_matches_probabilities_and_skips_zero_mass():
    # Unnormalised row [1, 0, 4] -> P = [0.2, 0, 0.8]; a one-hot row is always its index.
    generator = torch.Generator().manual_seed(0)
    probs = torch.tensor([[1.0, 0.0, 4.0], [0.0, 1.0, 0.0]]).repeat(10_000, 1)
    draws = sample_categorical(probs, generator).view(10_000, 2)
    freq = torch.bincount(draws[:, 0], minlength=3).float() / 10_000
    # Standard error of a frequency near 0.2 over 10k draws is 0.004; allow 4 of them.
    assert_close(freq, torch.tensor([0.2, 0.0, 0.8]), atol=0.016, rtol=0)
    assert (draws[:, 1] == 1).all()


def test_sample_categorical_is_reproducible_with_a_seeded_generator():
    probs = torch.rand(64, 50)
    first = sample_categorical(probs, torch.Generator().manual_seed(7))
    again = sample_categorical(probs, torch.Generator().manual_seed(7))
    other = sample_categorical(probs, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
