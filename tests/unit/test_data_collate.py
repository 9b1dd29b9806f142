"""Padding tokenised examples into exact batch tensors."""

import pytest
import torch

from posttrain.data.collate import pad_batch, pad_preference_batch, pad_sequences
from posttrain.data.tokenize import TokenizedExample, TokenizedPair

A = TokenizedExample([5, 6, 7], [0, 1, 1])
B = TokenizedExample([8], [1])


def test_right_padding_exact_tensors():
    batch = pad_batch([A, B], pad_id=0)
    torch.testing.assert_close(batch["input_ids"], torch.tensor([[5, 6, 7], [8, 0, 0]]))
    torch.testing.assert_close(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    torch.testing.assert_close(batch["loss_mask"], torch.tensor([[0, 1, 1], [1, 0, 0]]))
    assert all(t.dtype == torch.long for t in batch.values())


def test_left_padding_exact_tensors():
    batch = pad_batch([A, B], pad_id=9, side="left")
    torch.testing.assert_close(batch["input_ids"], torch.tensor([[5, 6, 7], [9, 9, 8]]))
    torch.testing.assert_close(batch["attention_mask"], torch.tensor([[1, 1, 1], [0, 0, 1]]))
    torch.testing.assert_close(batch["loss_mask"], torch.tensor([[0, 1, 1], [0, 0, 1]]))


def test_pad_to_multiple_of():
    batch = pad_batch([A, B], pad_id=0, pad_to_multiple_of=4)  # longest 3 -> 4 columns
    torch.testing.assert_close(batch["input_ids"], torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0]]))
    torch.testing.assert_close(batch["loss_mask"], torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]]))


def test_pad_sequences_explicit_length_and_errors():
    torch.testing.assert_close(pad_sequences([[1], [2, 3]], -1, length=4),
                               torch.tensor([[1, -1, -1, -1], [2, 3, -1, -1]]))
    with pytest.raises(ValueError, match="shorter than the longest"):
        pad_sequences([[1, 2, 3]], 0, length=2)
    with pytest.raises(ValueError, match="side must be"):
        pad_sequences([[1]], 0, side="middle")
    with pytest.raises(ValueError, match="empty batch"):
        pad_batch([], pad_id=0)
    with pytest.raises(TypeError, match="pad token"):
        pad_batch([A], pad_id=None)


def test_preference_batch_stacks_chosen_then_rejected():
    pair = TokenizedPair(chosen=TokenizedExample([1, 2, 3], [0, 1, 1]), rejected=TokenizedExample([1, 4], [0, 1]),
                         prompt_length=1)
    batch = pad_preference_batch([pair], pad_id=0)
    torch.testing.assert_close(batch["input_ids"], torch.tensor([[1, 2, 3], [1, 4, 0]]))
    torch.testing.assert_close(batch["loss_mask"], torch.tensor([[0, 1, 1], [0, 1, 0]]))


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        TokenizedExample([1, 2], [1])
