"""Critic loss for PPO: clipped value regression towards the GAE returns.

Shapes: values, old_values, returns, mask are all (B, T) over response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.algorithms.masked import check_mask, masked_fill_zero, masked_mean, masked_var


@dataclass(frozen=True)
class ValueLossOutput:
    loss: torch.Tensor  # (B, T), 0 at padding; reduce with `aggregate`
    clip_frac: torch.Tensor  # fraction of valid tokens where the clipped error was the larger one (detached scalar)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float | None = 0.2,
) -> ValueLossOutput:
    """½ max((V − R)², (V_clip − R)²) with V_clip = V_old + clip(V − V_old, −ε, ε).

    The value clip of PPO's reference implementation (Schulman et al. 2017, OpenAI baselines;
    discussed in Engstrom et al. 2020, "Implementation Matters in Deep Policy Gradients"): the
    critic cannot move further than ε from the values used to compute the advantages without
    paying the larger of the two errors. `clip_range=None` gives the plain ½ (V − R)².

    Args:
        values: (B, T) current critic outputs (with gradient).
        old_values: (B, T) critic outputs at rollout time.
        returns: (B, T) regression targets (GAE returns).
        mask: (B, T) response mask.

    Returns:
        ValueLossOutput with per-token loss (B, T).
    """
    if not (values.shape == old_values.shape == returns.shape):
        raise ValueError(
            f"values {tuple(values.shape)}, old_values {tuple(old_values.shape)} and returns "
            f"{tuple(returns.shape)} must have the same shape"
        )
    if clip_range is not None and clip_range <= 0:
        raise ValueError(f"clip_range must be > 0 or None, got {clip_range}")
    m = check_mask(mask, values, like_name="values")
    v = masked_fill_zero(values, m)
    old = masked_fill_zero(old_values.detach(), m)
    target = masked_fill_zero(returns.detach(), m)
    error = (v - target) ** 2
    if clip_range is None:
        return ValueLossOutput(masked_fill_zero(0.5 * error, m), torch.zeros((), device=v.device))
    v_clipped = old + (v - old).clamp(-clip_range, clip_range)
    error_clipped = (v_clipped - target) ** 2
    loss = 0.5 * torch.maximum(error, error_clipped)
    clip_frac = masked_mean((error_clipped > error).to(v.dtype), m).detach()
    return ValueLossOutput(masked_fill_zero(loss, m), clip_frac)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var(R − V) / Var(R) over the valid tokens (population variances): how much of the
    returns' spread the critic accounts for. 1 = perfect, 0 = no better than a constant, < 0 =
    worse than a constant. NaN when the returns do not vary. Shapes: (B, T) in, detached scalar out.
    """
    m = check_mask(mask, values, like_name="values")
    v, r = values.detach().float(), returns.detach().float()
    var_returns = masked_var(r, m)
    if float(var_returns) == 0.0:
        return torch.tensor(float("nan"))
    return 1.0 - masked_var(r - v, m) / var_returns
