"""Reduce a per-token loss (B, T) to a scalar: the normalisation is an explicit choice.

Modes (names follow verl's `loss_agg_mode`):
- "token-mean": Σ_valid loss / N_tokens. Every token weighs the same (DAPO's token-level
  loss, Yu et al. 2025). Pass `global_tokens` = the valid-token count of the whole optimizer
  step when accumulating gradients: each micro-batch then divides by the same number, and
  the accumulated gradient equals the full-batch token mean exactly (1×4 == 2×2 == 4×1).
- "seq-mean-token-mean": mean over sequences of each sequence's token mean (GRPO as written
  in DeepSeekMath, and GSPO). Every sequence weighs the same, so tokens of long answers weigh
  less. With accumulation pass `global_sequences`.
- "seq-mean-token-sum-norm": each sequence's token *sum* divided by a constant (Dr. GRPO,
  Liu et al. 2025: the generation budget, max_new_tokens), then mean over sequences. Removes
  GRPO's length bias. `constant_normaliser` is required; pass `global_sequences` when accumulating.

Over several data-parallel ranks the counts are the whole step's on every rank (`loss_counts`
with a summing `reduce`): each rank's micro-batches divide by them, and the ranks' gradients are
summed, which equals the single-process gradient over the union batch.

Sequences with no valid token count for nothing (they add 0 and are not counted).
Every function takes all keyword arguments and ignores the ones its mode does not use, so a
recipe can pass the same counts whatever the configured mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from posttrain.import_path import is_import_path, resolve_import_path
from posttrain.algorithms.masked import check_mask, masked_sum


class Aggregation(Protocol):
    def __call__(
        self,
        loss_per_token: torch.Tensor,
        mask: torch.Tensor,
        *,
        global_tokens: float | None = None,
        global_sequences: float | None = None,
        constant_normaliser: float | None = None,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class LossCounts:
    """What one optimizer step's losses divide by, counted over the whole step."""

    rows: int          # sequences in the step's batch (0: nothing to train on, anywhere)
    tokens: float      # valid tokens: token-mean's `global_tokens`
    sequences: float   # sequences with at least one valid token: the seq-mean modes' `global_sequences`


def loss_counts(mask: torch.Tensor, reduce: Callable[[Sequence[float]], Sequence[float]] | None = None) -> LossCounts:
    """The step's counts from its (B, T) valid-token mask, B = 0 allowed. `reduce` sums a list of
    numbers over data-parallel ranks (`training.distributed.Ranks.sum`); one call per step, before
    the micro-batches, so every micro-batch of every rank divides by the same numbers."""
    if mask.numel() == 0:
        local = [float(mask.shape[0]) if mask.dim() == 2 else 0.0, 0.0, 0.0]
    else:
        local = [float(mask.shape[0]), float(mask.sum()), float((mask.sum(1) > 0).sum())]
    rows, tokens, sequences = reduce(local) if reduce is not None else local
    return LossCounts(rows=int(rows), tokens=float(tokens), sequences=float(sequences))


def _positive(value: float | None, name: str) -> float | None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _sequence_count(m: torch.Tensor, global_sequences: float | None) -> torch.Tensor | float:
    if _positive(global_sequences, "global_sequences") is not None:
        return float(global_sequences)
    return m.any(dim=1).sum().clamp(min=1)


def token_mean(
    loss_per_token: torch.Tensor,
    mask: torch.Tensor,
    *,
    global_tokens: float | None = None,
    global_sequences: float | None = None,
    constant_normaliser: float | None = None,
) -> torch.Tensor:
    """Σ_valid loss / (global_tokens or this batch's valid-token count). (B, T) -> scalar."""
    m = check_mask(mask, loss_per_token, like_name="loss_per_token")
    if _positive(global_tokens, "global_tokens") is not None:
        denominator: torch.Tensor | float = float(global_tokens)
    else:
        denominator = m.sum().clamp(min=1)
    return masked_sum(loss_per_token, m) / denominator


def seq_mean_token_mean(
    loss_per_token: torch.Tensor,
    mask: torch.Tensor,
    *,
    global_tokens: float | None = None,
    global_sequences: float | None = None,
    constant_normaliser: float | None = None,
) -> torch.Tensor:
    """mean over sequences of (Σ_t loss / n_tokens of that sequence). (B, T) -> scalar."""
    m = check_mask(mask, loss_per_token, like_name="loss_per_token")
    per_sequence = masked_sum(loss_per_token, m, dim=1) / m.sum(dim=1).clamp(min=1)
    return per_sequence.sum() / _sequence_count(m, global_sequences)


def seq_mean_token_sum_norm(
    loss_per_token: torch.Tensor,
    mask: torch.Tensor,
    *,
    global_tokens: float | None = None,
    global_sequences: float | None = None,
    constant_normaliser: float | None = None,
) -> torch.Tensor:
    """mean over sequences of (Σ_t loss / constant_normaliser). (B, T) -> scalar."""
    if constant_normaliser is None:
        raise ValueError(
            "aggregation 'seq-mean-token-sum-norm' needs constant_normaliser (Dr. GRPO: the max response length)"
        )
    _positive(constant_normaliser, "constant_normaliser")
    m = check_mask(mask, loss_per_token, like_name="loss_per_token")
    per_sequence = masked_sum(loss_per_token, m, dim=1) / float(constant_normaliser)
    return per_sequence.sum() / _sequence_count(m, global_sequences)


# Name -> function. `registry.register_aggregation` adds to this same dict.
AGGREGATIONS: dict[str, Aggregation] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


def aggregate(
    loss_per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    global_tokens: float | None = None,
    global_sequences: float | None = None,
    constant_normaliser: float | None = None,
) -> torch.Tensor:
    """Reduce (B, T) per-token losses over the valid tokens of `mask` to a scalar; see module doc."""
    if is_import_path(mode):
        fn = resolve_import_path(mode, "aggregation")
    elif mode in AGGREGATIONS:
        fn = AGGREGATIONS[mode]
    else:
        raise ValueError(
            f"unknown aggregation mode {mode!r}; valid modes: {sorted(AGGREGATIONS)} or 'pkg.module:function'"
        )
    return fn(
        loss_per_token,
        mask,
        global_tokens=global_tokens,
        global_sequences=global_sequences,
        constant_normaliser=constant_normaliser,
    )
