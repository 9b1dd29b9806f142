"""PPO-clip (with clip-higher and dual-clip), GSPO and DAPO overlong shaping, worked by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.aggregation import aggregate
from posttrain.algorithms.policy_loss import gspo_loss, overlong_penalty, ppo_clip_loss

LN = math.log


def _tokens(ratios, advantages):
    """One sequence whose tokens have the given ratios ρ (old_logp = 0, logp = ln ρ)."""
    logp = torch.tensor([[LN(r) for r in ratios]], requires_grad=True)
    return logp, torch.zeros_like(logp), torch.tensor([advantages]), torch.ones(1, len(ratios))


def test_ppo_clip_hand_values_stats_and_gradient():
    """ε = 0.2, loss = max(−ρA, −clip(ρ, 0.8, 1.2)A):
    (ρ=1.5, A=+1): max(−1.5, −1.2) = −1.2   clipped (high), gradient 0
    (ρ=0.5, A=+1): max(−0.5, −0.8) = −0.5   d/dlogp = −ρA = −0.5
    (ρ=0.5, A=−1): max( 0.5,  0.8) =  0.8   clipped (low), gradient 0
    (ρ=1.5, A=−1): max( 1.5,  1.2) =  1.5   d/dlogp = 1.5
    (ρ=1.0, A=+2): −2                       d/dlogp = −2
    clip_frac = 2/5, low = high = 1/5.
    approx_kl = mean(ρ − 1 − ln ρ) = (2·0.0945349 + 2·0.1931472 + 0)/5 = 0.1150728.
    """
    logp, old, adv, mask = _tokens([1.5, 0.5, 0.5, 1.5, 1.0], [1.0, 1.0, -1.0, -1.0, 2.0])
    out = ppo_clip_loss(logp, old, adv, mask, eps_low=0.2)
    assert_close(out.loss, torch.tensor([[-1.2, -0.5, 0.8, 1.5, -2.0]]))
    assert_close(out.ratio, torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.0]]))
    assert_close(out.clip_frac, torch.tensor(0.4))
    assert_close(out.clip_frac_low, torch.tensor(0.2))
    assert_close(out.clip_frac_high, torch.tensor(0.2))
    assert_close(out.dual_clip_frac, torch.tensor(0.0))
    assert_close(out.approx_kl, torch.tensor(0.1150728))
    out.loss.sum().backward()
    assert_close(logp.grad, torch.tensor([[0.0, -0.5, 0.0, 1.5, -2.0]]))


def test_clip_higher_lets_positive_advantage_tokens_grow_further():
    """DAPO clip-higher ε_low = 0.2, ε_high = 0.6: (ρ=1.5, A=1) → max(−1.5, −1.5) = −1.5, no longer
    clipped; (ρ=0.5, A=−1) still clipped at 0.8 on the low side."""
    logp, old, adv, mask = _tokens([1.5, 0.5], [1.0, -1.0])
    out = ppo_clip_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.6)
    assert_close(out.loss, torch.tensor([[-1.5, 0.8]]))
    assert_close(out.clip_frac_high, torch.tensor(0.0))
    assert_close(out.clip_frac_low, torch.tensor(0.5))


def test_dual_clip_caps_negative_advantage_loss():
    """c = 3, A = −1: ρ = 4 → PPO loss max(4, 1.2) = 4, capped at −cA = 3 (gradient 0);
    ρ = 2 → loss 2 < 3, untouched (gradient −ρA = 2); A = +1, ρ = 4 → −1.2 (dual clip only for A < 0)."""
    logp, old, adv, mask = _tokens([4.0, 2.0, 4.0], [-1.0, -1.0, 1.0])
    out = ppo_clip_loss(logp, old, adv, mask, eps_low=0.2, dual_clip=3.0)
    assert_close(out.loss, torch.tensor([[3.0, 2.0, -1.2]]))
    assert_close(out.dual_clip_frac, torch.tensor(1 / 3))
    out.loss.sum().backward()
    assert_close(logp.grad, torch.tensor([[0.0, 2.0, 0.0]]))


def test_sequence_advantages_broadcast_like_token_advantages():
    torch.manual_seed(0)
    logp, old = torch.randn(3, 4) * 0.3, torch.randn(3, 4) * 0.3
    seq_adv = torch.tensor([1.0, -0.5, 2.0])
    mask = torch.ones(3, 4)
    a = ppo_clip_loss(logp, old, seq_adv, mask).loss
    b = ppo_clip_loss(logp, old, seq_adv[:, None].expand(3, 4), mask).loss
    assert_close(a, b)


@pytest.mark.parametrize("loss_fn", [ppo_clip_loss, gspo_loss])
def test_padding_values_never_influence_loss_or_gradient(loss_fn):
    torch.manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    logp = torch.randn(2, 4) * 0.01
    old = torch.randn(2, 4) * 0.01
    adv = torch.tensor([[1.0, 1.0, 1.0, 5.0], [-1.0, -1.0, 3.0, 3.0]])
    outs, grads = [], []
    for pad in (0.0, float("-inf"), float("nan"), 1e4):
        lp = torch.where(mask.bool(), logp, torch.full_like(logp, pad)).requires_grad_(True)
        od = torch.where(mask.bool(), old, torch.full_like(old, -pad if pad == pad else pad))
        ad = torch.where(mask.bool(), adv, torch.full_like(adv, pad))
        out = loss_fn(lp, od, ad, mask, eps_low=0.2, eps_high=0.2)
        aggregate(out.loss, mask, "token-mean").backward()
        outs.append((out.loss.detach(), out.clip_frac, out.approx_kl))
        grads.append(lp.grad)
    for (loss, cf, kl), g in zip(outs[1:], grads[1:]):
        assert_close(loss, outs[0][0])
        assert_close(cf, outs[0][1])
        assert_close(kl, outs[0][2])
        assert_close(g, grads[0])
    assert torch.equal(grads[0][~mask.bool()], torch.zeros(3))


def test_gspo_hand_values():
    """One sequence, token ratios 1.2 and 0.8: s = exp(½(ln 1.2 + ln 0.8)) = √0.96 = 0.9797959.
    A = +1, ε = (3e-4, 4e-4): s < 1 − 3e-4 but A > 0 ⇒ max(−s, −0.9997) = −s, unclipped;
        every token's loss is −0.9797959; gradient per token (before aggregation) −A·s.
    A = −1: max(s, 0.9997) = 0.9997, clipped on the low side for both tokens, gradient 0."""
    s = math.sqrt(0.96)
    logp = torch.tensor([[LN(1.2), LN(0.8)]], requires_grad=True)
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    out = gspo_loss(logp, old, torch.tensor([1.0]), mask)
    assert_close(out.loss, torch.tensor([[-s, -s]]))
    assert_close(out.ratio, torch.tensor([[s, s]]))
    assert_close(out.clip_frac, torch.tensor(0.0))
    out.loss.sum().backward()
    assert_close(logp.grad, torch.tensor([[-s, -s]]))

    logp.grad = None
    out = gspo_loss(logp, old, torch.tensor([-1.0]), mask)
    assert_close(out.loss, torch.tensor([[0.9997, 0.9997]]))
    assert_close(out.clip_frac_low, torch.tensor(1.0))
    out.loss.sum().backward()
    assert_close(logp.grad, torch.zeros(1, 2))


def test_gspo_with_one_token_per_sequence_equals_ppo_clip():
    torch.manual_seed(2)
    logp = (torch.randn(16, 1) * 0.3).requires_grad_(True)
    old = torch.randn(16, 1) * 0.3
    adv = torch.randn(16)
    mask = torch.ones(16, 1)
    g = gspo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    (grad_g,) = torch.autograd.grad(g.loss.sum(), logp)
    p = ppo_clip_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    (grad_p,) = torch.autograd.grad(p.loss.sum(), logp)
    assert 0 < float(p.clip_frac) < 1  # both branches exercised
    assert_close(g.loss, p.loss)
    assert_close(grad_g, grad_p)
    assert_close(g.clip_frac, p.clip_frac)


def test_gspo_token_form_matches_sequence_objective_value_and_gradient():
    """GSPO-token + seq-mean-token-mean == (1/B) Σ_i −min(s_i A_i, clip(s_i) A_i), s_i computed directly."""
    torch.manual_seed(3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    logp = (torch.randn(5, 4) * 0.2).requires_grad_(True)
    old = torch.randn(5, 4) * 0.2
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.3])
    eps = (0.05, 0.08)
    out = gspo_loss(logp, old, adv, mask, eps_low=eps[0], eps_high=eps[1])
    token_form = aggregate(out.loss, mask, "seq-mean-token-mean")
    (grad_token,) = torch.autograd.grad(token_form, logp)

    m = mask.float()
    s = torch.exp(((logp - old) * m).sum(1) / m.sum(1))
    direct = -torch.minimum(s * adv, s.clamp(1 - eps[0], 1 + eps[1]) * adv).mean()
    (grad_direct,) = torch.autograd.grad(direct, logp)
    clipped = (s < 1 - eps[0]) | (s > 1 + eps[1])
    assert clipped.any() and (~clipped).any()  # both branches exercised
    assert_close(token_form, direct)
    assert_close(grad_token, grad_direct)


def test_loss_argument_errors():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="eps_low"):
        ppo_clip_loss(z, z, torch.zeros(1), torch.ones(1, 2), eps_low=1.0)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo_clip_loss(z, z, torch.zeros(1), torch.ones(1, 2), dual_clip=0.5)
    with pytest.raises(ValueError, match="does not support dual_clip"):
        gspo_loss(z, z, torch.zeros(1), torch.ones(1, 2), dual_clip=3.0)
    with pytest.raises(ValueError, match=r"advantages must be \(B,\) or \(B, T\)"):
        ppo_clip_loss(z, z, torch.zeros(3), torch.ones(1, 2))
    with pytest.raises(ValueError, match="old_logp has shape"):
        ppo_clip_loss(z, torch.zeros(1, 3), torch.zeros(1), torch.ones(1, 2))


def test_overlong_penalty_hand_values():
    """L_max = 10, L_cache = 4 ⇒ free up to 6 tokens, then (6 − |y|)/4, then −1 past 10:
    |y| = 5, 6, 7, 8, 10, 11  →  0, 0, −0.25, −0.5, −1, −1."""
    out = overlong_penalty(torch.tensor([5, 6, 7, 8, 10, 11]), max_len=10, cache_len=4)
    assert_close(out, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    # no cache: a hard cliff past L_max
    assert_close(overlong_penalty(torch.tensor([10, 11]), max_len=10, cache_len=0), torch.tensor([0.0, -1.0]))
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(torch.tensor([1]), max_len=10, cache_len=11)
