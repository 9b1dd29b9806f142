"""PPO clipped value loss, worked by hand."""

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.value_loss import clipped_value_loss


def test_clipped_value_loss_hand_values_and_gradient():
    """ε = 0.2, loss = ½ max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²):
    token 0: V 1.0, V_old 1.0, R 1.5: both errors 0.25        → 0.125, gradient V − R = −0.5
    token 1: V 2.0, V_old 2.0, R 1.0: both errors 1           → 0.5,   gradient V − R = 1
    token 2: V 0.0, V_old 0.5, R 0.0: V_clip = 0.5 − 0.2 = 0.3, errors 0 and 0.09
             → ½·0.09 = 0.045, clipped: gradient 0
    token 3: padding (garbage) → 0.   clip_frac = 1/3.
    """
    values = torch.tensor([[1.0, 2.0, 0.0, float("nan")]], requires_grad=True)
    old = torch.tensor([[1.0, 2.0, 0.5, 3.0]])
    returns = torch.tensor([[1.5, 1.0, 0.0, float("inf")]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = clipped_value_loss(values, old, returns, mask, clip_range=0.2)
    assert_close(out.loss, torch.tensor([[0.125, 0.5, 0.045, 0.0]]))
    assert_close(out.clip_frac, torch.tensor(1 / 3))
    out.loss.sum().backward()
    assert_close(values.grad, torch.tensor([[-0.5, 1.0, 0.0, 0.0]]))


def test_unclipped_value_loss():
    """clip_range=None: ½ (V − R)² = ½·(0 − 0)² and ½·(0 − 2)² = [0, 2] (V_old ignored)."""
    values, old, returns = torch.zeros(1, 2), torch.full((1, 2), 9.0), torch.tensor([[0.0, 2.0]])
    out = clipped_value_loss(values, old, returns, torch.ones(1, 2), clip_range=None)
    assert_close(out.loss, torch.tensor([[0.0, 2.0]]))


def test_value_loss_errors():
    with pytest.raises(ValueError, match="same shape"):
        clipped_value_loss(torch.zeros(1, 2), torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="clip_range"):
        clipped_value_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), clip_range=0.0)
