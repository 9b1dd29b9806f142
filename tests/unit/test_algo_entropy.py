"""Entropy of the next-token distribution, aligned with token_logprobs."""

import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.entropy import entropy_from_logits
from posttrain.algorithms.logprobs import token_logprobs


def test_hand_values_and_alignment_with_token_logprobs():
    """Position 0: uniform over V = 4 ⇒ H = ln 4 = 1.3862944.
    Position 1: logits [0, ln 3, −inf, −inf] ⇒ p = [¼, ¾, 0, 0],
        H = ¼ ln 4 + ¾ ln(4/3) = 0.3465736 + 0.2157616 = 0.5623351.
    Position 2 (last) predicts nothing and is dropped, like in token_logprobs: output (1, 2).
    """
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), float("-inf"), float("-inf")], [5.0, -5.0, 1.0, 0.0]]]
    )
    ids = torch.tensor([[0, 1, 2]])
    h = entropy_from_logits(logits)
    assert h.shape == token_logprobs(logits, ids).shape == (1, 2)
    assert_close(h, torch.tensor([[math.log(4.0), 0.5623351]]))


def test_temperature_divides_logits_first():
    """logits [0, 2 ln 3] at T = 2 are [0, ln 3] at T = 1 ⇒ p = [¼, ¾], H = 0.5623351."""
    logits = torch.tensor([[[0.0, 2 * math.log(3.0)], [0.0, 0.0]]])
    assert_close(entropy_from_logits(logits, temperature=2.0), torch.tensor([[0.5623351]]))


def test_matches_direct_definition_and_gradient_is_finite_with_banned_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    logits[0, 1, 3] = float("-inf")
    logits.requires_grad_(True)
    h = entropy_from_logits(logits, temperature=0.7)
    logp = torch.log_softmax(logits[:, :-1].detach() / 0.7, dim=-1)
    direct = -(logp.exp() * torch.nan_to_num(logp, neginf=0.0)).sum(-1)
    assert_close(h.detach(), direct)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_rejects_bad_temperature_and_shape():
    with pytest.raises(ValueError, match="temperature"):
        entropy_from_logits(torch.zeros(1, 2, 3), temperature=0.0)
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        entropy_from_logits(torch.zeros(2, 3))
