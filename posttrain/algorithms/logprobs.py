"""Per-token log-probabilities from causal-LM logits.

Every recipe computes log p(x_t | x_<t) the same way, so it lives here once:
- logits at position t predict token t+1, so logits are shifted left by one against the ids;
- logits are divided by the sampling temperature *before* log_softmax, so the trainer's
  log-probs match the sampler's (docs/architecture.md: "Divide by sampling temperature everywhere").
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each next token under the model.

    Args:
        logits: (B, T, V) model outputs for `input_ids`.
        input_ids: (B, T) the tokens that were fed in.
        temperature: logits are divided by it before the softmax (must be > 0).

    Returns:
        (B, T - 1): entry [b, t] is log p(input_ids[b, t + 1] | input_ids[b, : t + 1]).
        Pair it with `mask[:, 1:]` of any (B, T) mask over the input ids.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    shifted = logits[:, :-1, :].float()
    if temperature != 1.0:
        shifted = shifted / temperature
    targets = input_ids[:, 1:].unsqueeze(-1)
    # gather-then-logsumexp instead of a full log_softmax: avoids materialising a second (B, T, V) tensor.
    picked = torch.gather(shifted, dim=-1, index=targets).squeeze(-1)
    return picked - torch.logsumexp(shifted, dim=-1)
