"""Entropy of the next-token distribution, aligned with `token_logprobs`.

Entropy is logged by every RL recipe (entropy collapse is the failure DAPO's clip-higher
targets) and can be used as a bonus. Like `token_logprobs`, logits are divided by the
sampling temperature first, so the entropy is that of the distribution actually sampled from.
"""

from __future__ import annotations

import torch


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy H = −Σ_v p_v log p_v of softmax(logits / temperature) at each position.

    Args:
        logits: (B, T, V) model outputs for a (B, T) batch of input ids.
        temperature: divides the logits before the softmax (must be > 0).

    Returns:
        (B, T − 1) float32: entry [b, t] is the entropy of the distribution that predicted
        input_ids[b, t + 1], i.e. the same positions as `token_logprobs(logits, input_ids)`;
        pair it with `mask[:, 1:]`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (B, T, V), got {tuple(logits.shape)}")
    z = logits[:, :-1, :].float()
    if temperature != 1.0:
        z = z / temperature
    # H = logsumexp(z) − Σ p z : avoids log(p) of underflowed probabilities. Logits of −inf
    # (banned tokens) have p = 0; they are replaced by 0 in the product so 0 · −inf ≠ nan.
    log_norm = torch.logsumexp(z, dim=-1)
    probs = torch.softmax(z, dim=-1)
    finite_z = torch.where(torch.isneginf(z), torch.zeros((), dtype=z.dtype, device=z.device), z)
    return log_norm - (probs * finite_z).sum(dim=-1)
