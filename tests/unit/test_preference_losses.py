"""DPO-family losses against values worked out by hand (plain `math`, never the function under test).

Shared worked example, β = 0.5, two pairs of summed log-probs:
    pair 1: policy (chosen −1, rejected −2), reference (−1.5, −1.5)
            log-ratios: chosen +0.5, rejected −0.5  →  h = 1
    pair 2: policy (chosen −3, rejected −1), reference (−2, −2)
            log-ratios: chosen −1, rejected +1      →  h = −2
"""

import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.preference import (
    PREFERENCE_LOSSES, PreferenceInputs, PreferenceLossSpec, PreferenceParams, dpo_loss, get_preference_loss,
    ipo_loss, kto_kl_baseline, kto_loss, log_odds, orpo_loss, register_preference_loss, simpo_loss,
)
from posttrain.config import ConfigError
from posttrain.recipes.preference.dpo import DPOConfig, LossConfig


def softplus(x):
    """−log σ(−x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def pairs(requires_grad=False):
    chosen = torch.tensor([-1.0, -3.0], requires_grad=requires_grad)
    rejected = torch.tensor([-2.0, -1.0], requires_grad=requires_grad)
    return chosen, rejected, torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])


# ----------------------------------------------------------------------------- DPO / cDPO


def test_dpo_hand_values_and_implicit_rewards():
    # loss = −log σ(β h): h = 1 → log(1 + e^−0.5); h = −2 → log(1 + e^1).
    out = dpo_loss(*pairs(), beta=0.5)
    assert_close(out.losses, torch.tensor([softplus(-0.5), softplus(1.0)]))
    assert out.losses[0].item() == pytest.approx(0.474077, abs=1e-6)
    # Rewards β·(log π − log π_ref): chosen (0.25, −0.5), rejected (−0.25, 0.5).
    assert_close(out.chosen_rewards, torch.tensor([0.25, -0.5]))
    assert_close(out.rejected_rewards, torch.tensor([-0.25, 0.5]))


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 10.0])
def test_dpo_with_policy_equal_to_reference_is_log_2_for_any_beta(beta):
    logps = torch.tensor([-7.3, -0.2, -31.0])
    other = torch.tensor([-1.1, -4.0, -2.5])
    out = dpo_loss(logps, other, logps.clone(), other.clone(), beta=beta)
    assert_close(out.losses, torch.full((3,), math.log(2.0)))


def test_dpo_gradient_raises_chosen_and_lowers_rejected_and_never_reaches_the_reference():
    chosen, rejected, ref_c, ref_r = pairs(requires_grad=True)
    ref_c.requires_grad_(True)
    dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.5).losses.sum().backward()
    # dL/dh = −β σ(−β h): pair 1 −0.5 σ(−0.5), pair 2 −0.5 σ(1). dh/dchosen = 1, dh/drejected = −1.
    expected = torch.tensor([-0.5 * sigmoid(-0.5), -0.5 * sigmoid(1.0)])
    assert_close(chosen.grad, expected)
    assert_close(rejected.grad, -expected)
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen, lowers rejected
    assert ref_c.grad is None


def test_cdpo_hand_values_and_epsilon_zero_is_dpo():
    # ε = 0.1: −0.9·log σ(βh) − 0.1·log σ(−βh);
    # for h = 1, β = 0.5: 0.9·log(1+e^−0.5) + 0.1·log(1+e^0.5).
    out = dpo_loss(*pairs(), beta=0.5, label_smoothing=0.1)
    assert_close(out.losses, torch.tensor([0.9 * softplus(-0.5) + 0.1 * softplus(0.5),
                                           0.9 * softplus(1.0) + 0.1 * softplus(-1.0)]))
    params = PreferenceParams(beta=0.5, label_smoothing=0.0)
    inputs = PreferenceInputs(*pairs())
    assert_close(get_preference_loss("cdpo")(inputs, params).losses, get_preference_loss("dpo")(inputs, params).losses)


def test_cdpo_loss_is_minimal_at_a_finite_margin():
    # With ε > 0 the loss no longer decreases forever: its minimum is at σ(βh) = 1 − ε,
    # i.e. βh = log(9) for ε = 0.1.
    h_star = math.log(9.0) / 0.5
    values = [dpo_loss(torch.tensor([h]), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.5,
                       label_smoothing=0.1).losses.item() for h in (h_star - 0.5, h_star, h_star + 0.5)]
    assert values[1] < values[0] and values[1] < values[2]


# ----------------------------------------------------------------------------- IPO


def test_ipo_hand_values_regress_h_onto_one_over_two_tau():
    # τ = 0.25 → target 1/(2τ) = 2: (1 − 2)² = 1 and (−2 − 2)² = 16.
    out = ipo_loss(*pairs(), tau=0.25)
    assert_close(out.losses, torch.tensor([1.0, 16.0]))
    assert_close(out.chosen_rewards, torch.tensor([0.125, -0.25]))  # τ·log-ratio
    # At the target the loss and its gradient vanish; beyond it the gradient pushes h back down.
    at_target = torch.tensor([1.0], requires_grad=True)
    ipo_loss(at_target, torch.tensor([-1.0]), torch.zeros(1), torch.zeros(1), tau=0.25).losses.sum().backward()
    assert at_target.grad.item() == pytest.approx(0.0)
    beyond = torch.tensor([3.0], requires_grad=True)
    ipo_loss(beyond, torch.tensor([-1.0]), torch.zeros(1), torch.zeros(1), tau=0.25).losses.sum().backward()
    assert beyond.grad.item() == pytest.approx(2 * (4.0 - 2.0))  # d/dh (h − 2)² at h = 4


# ----------------------------------------------------------------------------- SimPO


def test_simpo_hand_values():
    # β = 2, γ = 0.5 on *average* log-probs:
    #   (−0.5, −1.0): rewards (−1, −2), −log σ(−1 + 2 − 0.5) = log(1 + e^−0.5)
    #   (−1.2, −0.2): rewards (−2.4, −0.4), −log σ(−2.4 + 0.4 − 0.5) = log(1 + e^2.5)
    chosen = torch.tensor([-0.5, -1.2], requires_grad=True)
    rejected = torch.tensor([-1.0, -0.2], requires_grad=True)
    out = simpo_loss(chosen, rejected, beta=2.0, gamma=0.5)
    assert_close(out.losses, torch.tensor([softplus(-0.5), softplus(2.5)]))
    assert_close(out.chosen_rewards, torch.tensor([-1.0, -2.4]))
    assert_close(out.rejected_rewards, torch.tensor([-2.0, -0.4]))
    out.losses.sum().backward()
    # dL/dchosen = −β σ(−z): pair 1 −2 σ(−0.5).
    assert chosen.grad[0].item() == pytest.approx(-2.0 * sigmoid(-0.5))
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def test_simpo_margin_gamma_raises_the_loss_of_a_tied_pair():
    tied = torch.tensor([-1.0])
    assert simpo_loss(tied, tied, beta=2.0, gamma=0.0).losses.item() == pytest.approx(math.log(2.0))
    assert simpo_loss(tied, tied, beta=2.0, gamma=1.0).losses.item() == pytest.approx(softplus(1.0))


# ----------------------------------------------------------------------------- ORPO


def test_orpo_hand_values():
    # P(y_w) = 0.5 → odds 1 → log odds 0; P(y_l) = 0.2 → odds 0.25.
    # L_OR = −log σ(0 − log 0.25) = −log σ(log 4) = −log(4/5); L_SFT = −log 0.5.
    chosen = torch.tensor([math.log(0.5)], requires_grad=True)
    rejected = torch.tensor([math.log(0.2)], requires_grad=True)
    out = orpo_loss(chosen, rejected, lam=0.1)
    assert out.losses.item() == pytest.approx(math.log(2.0) + 0.1 * math.log(1.25), rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.0, abs=1e-6)
    assert out.rejected_rewards.item() == pytest.approx(math.log(0.25), rel=1e-6)
    out.losses.sum().backward()
    # d/da log odds(a) = 1/(1 − e^a): 2 at P = 0.5, 1.25 at P = 0.2; σ(−log 4) = 1/5.
    assert chosen.grad.item() == pytest.approx(-1.0 - 0.1 * 0.2 * 2.0, rel=1e-5)
    assert rejected.grad.item() == pytest.approx(0.1 * 0.2 * 1.25, rel=1e-5)


def test_orpo_with_lambda_zero_is_the_chosen_nll():
    chosen, rejected = torch.tensor([-0.7, -2.0]), torch.tensor([-0.1, -3.0])
    assert_close(orpo_loss(chosen, rejected, lam=0.0).losses, torch.tensor([0.7, 2.0]))


def test_log_odds_is_stable_near_zero_and_far_out():
    values = log_odds(torch.tensor([0.0, -1e-9, math.log(0.5), -50.0]))
    assert torch.isfinite(values).all()
    assert values[2].item() == pytest.approx(0.0, abs=1e-6)
    assert values[3].item() == pytest.approx(-50.0, abs=1e-6)  # log P − log(1 − P) ≈ log P for tiny P


# ----------------------------------------------------------------------------- KTO


def test_kto_kl_baseline_is_the_clamped_detached_mean_log_ratio():
    kl = torch.tensor([-3.0, -4.0], requires_grad=True)
    z0 = kto_kl_baseline(kl, torch.tensor([-4.0, -4.0]))
    assert z0.item() == pytest.approx(0.5)  # mean(1, 0)
    assert not z0.requires_grad
    assert kto_kl_baseline(torch.tensor([-5.0, -4.0]), torch.tensor([-4.0, -4.0])).item() == 0.0  # mean −0.5 → 0


def test_kto_hand_values_weights_and_gradient_signs():
    # β = 0.5, z0 = 0.5, λ_D = 1, λ_U = 2.
    # desirable: r = −1 − (−2.5) = 1.5 → 1·(1 − σ(0.5·(1.5 − 0.5))) = 1 − σ(0.5)
    # undesirable: r = −3 − (−2) = −1 → 2·(1 − σ(0.5·(0.5 + 1))) = 2(1 − σ(0.75))
    good = torch.tensor([-1.0], requires_grad=True)
    bad = torch.tensor([-3.0], requires_grad=True)
    out = kto_loss(good, bad, torch.tensor([-2.5]), torch.tensor([-2.0]), torch.tensor(0.5), beta=0.5,
                   desirable_weight=1.0, undesirable_weight=2.0)
    assert_close(out.losses, torch.tensor([1 - sigmoid(0.5), 2 * (1 - sigmoid(0.75))]))
    assert_close(out.chosen_rewards, torch.tensor([0.75]))  # β·r
    assert_close(out.rejected_rewards, torch.tensor([-0.5]))
    out.losses.sum().backward()
    # d/dr [λ(1 − σ(β(r − z0)))] = −λβ σ(1 − σ) for desirable; +λβ σ(1 − σ) for undesirable.
    assert good.grad.item() == pytest.approx(-0.5 * sigmoid(0.5) * (1 - sigmoid(0.5)))
    assert bad.grad.item() == pytest.approx(2 * 0.5 * sigmoid(0.75) * (1 - sigmoid(0.75)))


def test_kto_takes_unpaired_examples_of_any_counts():
    out = kto_loss(torch.tensor([-1.0, -2.0, -3.0]), torch.zeros(0), torch.tensor([-1.0, -2.0, -3.0]), torch.zeros(0),
                   0.0, beta=0.1)
    assert_close(out.losses, torch.full((3,), 0.5))  # r = z0 = 0: 1 − σ(0)
    assert out.rejected_rewards.numel() == 0


# ----------------------------------------------------------------------------- registry and config


def test_registry_records_what_each_paper_reduces_and_needs():
    summed = {name for name, spec in PREFERENCE_LOSSES.items() if not spec.length_normalised}
    assert {"dpo", "cdpo", "ipo", "kto"} <= summed
    assert PREFERENCE_LOSSES["simpo"].length_normalised and PREFERENCE_LOSSES["orpo"].length_normalised
    assert not PREFERENCE_LOSSES["simpo"].needs_reference and not PREFERENCE_LOSSES["orpo"].needs_reference
    assert PREFERENCE_LOSSES["kto"].needs_kl_baseline and not PREFERENCE_LOSSES["kto"].paired


def test_registry_adapters_match_the_plain_functions():
    inputs = PreferenceInputs(*pairs(), kl_baseline=torch.tensor(0.0))
    p = PreferenceParams(beta=0.5)
    assert_close(get_preference_loss("ipo")(inputs, p).losses, ipo_loss(*pairs(), tau=0.5).losses)
    assert_close(get_preference_loss("simpo")(inputs, PreferenceParams(beta=2.0, simpo_gamma=0.3)).losses,
                 simpo_loss(*pairs()[:2], beta=2.0, gamma=0.3).losses)
    kto = get_preference_loss("kto")(inputs, p)
    assert kto.losses.shape == (4,)  # two desirable, then two undesirable
    with pytest.raises(ValueError, match="reference"):
        get_preference_loss("dpo")(PreferenceInputs(*pairs()[:2]), p)


def test_unknown_registered_and_imported_losses(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"valid names: \['cdpo', 'dpo'"):
        get_preference_loss("dpp")
    spec = PreferenceLossSpec(lambda inputs, params: simpo_loss(inputs.chosen_logps, inputs.rejected_logps),
                              needs_reference=False, length_normalised=True, defaults={"beta": 1.0})
    register_preference_loss("test_simpo_variant", spec)
    try:
        assert get_preference_loss("test_simpo_variant") is spec
        with pytest.raises(ValueError, match="already registered"):
            register_preference_loss("test_simpo_variant", spec)
    finally:
        del PREFERENCE_LOSSES["test_simpo_variant"]
    (tmp_path / "my_losses.py").write_text(
        "from posttrain.algorithms.preference import PREFERENCE_LOSSES\nMINE = PREFERENCE_LOSSES['ipo']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_preference_loss("my_losses:MINE") is PREFERENCE_LOSSES["ipo"]
    with pytest.raises(ValueError, match="must name a PreferenceLossSpec"):
        get_preference_loss("posttrain.algorithms.preference:dpo_loss")


def test_loss_config_fills_paper_defaults_and_rejects_options_the_loss_ignores():
    spec, params = LossConfig(type="simpo").resolve()
    assert spec is PREFERENCE_LOSSES["simpo"] and params.beta == 2.0 and params.simpo_gamma == 0.5
    assert LossConfig(type="cdpo").resolve()[1].label_smoothing == 0.1
    assert LossConfig(type="dpo", beta=0.3).resolve()[1].beta == 0.3
    with pytest.raises(ConfigError, match=r"loss.label_smoothing does not apply to loss.type=dpo"):
        LossConfig(type="dpo", label_smoothing=0.1).resolve()
    with pytest.raises(ConfigError, match=r"loss.beta does not apply to loss.type=orpo .*loss.orpo_lambda"):
        LossConfig(type="orpo", beta=0.1).resolve()
    with pytest.raises(ConfigError, match=r"loss.label_smoothing must be in \[0, 0.5\)"):
        LossConfig(type="cdpo", label_smoothing=0.5).resolve()
    with pytest.raises(ConfigError, match="loss.type: unknown preference loss 'nope'"):
        LossConfig(type="nope").resolve()
    with pytest.raises(ConfigError, match="examples_per_step"):
        DPOConfig(examples_per_step=10, micro_batch_size=4).validate()
