"""Rollout records → padded training tensors, and the log-prob passes over them.

Shapes: B sequences (prompts × samples, grouped consecutively), L = longest prompt+response.
Per-token quantities live on the shifted axis (B, L-1): entry t scores token t+1, so the
response mask on that axis is `response_mask[:, 1:]` (DESIGN.md: "shift logits by one").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.algorithms.entropy import entropy_from_logits
from posttrain.algorithms.logprobs import token_logprobs
from posttrain.engines.base import Completion
from posttrain.models.loading import accepts_logits_to_keep


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor       # (B, L) prompt + response, right-padded
    attention_mask: torch.Tensor  # (B, L)
    mask: torch.Tensor            # (B, L-1) float, 1 where the next token is a response token
    rewards: torch.Tensor         # (B,)
    scorable: torch.Tensor        # (B,) bool, False where the reward function returned None
    response_lengths: torch.Tensor  # (B,)
    truncated: torch.Tensor       # (B,) bool, no EOS within max_new_tokens
    sampler_logprobs: torch.Tensor  # (B, L-1) the engine's log-probs on the response positions, 0 elsewhere

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> "RolloutBatch":
        return RolloutBatch(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})


def build_batch(prompt_ids: list[list[int]], completions: list[Completion], rewards: list[float | None],
                pad_id: int) -> RolloutBatch:
    """Pack each (prompt, completion) into one row; response tokens include the EOS."""
    lengths = [len(p) + len(c.token_ids) for p, c in zip(prompt_ids, completions)]
    width = max(lengths)
    size = len(completions)
    input_ids = torch.full((size, width), pad_id, dtype=torch.long)
    attention = torch.zeros((size, width), dtype=torch.long)
    mask = torch.zeros((size, width - 1))
    sampler = torch.zeros((size, width - 1))
    for row, (prompt, completion) in enumerate(zip(prompt_ids, completions)):
        ids = list(prompt) + list(completion.token_ids)
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        start, end = len(prompt) - 1, len(ids) - 1  # shifted positions that predict response tokens
        mask[row, start:end] = 1.0
        sampler[row, start:end] = torch.tensor(completion.logprobs, dtype=torch.float32)
    scorable = torch.tensor([r is not None for r in rewards])
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention,
        mask=mask,
        rewards=torch.tensor([0.0 if r is None else float(r) for r in rewards]),
        scorable=scorable,
        response_lengths=torch.tensor([len(c.token_ids) for c in completions]),
        truncated=torch.tensor([c.finish_reason == "length" for c in completions]),
        sampler_logprobs=sampler,
    )


def forward_logprobs(model, batch: RolloutBatch, index: slice | torch.Tensor, temperature: float,
                     *, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (rows, L-1) of the batch's tokens at the sampling temperature (grad flows if enabled);
    with `with_entropy`, also the entropy of each predicting distribution (no grad).

    Only positions from the rows' earliest response token onwards go through the LM head
    (`logits_to_keep`): the prompt's logits are never used, and for long prompts or large
    vocabularies they are most of the (rows, L, V) logits tensor. Columns before that are 0
    (they are masked out everywhere).
    """
    input_ids = batch.input_ids[index]
    attention = batch.attention_mask[index]
    device = next(model.parameters()).device
    first = _first_response_position(batch.mask[index])
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


_ENTROPY_ROWS = 8


def _first_response_position(mask: torch.Tensor) -> int:
    """The earliest column of the shifted axis that predicts a response token (0 if none)."""
    columns = torch.nonzero(mask.sum(0)).flatten()
    return int(columns[0]) if columns.numel() else 0


@torch.no_grad()
def batch_logprobs(model, batch: RolloutBatch, temperature: float, micro_batch_size: int) -> torch.Tensor:
    """Log-probs of the whole batch without gradients (old policy, reference model)."""
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, batch.size, micro_batch_size):
        logp, _ = forward_logprobs(model, batch, slice(start, start + micro_batch_size), temperature)
        parts.append(logp.float().cpu())
    model.train(was_training)
    return torch.cat(parts)
