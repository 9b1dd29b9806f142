"""Per-sequence response log-probs for the DPO family, with the prompt of a pair run only once.

`sequence_logps` scores padded sequences: token t counts when its loss mask is 1 (a response
token), scored by the logits at position t − 1. Only those positions go through the LM head
(transformers' `logits_to_keep` with a boolean (B, T) mask), so prompt positions cost no
vocabulary projection.

`pair_logps` gives the same numbers for preference pairs with less work: a pair's chosen and
rejected sequences start with the same prompt tokens, so the prompts are run once (left-padded,
cache kept, logits only at their last position) and the 2B responses continue from a copy of
each prompt's keys and values. Gradients flow back through the cache into the prompt pass, so
the loss and its gradient are those of two full forwards (tested against `sequence_logps`).
On arithmetic pairs the prompt is most of each sequence, and this removes about a third of the
tokens of a step; on long-response data the saving is smaller. Models whose forward takes no
`logits_to_keep`, and runs with gradient checkpointing (which turns the cache off), use
`sequence_logps` instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from posttrain.data.collate import pad_batch, pad_sequences
from posttrain.data.tokenize import TokenizedExample
from posttrain.models.device import model_device
# Imported under this module's name so a test can stand in a model without the option.
from posttrain.models.loading import accepts_logits_to_keep as keeps_masked_logits
from posttrain.models.loading import cache_keyword, returned_cache


def checkpoints_activations(model) -> bool:
    """Whether gradient checkpointing is on (transformers flags the modules it wraps)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def shares_prompts(model) -> bool:
    """Whether `pair_logps` can run on this model: masked logits, and a cache that survives the
    forward (gradient checkpointing in training mode turns `use_cache` off; we then use the plain
    path in every mode, so reference, training and evaluation compute the same numbers)."""
    return keeps_masked_logits(model) and not checkpoints_activations(model)


def _gather_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row of (K, V) logits, in float32."""
    logits = logits.float()
    return torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(model, sequences: list[TokenizedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs and response token counts, (N,) each, for N sequences."""
    device = model_device(model)
    batch = {k: v.to(device) for k, v in pad_batch(sequences, pad_id).items()}
    input_ids = batch["input_ids"]
    scored = batch["loss_mask"][:, 1:].bool()  # (N, T-1): position t predicts token t + 1
    targets = input_ids[:, 1:][scored]  # (K,) row-major, like the boolean selection of hidden states below
    if keeps_masked_logits(model):
        keep = F.pad(scored, (0, 1))  # (N, T): the positions whose logits we need
        logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    else:
        logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"]).logits[:, :-1][scored]
    token_logps = _gather_logps(logits, targets)
    rows = torch.arange(len(sequences), device=device).unsqueeze(1).expand_as(scored)[scored]
    sums = torch.zeros(len(sequences), device=device, dtype=token_logps.dtype).index_add(0, rows, token_logps)
    return sums, scored.sum(1)


def pair_logps(model, sequences: list[TokenizedExample], prompt_lengths: list[int], pad_id: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` for 2B sequences where rows i and B + i share their first `prompt_lengths[i]`
    tokens (the layout of `pad_preference_batch`), running each shared prompt once.

    Args:
        sequences: 2B sequences, chosen (or any first member) in [0, B), their partners in [B, 2B).
        prompt_lengths: B shared-prefix lengths (>= 1; the response must start after it).
    """
    pairs = len(sequences) // 2
    if len(sequences) != 2 * pairs or len(prompt_lengths) != pairs:
        raise ValueError(f"pair_logps needs 2B sequences and B prompt lengths, got {len(sequences)} and "
                         f"{len(prompt_lengths)}")
    device = model_device(model)
    # Interleave to (first, second) per pair: the order `batch_repeat_interleave(2)` gives the cache.
    order = [row for i in range(pairs) for row in (i, pairs + i)]
    prompts = [sequences[i].input_ids[: prompt_lengths[i]] for i in range(pairs)]
    for i, prompt in enumerate(prompts):
        if not prompt or sequences[pairs + i].input_ids[: len(prompt)] != prompt:
            raise ValueError(f"pair {i}: the two sequences do not share a non-empty {len(prompt)}-token prompt")

    # 1) The prompts, left-padded so each ends in the last column; logits only there (they
    #    predict each response's first token); keys and values kept, with their gradient history.
    prompt_ids = pad_sequences(prompts, pad_id, side="left").to(device)
    prompt_mask = pad_sequences([[1] * len(p) for p in prompts], 0, side="left").to(device)
    positions = (prompt_mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    first_logits = out.logits[:, -1].repeat_interleave(2, dim=0)  # (2B, V)
    cache = returned_cache(out)
    cache.batch_repeat_interleave(2)

    # 2) The responses, right-padded, attending to their prompt's cached keys and values.
    tails = [TokenizedExample(sequences[r].input_ids[prompt_lengths[r % pairs]:],
                              sequences[r].loss_mask[prompt_lengths[r % pairs]:]) for r in order]
    batch = {k: v.to(device) for k, v in pad_batch(tails, pad_id).items()}
    tail_ids, tail_mask = batch["input_ids"], batch["loss_mask"]
    lengths = torch.tensor([prompt_lengths[r % pairs] for r in order], device=device)
    attention = torch.cat([prompt_mask.repeat_interleave(2, dim=0), batch["attention_mask"]], dim=1)
    tail_positions = lengths.unsqueeze(1) + torch.arange(tail_ids.shape[1], device=device)
    scored = tail_mask[:, 1:].bool()
    keep = F.pad(scored, (0, 1))
    logits = model(input_ids=tail_ids, attention_mask=attention, position_ids=tail_positions,
                   **{cache_keyword(model): cache}, use_cache=False, logits_to_keep=keep).logits

    first = _gather_logps(first_logits, tail_ids[:, 0]) * tail_mask[:, 0]
    token_logps = _gather_logps(logits, tail_ids[:, 1:][scored])
    rows = torch.arange(len(order), device=device).unsqueeze(1).expand_as(scored)[scored]
    sums = first.index_add(0, rows, token_logps)
    counts = tail_mask.sum(1)
    # Back from interleaved (first, second, first, second, ...) to [firsts; seconds].
    return sums.view(pairs, 2).t().reshape(-1), counts.view(pairs, 2).t().reshape(-1)
