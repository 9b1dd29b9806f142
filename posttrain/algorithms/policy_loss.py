"""Policy-gradient surrogate losses, per token, plus DAPO's overlong reward shaping.

Shapes: B sequences, T response tokens. `logp` (B, T) are the current policy's log-probs of
the sampled tokens (with gradient); `old_logp` (B, T) those of the policy that sampled them
(or of the policy at the start of this update); `advantages` are (B,) per sequence or (B, T)
per token; `mask` (B, T) marks response tokens. Losses come back per token, (B, T), 0 on
padding, so any aggregation in `aggregation.py` can reduce them.

Inputs are zeroed at padded positions *before* any arithmetic, so a garbage padded log-prob
(−inf, nan) can change neither the loss nor the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.algorithms.kl import kl_k3
from posttrain.algorithms.masked import check_mask, masked_fill_zero, masked_mean, masked_sum

# exp() of a log-ratio beyond ±20 (a factor of ~5e8) carries no information and can overflow.
MAX_LOG_RATIO = 20.0


@dataclass(frozen=True)
class PolicyLossOutput:
    """Per-token loss and detached diagnostics (scalars are 0-d tensors: no GPU sync)."""

    loss: torch.Tensor  # (B, T), 0 at padding; reduce with `aggregate`
    ratio: torch.Tensor  # (B, T) importance ratio used (token ratio, or GSPO's sequence ratio), detached
    clip_frac: torch.Tensor  # fraction of valid tokens whose gradient the clip removed
    clip_frac_low: torch.Tensor  # … because A < 0 and ratio < 1 − eps_low
    clip_frac_high: torch.Tensor  # … because A > 0 and ratio > 1 + eps_high
    dual_clip_frac: torch.Tensor  # fraction of valid tokens capped by the dual clip (A < 0, ratio > c)
    approx_kl: torch.Tensor  # mean k3 estimate of KL(π_old ‖ π_θ) over valid tokens


def _prepare(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate shapes; return (mask bool, logp, old_logp detached, advantages (B, T) detached), zeroed on padding."""
    if logp.dim() != 2:
        raise ValueError(f"logp must have shape (B, T), got {tuple(logp.shape)}")
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp has shape {tuple(old_logp.shape)} but logp has shape {tuple(logp.shape)}")
    m = check_mask(mask, logp, like_name="logp")
    if advantages.dim() == 1 and advantages.shape[0] == logp.shape[0]:
        advantages = advantages.unsqueeze(1).expand_as(logp)
    elif advantages.shape != logp.shape:
        raise ValueError(f"advantages must be (B,) or (B, T) = {tuple(logp.shape)}, got {tuple(advantages.shape)}")
    return (
        m,
        masked_fill_zero(logp, m),
        masked_fill_zero(old_logp.detach(), m),
        masked_fill_zero(advantages.detach().to(logp.dtype), m),
    )


def _check_eps(eps_low: float, eps_high: float, dual_clip: float | None) -> None:
    if not 0.0 <= eps_low < 1.0:
        raise ValueError(f"eps_low must lie in [0, 1), got {eps_low}")
    if eps_high < 0.0:
        raise ValueError(f"eps_high must be >= 0, got {eps_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (Ye et al. use 3), got {dual_clip}")


def _clipped_surrogate(
    ratio: torch.Tensor,
    adv: torch.Tensor,
    m: torch.Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
    approx_kl: torch.Tensor,
) -> PolicyLossOutput:
    """−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A), optionally capped at −cA when A < 0. All (B, T)."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped  # the flat branch won: this token has no gradient
    clip_low = is_clipped & (adv < 0)
    clip_high = is_clipped & (adv > 0)
    dual_active = torch.zeros_like(m)
    if dual_clip is not None:
        # Dual clip (Ye et al. 2020): for A < 0 the objective max(min(ρA, clip(ρ)A), cA) stops a
        # huge ratio on a bad token from producing an unbounded loss.
        cap = -dual_clip * adv
        dual_active = (adv < 0) & (loss > cap)
        loss = torch.where(dual_active, cap, loss)
    return PolicyLossOutput(
        loss=masked_fill_zero(loss, m),
        ratio=masked_fill_zero(ratio.detach(), m),
        clip_frac=masked_mean((clip_low | clip_high).to(ratio.dtype), m).detach(),
        clip_frac_low=masked_mean(clip_low.to(ratio.dtype), m).detach(),
        clip_frac_high=masked_mean(clip_high.to(ratio.dtype), m).detach(),
        dual_clip_frac=masked_mean(dual_active.to(ratio.dtype), m).detach(),
        approx_kl=approx_kl.detach(),
    )


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    dual_clip: float | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate per token (Schulman et al. 2017), with decoupled clip range.

    ρ_t = exp(logp_t − old_logp_t);  loss_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t).
    ε_high > ε_low is DAPO's "clip-higher" (Yu et al. 2025: 0.2 / 0.28), which lets unlikely
    tokens with A > 0 grow further and counters entropy collapse. `dual_clip` = c > 1 adds the
    dual clip of Ye et al. 2020 ("Mastering Complex Control in MOBA Games with Deep RL"):
    for A < 0, loss_t = min(loss_t, −c A_t).

    Args:
        logp, old_logp: (B, T). advantages: (B,) or (B, T). mask: (B, T).
        eps_low, eps_high: clip range; eps_high defaults to eps_low (symmetric PPO).
        dual_clip: c, or None for no dual clip.

    Returns:
        PolicyLossOutput with loss (B, T).
    """
    eps_high = eps_low if eps_high is None else eps_high
    _check_eps(eps_low, eps_high, dual_clip)
    m, lp, old, adv = _prepare(logp, old_logp, advantages, mask)
    log_ratio = (lp - old).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    approx_kl = masked_mean(kl_k3(old, lp.detach()), m)
    return _clipped_surrogate(torch.exp(log_ratio), adv, m, eps_low, eps_high, dual_clip, approx_kl)


def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float | None = 4e-4,
    dual_clip: float | None = None,
) -> PolicyLossOutput:
    """Group Sequence Policy Optimization (Zheng et al. 2025, Qwen, arXiv 2507.18071).

    The importance ratio is per *sequence*, length-normalised:
        s_i = (π_θ(y_i|x) / π_old(y_i|x))^(1/|y_i|) = exp(mean_t (logp_t − old_logp_t)),
    and clipped at the sequence level with a tiny range (the paper: 3e-4 / 4e-4).

    Implemented in the paper's GSPO-token form so it fits the per-token pipeline:
        s_{i,t} = sg[s_i] · π_θ(y_t) / sg[π_θ(y_t)]   (value s_i, gradient s_i ∇log π_θ(y_t))
        loss_{i,t} = −min(s_{i,t} A_{i,t}, clip(s_{i,t}, 1 − ε_low, 1 + ε_high) A_{i,t}).
    With a per-sequence advantage and the "seq-mean-token-mean" aggregation this has exactly
    the value and the gradient of GSPO's sequence objective (1/G) Σ_i min(s_i A_i, clip(s_i) A_i).

    Args:
        logp, old_logp: (B, T). advantages: (B,) or (B, T). mask: (B, T).
        eps_low, eps_high: sequence-level clip range; eps_high defaults to eps_low.
        dual_clip: not defined for GSPO; must be None.

    Returns:
        PolicyLossOutput with loss (B, T); `ratio` holds s_i broadcast over each sequence's tokens.
    """
    if dual_clip is not None:
        raise ValueError("gspo_loss does not support dual_clip; set it to None")
    eps_high = eps_low if eps_high is None else eps_high
    _check_eps(eps_low, eps_high, None)
    m, lp, old, adv = _prepare(logp, old_logp, advantages, mask)
    lengths = m.sum(dim=1).clamp(min=1).to(lp.dtype)
    seq_log_ratio = (masked_sum(lp - old, m, dim=1) / lengths).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # (B,)
    seq_ratio = torch.exp(seq_log_ratio).detach().unsqueeze(1)  # sg[s_i], (B, 1)
    token_ratio = seq_ratio * torch.exp(lp - lp.detach())  # value s_i, gradient s_i ∇logp_t
    approx_kl = masked_mean(kl_k3(old, lp.detach()), m)
    return _clipped_surrogate(token_ratio, adv, m, eps_low, eps_high, None, approx_kl)


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13), added to the reward.

        R(|y|) = 0                                  if |y| ≤ L_max − L_cache
               = ((L_max − L_cache) − |y|) / L_cache if L_max − L_cache < |y| ≤ L_max
               = −1                                 if |y| > L_max
    The paper uses L_max = 20480, L_cache = 4096: a linear ramp over the last 20 % of budget.

    Args:
        lengths: (B,) response lengths in tokens.
        max_len: L_max. cache_len: L_cache, 0 ≤ L_cache ≤ L_max.

    Returns:
        (B,) float32 penalties in [−1, 0].
    """
    if max_len <= 0 or not 0 <= cache_len <= max_len:
        raise ValueError(
            f"need max_len > 0 and 0 <= cache_len <= max_len, got max_len={max_len}, cache_len={cache_len}"
        )
    lengths = torch.as_tensor(lengths).float()
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (B,), got {tuple(lengths.shape)}")
    soft_start = max_len - cache_len
    ramp = (soft_start - lengths) / max(cache_len, 1)  # only used where cache_len > 0 applies
    penalty = torch.where(lengths <= soft_start, torch.zeros_like(lengths), ramp)
    return torch.where(lengths > max_len, torch.full_like(lengths, -1.0), penalty)
