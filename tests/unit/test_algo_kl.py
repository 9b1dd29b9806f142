"""KL estimators (Schulman 2020) against hand-worked values."""

import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.kl import KL_ESTIMATORS, kl_estimate, kl_k1, kl_k2, kl_k3


def test_k1_k2_k3_hand_values():
    """logp = [-1, -2], ref = [-1.5, -1]  ⇒  δ = ref − logp = [-0.5, 1].

    k1 = logp − ref      = [0.5, -1]
    k2 = ½ (logp − ref)² = [0.125, 0.5]
    k3 = e^δ − δ − 1     = [e^-0.5 + 0.5 − 1, e^1 − 1 − 1] = [0.1065307, 0.7182818]
    """
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    assert_close(kl_estimate(logp, ref, "k1"), torch.tensor([[0.5, -1.0]]))
    assert_close(kl_estimate(logp, ref, "k2"), torch.tensor([[0.125, 0.5]]))
    assert_close(kl_estimate(logp, ref, "k3"), torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0]]))


def test_all_estimators_zero_when_policy_equals_reference():
    logp = torch.tensor([[-0.1, -3.0, -7.5], [-1.0, -2.0, -0.5]])
    for kind in ("k1", "k2", "k3"):
        assert_close(kl_estimate(logp, logp.clone(), kind), torch.zeros_like(logp))


def test_k3_and_k2_never_negative_even_for_extreme_ratios():
    torch.manual_seed(0)
    logp = torch.randn(64, 32) * 30.0  # log-ratios far beyond the ±20 clamp too
    ref = torch.randn(64, 32) * 30.0
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k2(logp, ref) >= 0).all()
    assert torch.isfinite(kl_k3(logp, ref)).all()


def test_expectations_under_policy_match_exact_kl():
    """Exact expectation over a 3-token vocabulary, no sampling.

    π = [0.5, 0.3, 0.2], ref = [0.2, 0.5, 0.3]
    KL(π‖ref) = 0.5 ln 2.5 + 0.3 ln 0.6 + 0.2 ln(2/3)
              = 0.4581454 − 0.1532477 − 0.0810930 = 0.2238047
    E_π[k1] = KL (k1 is the integrand); E_π[k3] = E_π[ref/π] − 1 + KL = 1 − 1 + KL = KL.
    k2 is biased: E_π[k2] = ½ Σ π (ln π/ref)² = ½(0.5·0.8395887 + 0.3·0.2609428 + 0.2·0.1644019)
                                              = ½(0.4197944 + 0.0782828 + 0.0328804) = 0.2654788 ≠ KL.
    """
    pi = torch.tensor([0.5, 0.3, 0.2])
    ref = torch.tensor([0.2, 0.5, 0.3])
    lp, lr = pi.log().unsqueeze(0), ref.log().unsqueeze(0)
    expected_kl = torch.tensor(0.2238047)
    assert_close((pi * kl_k1(lp, lr)).sum(), expected_kl)
    assert_close((pi * kl_k3(lp, lr)).sum(), expected_kl)
    assert_close((pi * kl_k2(lp, lr)).sum(), torch.tensor(0.2654788))


def test_mask_zeroes_padding_and_padding_garbage_cannot_leak():
    logp = torch.tensor([[-1.0, -2.0, float("-inf")]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, float("nan")]])
    mask = torch.tensor([[1, 1, 0]])
    out = kl_estimate(logp, ref, "k3", mask=mask)
    assert_close(out, torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]]))
    out.sum().backward()
    # d k3 / d logp = 1 − e^δ: [1 − e^-0.5, 1 − e] on valid tokens, exactly 0 on padding.
    assert_close(logp.grad, torch.tensor([[1 - math.exp(-0.5), 1 - math.e, 0.0]]))


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'.*k1.*k2.*k3"):
        kl_estimate(torch.zeros(1, 2), torch.zeros(1, 2), "k4")
    with pytest.raises(ValueError, match="ref_logp has shape"):
        kl_estimate(torch.zeros(1, 2), torch.zeros(1, 3), "k1")
    with pytest.raises(ValueError, match="mask has shape"):
        kl_estimate(torch.zeros(1, 2), torch.zeros(1, 2), "k1", mask=torch.ones(1, 3))


def test_kind_accepts_import_path():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-2.0]])
    assert_close(kl_estimate(logp, ref, "posttrain.algorithms.kl:kl_k2"), torch.tensor([[0.5]]))
    assert set(KL_ESTIMATORS) >= {"k1", "k2", "k3"}
