"""Pad tokenised examples into batch tensors."""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from posttrain.data.tokenize import TokenizedExample, TokenizedPair

Side = Literal["left", "right"]


def pad_sequences(sequences: Sequence[Sequence[int]], pad_value: int, *, side: Side = "right",
                  length: int | None = None) -> torch.Tensor:
    """Stack variable-length int sequences into a (B, T) long tensor.

    Args:
        sequences: B sequences.
        pad_value: value written into padding positions.
        side: "right" for training batches; "left" for generation, so every prompt ends at the
            last column and new tokens are appended in the same column for all rows.
        length: T; defaults to the longest sequence. Must not be shorter than it.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if not sequences:
        raise ValueError("cannot pad an empty batch")
    longest = max(len(s) for s in sequences)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"length={length} is shorter than the longest sequence ({longest})")
    out = torch.full((len(sequences), length), pad_value, dtype=torch.long)
    for b, seq in enumerate(sequences):
        if not len(seq):
            continue
        values = torch.as_tensor(list(seq), dtype=torch.long)
        if side == "right":
            out[b, : len(seq)] = values
        else:
            out[b, length - len(seq):] = values
    return out


def pad_batch(examples: Sequence[TokenizedExample], pad_id: int, *, side: Side = "right",
              pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Pad examples into a batch.

    Returns:
        input_ids: (B, T) long, `pad_id` at padding.
        attention_mask: (B, T) long, 1 on real tokens.
        loss_mask: (B, T) long, the examples' loss masks, 0 at padding.
        T is the longest example, rounded up to `pad_to_multiple_of` when given (helps GPU kernels).
    """
    if isinstance(pad_id, bool) or not isinstance(pad_id, int):
        raise TypeError(f"pad_id must be an int, got {pad_id!r} (does the tokenizer have a pad token?)")
    if not examples:
        raise ValueError("cannot pad an empty batch")
    length = max(len(e) for e in examples)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    return {
        "input_ids": pad_sequences([e.input_ids for e in examples], pad_id, side=side, length=length),
        "attention_mask": pad_sequences([[1] * len(e) for e in examples], 0, side=side, length=length),
        "loss_mask": pad_sequences([e.loss_mask for e in examples], 0, side=side, length=length),
    }


def pad_preference_batch(pairs: Sequence[TokenizedPair], pad_id: int, *,
                         side: Side = "right") -> dict[str, torch.Tensor]:
    """Pad B preference pairs into one batch of 2B rows: rows [0, B) are the chosen sequences and
    rows [B, 2B) the rejected ones, so one forward pass scores both (as DPO-style losses want).

    Returns the same keys and (2B, T) shapes as `pad_batch`.
    """
    return pad_batch([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, side=side)
