"""Supervised fine-tuning loss: masked next-token negative log-likelihood."""

from __future__ import annotations

import torch

from posttrain.algorithms.logprobs import token_logprobs


def sft_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Token-mean negative log-likelihood over the masked (completion/assistant) tokens.

    Args:
        logits: (B, T, V).
        input_ids: (B, T).
        loss_mask: (B, T), 1 where the token is a training target (assistant content and its
            end-of-turn token), 0 for prompt, tool output and padding.
        num_tokens: divide the summed NLL by this instead of this micro-batch's own token count.
            Pass the number of target tokens of the whole optimizer step when accumulating
            gradients: then every token weighs the same, however the tokens fall across
            micro-batches (a per-micro-batch mean would over-weight short micro-batches).

    Returns:
        Scalar loss.
    """
    target_mask = loss_mask[:, 1:].to(torch.float32)  # token t+1 is predicted at position t
    nll = -token_logprobs(logits, input_ids) * target_mask
    denominator = float(num_tokens) if num_tokens is not None else target_mask.sum().clamp(min=1.0)
    return nll.sum() / denominator
