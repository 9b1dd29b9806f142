"""Per-token KL estimators between the policy and a reference model.

From J. Schulman, "Approximating KL divergence" (2020). With samples x ~ π (the policy) and
log-ratio  δ = log π_ref(x) − log π(x):

    k1 = −δ                    = log π − log π_ref      unbiased for KL(π‖π_ref), high variance, can be < 0
    k2 = ½ δ²                                          biased, low variance, always ≥ 0
    k3 = exp(δ) − δ − 1        = (r − 1) − log r        unbiased, low variance, always ≥ 0  (r = π_ref/π)

Which estimator you pick, and whether its β-weighted value goes into the reward (PPO,
REINFORCE++, RLOO) or into the loss (GRPO, with k3), changes what β means: the same β is a
different penalty under each choice. Presets in `presets.py` record the combination each
paper used.
"""

from __future__ import annotations

from typing import Callable

import torch

from posttrain.import_path import is_import_path, resolve_import_path
from posttrain.algorithms.masked import check_mask, masked_fill_zero

# k3 exponentiates the log-ratio; past |δ| = 20 (a probability ratio of ~5e8) the value is
# meaningless anyway, and clamping keeps one absurd token from overflowing float32 to inf.
K3_MAX_LOG_RATIO = 20.0

KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π − log π_ref. Shapes: (B, T) in, (B, T) out."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log π − log π_ref)². Shapes: (B, T) in, (B, T) out."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(δ) − δ − 1 with δ = log π_ref − log π, δ clamped to ±20. Shapes: (B, T) in and out.

    e^δ − δ − 1 ≥ 0 for every real δ, so k3 is never negative, clamped or not.
    """
    delta = (ref_logp - logp).clamp(-K3_MAX_LOG_RATIO, K3_MAX_LOG_RATIO)
    return torch.exp(delta) - delta - 1.0


# Name -> estimator. `registry.register_kl_estimator` adds to this same dict.
KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    kind: str = "k3",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate from the log-probs of the sampled tokens.

    Args:
        logp: (B, T) log π(x_t | x_<t) of the sampled tokens under the policy.
        ref_logp: (B, T) the same tokens under the reference model.
        kind: "k1", "k2", "k3", a name registered with `register_kl_estimator`, or "pkg.module:fn".
        mask: optional (B, T) response mask; when given, padded positions are exactly 0.

    Returns:
        (B, T) per-token estimate. Reduce it with the same aggregation as the loss.
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp has shape {tuple(logp.shape)} but ref_logp has shape {tuple(ref_logp.shape)}")
    if is_import_path(kind):
        estimator = resolve_import_path(kind, "KL estimator")
    elif kind in KL_ESTIMATORS:
        estimator = KL_ESTIMATORS[kind]
    else:
        raise ValueError(
            f"unknown KL estimator {kind!r}; valid names: {sorted(KL_ESTIMATORS)} or 'pkg.module:function'"
        )
    if mask is None:
        return estimator(logp, ref_logp)
    m = check_mask(mask, logp, like_name="logp")
    # Zero the inputs first so padding garbage (e.g. -inf) cannot produce nan, even in the gradient.
    out = estimator(masked_fill_zero(logp, m), masked_fill_zero(ref_logp, m))
    return masked_fill_zero(out, m)
