"""Importance weights for the sampler–trainer mismatch: truncated (TIS) and masked (MIS) importance sampling.

A separate rollout engine (vLLM, Ray workers) samples from the same weights as the trainer but
with other kernels, another precision, another batch layout, so its probabilities μ(y_t) are
not exactly the trainer's π_old(y_t). The rollouts are then slightly off-policy, and the
policy gradient, an expectation under π_old, is estimated from samples of μ. The correction
weighs each token's loss by the importance ratio ρ = π_old / μ, capped so that a token the
sampler found much less likely than the trainer does cannot dominate the update:

    token level     w_t = f(exp(log π_old(y_t) − log μ(y_t)))                       per token
    sequence level  w   = f(exp(Σ_t [log π_old(y_t) − log μ(y_t)]))                 one per sequence,
                                                                                     on all its tokens
    truncate (TIS)  f(ρ) = min(ρ, C)
    mask (MIS)      f(ρ) = ρ · 1[ρ ≤ C]                                              outliers dropped

The PPO/GRPO ratio of the update is then taken against the trainer's own π_old (recomputed by
the trainer), and the weight multiplies the per-token surrogate loss, detached: ``w · ℓ_t``.
Sequence level is the unbiased ratio of a whole trajectory (its variance grows with length);
token level is the per-token approximation, biased but of low variance, and what TIS proposes.

Sources:
- Yao, Liu, Zhang, Chen, Gao et al. (2025), "Your Efficient RL Framework Secretly Brings You
  Off-Policy RL Training" (blog, fengyao.notion.site/off-policy-rl): token-level truncated
  importance sampling, ``min(π_trainer / π_sampler, C)`` on the policy-gradient loss, C = 2.
- verl, "Rollout Correction" docs (``algorithm.rollout_correction.rollout_is: token | sequence``,
  ``rollout_is_threshold`` = 2.0, weights clamped from above; the ratio's exponent bounded by
  ±20); TRL's ``GRPOConfig.vllm_importance_sampling_mode`` (``token_truncate``,
  ``sequence_truncate``, ``token_mask``, ``sequence_mask``), whose mask modes keep ρ where ρ ≤ C
  and zero it above, as here.

Shapes: B sequences, T tokens on the shifted axis. ``old_logp``, ``sampler_logp`` and ``mask``
are (B, T); positions outside the mask are ignored (a garbage log-prob there changes nothing)
and get weight 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.algorithms.masked import check_mask, masked_fill_zero, masked_mean, masked_sum

__all__ = ["CORRECTION_LEVELS", "CORRECTION_MODES", "ImportanceWeights", "importance_weights"]

CORRECTION_LEVELS = ("token", "sequence")
CORRECTION_MODES = ("truncate", "mask")

# exp() of a log-ratio beyond ±20 (a factor of ~5e8) carries no information and can overflow
# (a sequence-level sum over thousands of tokens easily does); verl bounds it the same way.
MAX_LOG_RATIO = 20.0


@dataclass(frozen=True)
class ImportanceWeights:
    """The per-token correction weights and their statistics (0-d tensors: no device sync)."""

    weights: torch.Tensor  # (B, T) detached; 0 outside the mask
    mean: torch.Tensor  # mean weight over the valid tokens
    truncated_fraction: torch.Tensor  # fraction of valid tokens whose ratio exceeded the cap
    #                                   (truncated to C, or masked to 0 in mode "mask")


def importance_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, *,
                       level: Literal["token", "sequence"] = "token", cap: float = 2.0,
                       mode: Literal["truncate", "mask"] = "truncate") -> ImportanceWeights:
    """The weights ``f(π_old / μ)`` of the module docstring.

    Args:
        old_logp: (B, T) the trainer's log-probs of the sampled tokens (the update's π_old).
        sampler_logp: (B, T) the engine's log-probs of the same tokens (μ).
        mask: (B, T) bool or 0/1: the tokens trained on.
        level: "token" (a ratio per token) or "sequence" (the product over the sequence's valid
            tokens, broadcast over them).
        cap: C, > 0.
        mode: "truncate" (min(ρ, C)) or "mask" (ρ where ρ ≤ C, else 0).

    Both statistics are over the valid tokens (a sequence-level weight counts once per token), so
    they average across micro-batches and ranks with the same token shares as the loss.
    """
    if level not in CORRECTION_LEVELS:
        raise ValueError(f"importance correction level must be one of {CORRECTION_LEVELS}, got {level!r}")
    if mode not in CORRECTION_MODES:
        raise ValueError(f"importance correction mode must be one of {CORRECTION_MODES}, got {mode!r}")
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap < math.exp(MAX_LOG_RATIO):
        raise ValueError(f"importance correction cap must be a number in (0, e^{MAX_LOG_RATIO:g}), got {cap!r}")
    if sampler_logp.shape != old_logp.shape:
        raise ValueError(f"sampler_logp has shape {tuple(sampler_logp.shape)} but old_logp has shape "
                         f"{tuple(old_logp.shape)}")
    m = check_mask(mask, old_logp, like_name="old_logp")
    log_ratio = masked_fill_zero(old_logp.detach().float() - sampler_logp.detach().float(), m)
    if level == "sequence":
        log_ratio = masked_sum(log_ratio, m, dim=1).unsqueeze(1).expand_as(log_ratio)
    ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    over = (ratio > cap) & m
    if mode == "truncate":
        weights = ratio.clamp(max=cap)
    else:
        weights = torch.where(over, torch.zeros_like(ratio), ratio)
    weights = masked_fill_zero(weights, m)
    return ImportanceWeights(weights=weights, mean=masked_mean(weights, m),
                             truncated_fraction=masked_mean(over.float(), m))
