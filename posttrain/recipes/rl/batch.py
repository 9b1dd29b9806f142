"""Token sequences → the padded tensors the update trains on.

A `TokenSequence` is one trajectory exactly as the trainer must see it: the token ids as the
engine sampled them (and as the environment appended them), a loss mask per token (1 on tokens
the model sampled, 0 on the prompt, tool results and template glue), and the sampler's log-prob
of each token (0 where the mask is 0). A single-turn rollout is one prompt span then one model
span; a multi-turn episode alternates model and environment spans — the batch does not care.
Nothing is re-tokenised from text (docs/architecture.md, "Masks").

Shapes: B sequences, L = the longest sequence. Per-token quantities live on the shifted axis
(B, L-1): entry t scores token t+1, so `mask[:, t] = loss_mask[t+1]`.
Every sequence carries a group id: the prompt (or pivot) it answers. Group baselines group by
id, never by position, so refilled, filtered, shuffled or sharded batches keep their groups.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from posttrain.engines.base import Completion


@dataclass
class TokenSequence:
    token_ids: list[int]
    loss_mask: list[int]            # per token: 1 = sampled by the model (trained on), 0 = context
    sampler_logprobs: list[float]   # per token: the engine's log-prob where loss_mask is 1, else 0
    truncated: bool = False         # the model's last span hit a length limit without a stop token

    def __post_init__(self) -> None:
        if not (len(self.token_ids) == len(self.loss_mask) == len(self.sampler_logprobs)):
            raise ValueError(f"TokenSequence: {len(self.token_ids)} token ids, {len(self.loss_mask)} mask entries "
                             f"and {len(self.sampler_logprobs)} log-probs; they must be equal")
        if self.loss_mask and self.loss_mask[0]:
            raise ValueError("TokenSequence: the first token cannot be trained on (nothing predicts it)")


def single_turn_sequence(prompt_ids: list[int], completion: Completion) -> TokenSequence:
    """A prompt span (masked out) followed by one sampled completion, its stop token included."""
    n = len(completion.token_ids)
    return TokenSequence(
        token_ids=list(prompt_ids) + list(completion.token_ids),
        loss_mask=[0] * len(prompt_ids) + [1] * n,
        sampler_logprobs=[0.0] * len(prompt_ids) + list(completion.logprobs),
        truncated=completion.finish_reason == "length",
    )


def trajectory_sequence(trajectory) -> TokenSequence:
    """A multi-turn episode (`posttrain.envs.base.Trajectory`) as the trainer sees it: its ids as
    sampled and appended, trained on the model spans only. `truncated` when a limit, not the
    environment, ended it (the overlong filter and penalty read it as they do a single turn's)."""
    return TokenSequence(token_ids=list(trajectory.token_ids), loss_mask=trajectory.loss_mask,
                         sampler_logprobs=list(trajectory.logprobs), truncated=bool(trajectory.truncated))


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor         # (B, L) every token of each sequence, right-padded
    attention_mask: torch.Tensor    # (B, L)
    mask: torch.Tensor              # (B, L-1) float, 1 where the next token is a model token
    rewards: torch.Tensor           # (B,)
    scorable: torch.Tensor          # (B,) bool, False where the reward function returned None
    response_lengths: torch.Tensor  # (B,) model tokens of each sequence
    truncated: torch.Tensor         # (B,) bool, no stop token within the length limit
    sampler_logprobs: torch.Tensor  # (B, L-1) the engine's log-probs on the model tokens, 0 elsewhere
    group_ids: torch.Tensor         # (B,) long, the prompt each sequence answers

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> "RolloutBatch":
        return RolloutBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def empty(cls) -> "RolloutBatch":
        return cls(*(torch.zeros(0) for _ in fields(cls)))


def build_batch(sequences: list[TokenSequence], rewards: list[float | None], group_ids: list[int],
                pad_id: int) -> RolloutBatch:
    """Pad the sequences into one batch; a reward of None marks a sequence unscorable."""
    width = max(len(s.token_ids) for s in sequences)
    size = len(sequences)
    input_ids = torch.full((size, width), pad_id, dtype=torch.long)
    attention = torch.zeros((size, width), dtype=torch.long)
    mask = torch.zeros((size, width - 1))
    sampler = torch.zeros((size, width - 1))
    for row, seq in enumerate(sequences):
        n = len(seq.token_ids)
        input_ids[row, :n] = torch.tensor(seq.token_ids)
        attention[row, :n] = 1
        mask[row, : n - 1] = torch.tensor(seq.loss_mask[1:], dtype=torch.float32)
        sampler[row, : n - 1] = torch.tensor(seq.sampler_logprobs[1:], dtype=torch.float32)
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention,
        mask=mask,
        rewards=torch.tensor([0.0 if r is None else float(r) for r in rewards]),
        scorable=torch.tensor([r is not None for r in rewards]),
        response_lengths=torch.tensor([sum(s.loss_mask) for s in sequences]),
        truncated=torch.tensor([s.truncated for s in sequences]),
        sampler_logprobs=sampler,
        group_ids=torch.tensor(group_ids, dtype=torch.long),
    )


def concat_batches(parts: list[RolloutBatch]) -> RolloutBatch:
    """One batch from several (e.g. DAPO's refill rounds), padded to the widest."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.input_ids.shape[1] for p in parts)
    columns = {}
    for f in fields(RolloutBatch):
        tensors = []
        for p in parts:
            t = getattr(p, f.name)
            if t.dim() == 2:
                pad = width - p.input_ids.shape[1]
                t = torch.nn.functional.pad(t, (0, pad))  # pad id irrelevant: attention and mask are 0 there
            tensors.append(t)
        columns[f.name] = torch.cat(tensors)
    return RolloutBatch(**columns)
