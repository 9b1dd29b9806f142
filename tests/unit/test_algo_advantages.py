"""Advantage estimators against hand-worked numbers, plus the equivalences between them."""

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.advantages import (
    dr_grpo_advantages,
    gae,
    group_stats,
    grpo_advantages,
    keep_mask_for_informative_groups,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    reward_to_go,
    rloo_advantages,
    sequence_to_token_rewards,
    whiten,
)

NAN = float("nan")


# ---------------------------------------------------------------- GRPO / Dr. GRPO / RLOO
def test_grpo_hand_values_sample_std():
    """Group 1: [1, 0, 0, 1]: mean ½, deviations ±½, sample var = 4·¼/3 = ⅓, std = 0.5773503
         ⇒ A = ±½/0.5773503 = ±0.8660254.
    Group 2: [2, 0, 1, 1]: mean 1, deviations [1, −1, 0, 0], sample var = 2/3, std = 0.8164966
         ⇒ A = [1.2247449, −1.2247449, 0, 0].
    eps = 0 so the numbers are exact.
    """
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0])
    expected = torch.tensor([0.8660254, -0.8660254, -0.8660254, 0.8660254, 1.2247449, -1.2247449, 0.0, 0.0])
    assert_close(grpo_advantages(rewards, 4, eps=0.0), expected)
    # the default eps = 1e-6 moves these by less than 2e-6
    assert_close(grpo_advantages(rewards, 4), expected, atol=2e-6, rtol=0)


def test_dr_grpo_hand_values_and_equals_grpo_without_scale():
    """Dr. GRPO on [1, 0, 0, 1]: A = r − ½ = [½, −½, −½, ½]."""
    assert_close(dr_grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4), torch.tensor([0.5, -0.5, -0.5, 0.5]))
    torch.manual_seed(0)
    rewards = torch.randn(12)
    assert_close(grpo_advantages(rewards, 3, scale=False), dr_grpo_advantages(rewards, 3))


def test_rloo_hand_values_and_equals_scaled_centred_reward():
    """RLOO on [1, 0, 0, 1]: A_0 = 1 − (0+0+1)/3 = ⅔, A_1 = 0 − (1+0+1)/3 = −⅔ … = [⅔, −⅔, −⅔, ⅔],
    which is G/(G−1)·(r − mean) = 4/3·(±½)."""
    assert_close(rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4), torch.tensor([2, -2, -2, 2]) / 3.0)
    torch.manual_seed(1)
    G = 5
    rewards = torch.randn(4 * G)
    grouped = rewards.view(-1, G)
    expected = (G / (G - 1) * (grouped - grouped.mean(dim=1, keepdim=True))).reshape(-1)
    assert_close(rloo_advantages(rewards, G), expected)


@pytest.mark.parametrize("estimator", [grpo_advantages, dr_grpo_advantages, rloo_advantages])
def test_identical_reward_groups_give_exactly_zero(estimator):
    """Six copies of 0.3 (float32): the mean is off by ~3e-8, so a naive (r − mean)/(std + eps)
    gives ~0.03, not 0. Groups with identical rewards must give exactly 0."""
    rewards = torch.tensor([0.3] * 6 + [1.0] * 6 + [0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    naive = (rewards[:6] - rewards[:6].mean()) / (rewards[:6].std() + 1e-6)
    assert naive.abs().max() > 1e-3  # the trap is real
    out = estimator(rewards, 6)
    assert torch.equal(out[:12], torch.zeros(12))
    assert out[12:].abs().sum() > 0


def test_group_estimators_reject_bad_input():
    with pytest.raises(ValueError, match=r"6 entries, not a multiple of group_size=4"):
        grpo_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match=r"entry 2 is nan"):
        grpo_advantages(torch.tensor([1.0, 0.0, NAN, 1.0]), 2)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        grpo_advantages(torch.zeros(2, 2), 2)


# ---------------------------------------------------------------- whiten
def test_whiten_population_variance_over_valid_tokens():
    """Valid values 1, 2, 3, 4: mean 2.5, population var (2.25+0.25+0.25+2.25)/4 = 1.25, std 1.1180340
    ⇒ [−1.3416408, −0.4472136, 0.4472136, 1.3416408]; shift_mean=False adds 2.5 back."""
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, NAN, -7.0, 1e6]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    z = torch.tensor([-1.3416408, -0.4472136, 0.4472136, 1.3416408])
    expected = torch.tensor([[z[0], z[1], z[2], 0.0], [z[3], 0.0, 0.0, 0.0]])
    assert_close(whiten(x, mask), expected)
    shifted = torch.tensor([[z[0] + 2.5, z[1] + 2.5, z[2] + 2.5, 0.0], [z[3] + 2.5, 0.0, 0.0, 0.0]])
    assert_close(whiten(x, mask, shift_mean=False), shifted)


# ---------------------------------------------------------------- GAE
def test_gae_hand_values():
    """rewards [0, 0, 1], values [0.5, 0.6, 0.7], γ = 0.9, λ = 0.8 (γλ = 0.72), V after the end = 0:
    δ_2 = 1 + 0.9·0 − 0.7 = 0.3                      A_2 = 0.3
    δ_1 = 0 + 0.9·0.7 − 0.6 = 0.03                   A_1 = 0.03 + 0.72·0.3   = 0.246
    δ_0 = 0 + 0.9·0.6 − 0.5 = 0.04                   A_0 = 0.04 + 0.72·0.246 = 0.21712
    returns = A + V = [0.71712, 0.846, 1.0]
    """
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 0.9, 0.8)
    assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3]]))
    assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0]]))


def test_gae_padding_and_interior_holes_never_influence_results():
    """Same episode with trailing padding, and with a masked tool-output token in the middle:
    masked positions are skipped (the next *valid* token is t+1) and hold exactly 0."""
    r = torch.tensor([[0.0, 0.0, 1.0, 5.0, NAN], [0.0, 9.0, 0.0, 1.0, -3.0]])
    v = torch.tensor([[0.5, 0.6, 0.7, NAN, 42.0], [0.5, -8.0, 0.6, 0.7, 11.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]])
    adv, ret = gae(r, v, mask, gamma=0.9, lam=0.8)
    assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3, 0, 0], [0.21712, 0, 0.246, 0.3, 0]]))
    assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0, 0, 0], [0.71712, 0, 0.846, 1.0, 0]]))


def test_gae_lambda1_gamma1_zero_values_is_reward_to_go():
    """rewards [1, 2, 3] ⇒ reward-to-go [6, 5, 3]; with values [0.5, 0.6, 0.7] and λ = γ = 1 the
    advantage is the Monte-Carlo return minus V: [6 − 0.5, 5 − 0.6, 3 − 0.7]."""
    r = torch.tensor([[1.0, 2.0, 3.0]])
    m = torch.ones(1, 3)
    adv, ret = gae(r, torch.zeros(1, 3), m, gamma=1.0, lam=1.0)
    assert_close(adv, torch.tensor([[6.0, 5.0, 3.0]]))
    assert_close(reward_to_go(r, m), torch.tensor([[6.0, 5.0, 3.0]]))
    adv_v, ret_v = gae(r, torch.tensor([[0.5, 0.6, 0.7]]), m, gamma=1.0, lam=1.0)
    assert_close(adv_v, torch.tensor([[5.5, 4.4, 2.3]]))
    assert_close(ret_v, torch.tensor([[6.0, 5.0, 3.0]]))


def test_gae_rejects_bad_input():
    with pytest.raises(ValueError, match="must both be"):
        gae(torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="gamma and lam"):
        gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), gamma=1.5)


# ---------------------------------------------------------------- REINFORCE++
def test_sequence_to_token_rewards_places_reward_on_last_token_and_subtracts_kl():
    """rewards [1, 2], β = 0.5, kl [[.1, .2, 9], [.3, .4, .5]], row 0 has 2 valid tokens:
    row 0: [−.05, 1 − .1, 0]            = [−0.05, 0.9, 0]
    row 1: [−.15, −.2, 2 − .25]         = [−0.15, −0.2, 1.75]"""
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rewards = torch.tensor([1.0, 2.0])
    assert_close(sequence_to_token_rewards(rewards, mask), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]))
    kl = torch.tensor([[0.1, 0.2, 9.0], [0.3, 0.4, 0.5]])
    expected = torch.tensor([[-0.05, 0.9, 0.0], [-0.15, -0.2, 1.75]])
    assert_close(sequence_to_token_rewards(rewards, mask, kl, 0.5), expected)
    with pytest.raises(ValueError, match="row 1 of mask has no response tokens"):
        sequence_to_token_rewards(rewards, torch.tensor([[1, 0], [0, 0]]))


def test_reinforce_pp_hand_values_with_kl_in_reward():
    """rewards [1, 0], β = 0.5, kl row 0 [0.2, 0, 0.4], row 1 [0.2, 0.2, pad]:
    token rewards  row 0: [−0.1, 0, 1 − 0.2] = [−0.1, 0, 0.8]   row 1: [−0.1, −0.1]
    returns (γ=1)  row 0: [0.7, 0.8, 0.8]                         row 1: [−0.2, −0.1]
    global mean (0.7+0.8+0.8−0.2−0.1)/5 = 0.4; deviations [0.3, 0.4, 0.4, −0.6, −0.5];
    population var (0.09+0.16+0.16+0.36+0.25)/5 = 0.204, std 0.4516636
    ⇒ [0.6642112, 0.8856149, 0.8856149], [−1.3284223, −1.1070186]"""
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    kl = torch.tensor([[0.2, 0.0, 0.4], [0.2, 0.2, 7.0]])
    out = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), mask, kl=kl, kl_coef=0.5)
    expected = torch.tensor([[0.6642112, 0.8856149, 0.8856149], [-1.3284223, -1.1070186, 0.0]])
    assert_close(out, expected)


def test_reinforce_pp_baseline_hand_values():
    """rewards [1, 0 | 0, 0], G = 2, one token each: group-centred [½, −½, 0, 0] (second group is
    uniform), global mean 0, population var (¼+¼)/4 = ⅛, std 0.3535534 ⇒ [√2, −√2, 0, 0]."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    mask = torch.ones(4, 1)
    expected = torch.tensor([[1.4142136], [-1.4142136], [0.0], [0.0]])
    assert_close(reinforce_pp_baseline_advantages(rewards, mask, 2), expected)
    assert_close(reinforce_pp_advantages(rewards, mask, groups=2), expected)


def test_reinforce_pp_padding_values_do_not_matter():
    torch.manual_seed(2)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    kl = torch.rand(4, 4)
    kl_garbage = torch.where(mask.bool(), kl, torch.full_like(kl, 1e4))
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    a = reinforce_pp_advantages(rewards, mask, kl=kl, kl_coef=0.1, groups=2)
    b = reinforce_pp_advantages(rewards, mask, kl=kl_garbage, kl_coef=0.1, groups=2)
    assert_close(a, b)
    assert torch.equal(a[~mask.bool()], torch.zeros(int((~mask.bool()).sum())))


# ---------------------------------------------------------------- group statistics / dynamic sampling
def test_group_stats_and_keep_mask():
    """Groups (G = 4): [1,0,0,1] informative, [1,1,1,1] and [0,0,0,0] uniform.
    frac_uniform = 2/3; reward mean 6/12 = ½; within-group sample std mean = (√⅓ + 0 + 0)/3 = 0.1924501."""
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    stats = group_stats(rewards, 4)
    assert (stats.num_groups, stats.num_uniform) == (3, 2)
    assert stats.frac_uniform == pytest.approx(2 / 3)
    assert stats.reward_mean == pytest.approx(0.5)
    assert stats.reward_std_within_group == pytest.approx(0.1924501, abs=1e-6)
    keep = keep_mask_for_informative_groups(rewards, 4)
    assert keep.tolist() == [True] * 4 + [False] * 8
