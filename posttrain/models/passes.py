"""Forward passes over a rollout batch: token log-probs and entropies of the policy (or the
reference), values of the critic.

A batch is anything with `input_ids` (B, L), `attention_mask` (B, L) and `mask` (B, L-1), like
`recipes.rl.batch.RolloutBatch`. Per-token quantities live on the shifted axis (B, L-1): entry t
scores token t+1 (docs/architecture.md, "shift logits by one"), so they line up with `mask`.
"""

from __future__ import annotations

import torch

from posttrain.algorithms.entropy import entropy_from_logits
from posttrain.algorithms.logprobs import token_logprobs
from posttrain.models.device import model_device
from posttrain.models.loading import accepts_logits_to_keep
from posttrain.models.scalar_head import token_values

_ENTROPY_ROWS = 8


def forward_logprobs(model, batch, index: slice | torch.Tensor, temperature: float,
                     *, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (rows, L-1) of the batch's tokens at the sampling temperature (grad flows if enabled);
    with `with_entropy`, also the entropy of each predicting distribution (no grad).

    Only positions from the rows' earliest loss-masked token onwards go through the LM head
    (`logits_to_keep`): the prompt's logits are never used, and for long prompts or large
    vocabularies they are most of the (rows, L, V) logits tensor. Columns before that are 0
    (they are masked out everywhere).
    """
    input_ids = batch.input_ids[index]
    attention = batch.attention_mask[index]
    device = model_device(model)
    first = _first_masked_position(batch.mask[index])
    kwargs = {"logits_to_keep": input_ids.shape[1] - first} if first and accepts_logits_to_keep(model) else {}
    if not kwargs:
        first = 0
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs).logits
    kept_ids = input_ids[:, first:].to(device)
    logp = torch.nn.functional.pad(token_logprobs(logits, kept_ids, temperature), (first, 0))
    entropy = None
    if with_entropy:
        with torch.no_grad():  # in row chunks: softmax makes another logits-sized tensor
            chunks = [entropy_from_logits(part, temperature) for part in logits.detach().split(_ENTROPY_ROWS)]
        entropy = torch.nn.functional.pad(torch.cat(chunks), (first, 0))
    return logp, entropy


def _first_masked_position(mask: torch.Tensor) -> int:
    """The earliest column of the shifted axis that predicts a loss-masked token (0 if none)."""
    columns = torch.nonzero(mask.sum(0)).flatten()
    return int(columns[0]) if columns.numel() else 0


@torch.no_grad()
def batch_logprobs(model, batch, temperature: float, micro_batch_size: int) -> torch.Tensor:
    """Log-probs of the whole batch without gradients (old policy, reference model)."""
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, batch.size, micro_batch_size):
        logp, _ = forward_logprobs(model, batch, slice(start, start + micro_batch_size), temperature)
        parts.append(logp.float().cpu())
    model.train(was_training)
    return torch.cat(parts)


def forward_values(critic, batch, index: slice | torch.Tensor) -> torch.Tensor:
    """Values (rows, L-1) on the shifted axis: entry t is V of the prefix that predicts token t+1,
    aligned with `forward_logprobs` and `batch.mask` (grad flows if enabled)."""
    device = model_device(critic)
    values = token_values(critic, batch.input_ids[index].to(device), batch.attention_mask[index].to(device))
    return values[:, :-1]


@torch.no_grad()
def batch_values(critic, batch, micro_batch_size: int) -> torch.Tensor:
    """Values of the whole batch without gradients (the critic at rollout time)."""
    parts = [forward_values(critic, batch, slice(start, start + micro_batch_size)).float().cpu()
             for start in range(0, batch.size, micro_batch_size)]
    return torch.cat(parts)
