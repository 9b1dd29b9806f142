"""Loss aggregation modes, and exact gradient accumulation with global normalisers."""

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.aggregation import AGGREGATIONS, aggregate

NAN = float("nan")
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, 1e9]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_token_mean_hand_value():
    """(1 + 2 + 3 + 4) / 4 valid tokens = 2.5; with global_tokens = 8: 10 / 8 = 1.25."""
    assert_close(aggregate(LOSS, MASK, "token-mean"), torch.tensor(2.5))
    assert_close(aggregate(LOSS, MASK, "token-mean", global_tokens=8), torch.tensor(1.25))


def test_seq_mean_token_mean_hand_value():
    """Sequence means 6/3 = 2 and 4/1 = 4 ⇒ (2 + 4)/2 = 3; global_sequences = 4 ⇒ 6/4 = 1.5."""
    assert_close(aggregate(LOSS, MASK, "seq-mean-token-mean"), torch.tensor(3.0))
    assert_close(aggregate(LOSS, MASK, "seq-mean-token-mean", global_sequences=4), torch.tensor(1.5))


def test_seq_mean_token_sum_norm_hand_value():
    """Dr. GRPO with constant 3: (6/3 + 4/3)/2 = (2 + 1.3333333)/2 = 1.6666667."""
    assert_close(aggregate(LOSS, MASK, "seq-mean-token-sum-norm", constant_normaliser=3), torch.tensor(5 / 3))


def test_rows_without_tokens_are_not_counted_as_sequences():
    """[[1, 2], [pad, pad]]: one real sequence with mean 1.5; the empty row must not halve it."""
    loss = torch.tensor([[1.0, 2.0], [7.0, 7.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert_close(aggregate(loss, mask, "seq-mean-token-mean"), torch.tensor(1.5))
    assert_close(aggregate(loss, mask, "seq-mean-token-sum-norm", constant_normaliser=2), torch.tensor(1.5))


def _token_losses(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-token loss (x_bt · w)² of a tiny parameter w (D,); x (B, T, D)."""
    return (x @ w) ** 2


@pytest.mark.parametrize(
    "mode,kwargs_for",
    [
        ("token-mean", lambda m: {"global_tokens": float(m.sum())}),
        ("seq-mean-token-mean", lambda m: {"global_sequences": float(m.any(1).sum())}),
        ("seq-mean-token-sum-norm", lambda m: {"global_sequences": float(m.any(1).sum()), "constant_normaliser": 6.0}),
    ],
)
def test_gradient_accumulation_1x4_equals_2x2_equals_4x1(mode, kwargs_for):
    """Each micro-batch divides by the *global* count, so summed micro-batch gradients equal the
    full-batch gradient whatever the split. Sequence lengths 6, 1, 3, 2 make a per-micro-batch
    token mean visibly wrong (checked at the end, so the test can fail)."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, 3)
    mask = torch.zeros(4, 6)
    for row, length in enumerate([6, 1, 3, 2]):
        mask[row, :length] = 1
    w = torch.randn(3, requires_grad=True)
    global_kwargs = kwargs_for(mask)
    # the full batch uses its own counts; only the Dr. GRPO constant is passed through
    full_kwargs = {k: v for k, v in global_kwargs.items() if k == "constant_normaliser"}

    (full,) = torch.autograd.grad(aggregate(_token_losses(w, x), mask, mode, **full_kwargs), w)
    for micro in (1, 2, 4):
        accumulated = torch.zeros(3)
        for start in range(0, 4, micro):
            xs, ms = x[start : start + micro], mask[start : start + micro]
            (g,) = torch.autograd.grad(aggregate(_token_losses(w, xs), ms, mode, **global_kwargs), w)
            accumulated += g
        assert_close(accumulated, full)

    if mode == "token-mean":
        naive = sum(
            torch.autograd.grad(aggregate(_token_losses(w, x[s : s + 2]), mask[s : s + 2], mode), w)[0] / 2
            for s in (0, 2)
        )
        assert not torch.allclose(naive, full)


def test_padding_values_never_influence_result_or_gradient():
    torch.manual_seed(1)
    base = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    results = []
    for pad in (0.0, NAN, float("inf"), -5.0):
        loss = torch.where(mask.bool(), base, torch.full_like(base, pad)).requires_grad_(True)
        for mode in AGGREGATIONS:
            value = aggregate(loss, mask, mode, constant_normaliser=5.0)
            (g,) = torch.autograd.grad(value, loss)
            results.append((mode, value.detach(), g))
    by_mode: dict = {}
    for mode, value, g in results:
        if mode in by_mode:
            assert_close(value, by_mode[mode][0])
            assert_close(g, by_mode[mode][1])
        else:
            by_mode[mode] = (value, g)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match=r"unknown aggregation mode 'mean'.*token-mean"):
        aggregate(LOSS, MASK, "mean")
    with pytest.raises(ValueError, match="needs constant_normaliser"):
        aggregate(LOSS, MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="global_tokens must be > 0"):
        aggregate(LOSS, MASK, "token-mean", global_tokens=0)
    with pytest.raises(ValueError, match="mask has shape"):
        aggregate(LOSS, torch.ones(2, 2), "token-mean")
