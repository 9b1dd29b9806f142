"""Bradley–Terry reward-model loss (margin, centring, accumulation normaliser), worked by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.reward_model import bradley_terry_loss

# Three pairs: r_c − r_r = [2, 0, −2].
CHOSEN = [2.0, 0.0, 1.0]
REJECTED = [0.0, 0.0, 3.0]


def softplus(x: float) -> float:
    """−log σ(−x) = log(1 + e^x), by hand."""
    return math.log1p(math.exp(x))


def test_plain_bradley_terry_hand_values():
    """−log σ(d) = log(1 + e^(−d)): d = 2 → log(1 + e^−2), d = 0 → log 2, d = −2 → log(1 + e^2).
    Accuracy counts r_c > r_r strictly: only the first pair → 1/3. Margin mean (2 + 0 − 2)/3 = 0.
    Mean reward (2 + 0 + 1 + 0 + 0 + 3)/6 = 1."""
    out = bradley_terry_loss(torch.tensor(CHOSEN), torch.tensor(REJECTED))
    expected = (softplus(-2.0) + math.log(2.0) + softplus(2.0)) / 3
    assert_close(out.loss, torch.tensor(expected))
    assert_close(out.accuracy, torch.tensor(1 / 3))
    assert_close(out.margin, torch.tensor(0.0))
    assert_close(out.mean_reward, torch.tensor(1.0))
    assert_close(out.chosen_reward, torch.tensor(1.0))
    assert_close(out.rejected_reward, torch.tensor(1.0))


def test_gradient_is_minus_sigmoid_of_minus_difference():
    """∂/∂r_c of −log σ(r_c − r_r) = −σ(−d), ∂/∂r_r = +σ(−d); each divided by B = 3.
    d = 2: σ(−2) = 1/(1 + e^2); d = 0: ½; d = −2: σ(2) = 1/(1 + e^−2)."""
    chosen = torch.tensor(CHOSEN, requires_grad=True)
    rejected = torch.tensor(REJECTED, requires_grad=True)
    bradley_terry_loss(chosen, rejected).loss.backward()
    s = [1 / (1 + math.exp(2.0)), 0.5, 1 / (1 + math.exp(-2.0))]
    assert_close(chosen.grad, torch.tensor([-v / 3 for v in s]))
    assert_close(rejected.grad, torch.tensor([v / 3 for v in s]))


def test_per_pair_margin_llama2():
    """Margins [1, 0, −2]: d − m = [1, 0, 0] → (log(1 + e^−1) + log 2 + log 2)/3.
    The reported margin/accuracy are of r_c − r_r itself, unchanged by m."""
    out = bradley_terry_loss(torch.tensor(CHOSEN), torch.tensor(REJECTED), margin=torch.tensor([1.0, 0.0, -2.0]))
    assert_close(out.loss, torch.tensor((softplus(-1.0) + 2 * math.log(2.0)) / 3))
    assert_close(out.accuracy, torch.tensor(1 / 3))
    # A float margin applies to every pair: m = 2 → d − m = [0, −2, −4].
    out = bradley_terry_loss(torch.tensor(CHOSEN), torch.tensor(REJECTED), margin=2.0)
    assert_close(out.loss, torch.tensor((math.log(2.0) + softplus(2.0) + softplus(4.0)) / 3))


def test_centring_term_eisenstein():
    """η = 0.01, (r_c + r_r)² = [4, 0, 16] → adds 0.01·20/3 to the plain loss; its gradient on
    pair 3 is 2η(r_c + r_r)/3 = 2·0.01·4/3 on both rewards."""
    chosen = torch.tensor(CHOSEN, requires_grad=True)
    rejected = torch.tensor(REJECTED, requires_grad=True)
    out = bradley_terry_loss(chosen, rejected, centering_coef=0.01)
    plain = (softplus(-2.0) + math.log(2.0) + softplus(2.0)) / 3
    assert_close(out.loss, torch.tensor(plain + 0.01 * 20 / 3))
    out.loss.backward()
    sigma = 1 / (1 + math.exp(-2.0))
    assert_close(chosen.grad[2], torch.tensor(-sigma / 3 + 2 * 0.01 * 4 / 3))
    assert_close(rejected.grad[2], torch.tensor(sigma / 3 + 2 * 0.01 * 4 / 3))


def test_num_pairs_makes_accumulation_exact():
    """Summed over micro-batches of 1 + 2 pairs, each divided by num_pairs = 3, the loss and the
    gradient equal those of the whole batch of 3."""
    chosen = torch.tensor(CHOSEN, requires_grad=True)
    rejected = torch.tensor(REJECTED, requires_grad=True)
    whole = bradley_terry_loss(chosen, rejected, centering_coef=0.1)
    whole.loss.backward()
    grads = chosen.grad.clone(), rejected.grad.clone()
    chosen.grad = rejected.grad = None
    parts = [bradley_terry_loss(chosen[s], rejected[s], centering_coef=0.1, num_pairs=3)
             for s in (slice(0, 1), slice(1, 3))]
    total = parts[0].loss + parts[1].loss
    total.backward()
    assert_close(total, whole.loss)
    assert_close(chosen.grad, grads[0])
    assert_close(rejected.grad, grads[1])


def test_large_differences_stay_finite():
    """d = −200: −log σ(−200) = 200 (not inf); d = +200: ≈ e^−200 ≈ 0."""
    out = bradley_terry_loss(torch.tensor([0.0, 200.0]), torch.tensor([200.0, 0.0]))
    assert_close(out.loss, torch.tensor(100.0))


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match=r"must both be \(B,\)"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="no pairs"):
        bradley_terry_loss(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), margin=torch.zeros(2))
    with pytest.raises(ValueError, match="centering_coef"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), centering_coef=-1.0)
    with pytest.raises(ValueError, match="num_pairs"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), num_pairs=0)
