"""Masked SFT loss and temperature-scaled log-probs against hand-computed values."""

import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.logprobs import token_logprobs
from posttrain.algorithms.sft import sft_loss

# One sequence, vocabulary of 2, ids [0, 1, 0].
#   position 0 logits [0, 0]     -> predicts id 1 with p = 1/2       -> log p = -ln 2
#   position 1 logits [ln 3, 0]  -> predicts id 0 with p = 3/(3+1)   -> log p = ln(3/4)
#   position 2 logits (anything) -> predicts nothing (no next token)
IDS = torch.tensor([[0, 1, 0]])
LOGITS = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])


def test_token_logprobs_shift_by_one():
    expected = torch.tensor([[-math.log(2.0), math.log(0.75)]])
    assert_close(token_logprobs(LOGITS, IDS), expected)


def test_token_logprobs_divide_by_temperature_first():
    # T = 2: position 1 logits become [ln 3 / 2, 0] = [ln sqrt 3, 0] -> p(0) = sqrt3 / (sqrt3 + 1).
    # Position 0 stays uniform.
    expected = torch.tensor([[-math.log(2.0), math.log(math.sqrt(3) / (math.sqrt(3) + 1))]])
    assert_close(token_logprobs(LOGITS, IDS, temperature=2.0), expected)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(LOGITS, IDS, temperature=0.0)


def test_sft_loss_mean_over_target_tokens():
    # mask [0, 1, 1]: targets are tokens 1 and 2 -> (ln 2 + ln 4/3) / 2 = ln(8/3) / 2
    loss = sft_loss(LOGITS, IDS, torch.tensor([[0, 1, 1]]))
    assert_close(loss, torch.tensor(math.log(8 / 3) / 2))


def test_sft_loss_ignores_masked_prompt_tokens():
    # mask [0, 0, 1]: only token 2 (predicted at position 1) counts -> ln(4/3)
    loss = sft_loss(LOGITS, IDS, torch.tensor([[0, 0, 1]]))
    assert_close(loss, torch.tensor(math.log(4 / 3)))


def test_sft_loss_global_token_normaliser():
    # The summed NLL ln(8/3) divided by an outside count of 4 tokens.
    loss = sft_loss(LOGITS, IDS, torch.tensor([[1, 1, 1]]), num_tokens=4)
    assert_close(loss, torch.tensor(math.log(8 / 3) / 4))


def test_padding_does_not_change_the_loss():
    # Same sequence right-padded with id 1 and garbage logits under mask 0.
    ids = torch.tensor([[0, 1, 0, 1, 1]])
    logits = torch.cat([LOGITS, torch.tensor([[[9.0, 1.0], [3.0, -2.0]]])], dim=1)
    loss = sft_loss(logits, ids, torch.tensor([[0, 1, 1, 0, 0]]))
    assert_close(loss, torch.tensor(math.log(8 / 3) / 2))


def _tiny_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return Qwen2ForCausalLM(config)


def _grads(model, batches, num_tokens):
    model.zero_grad()
    for ids, mask in batches:
        logits = model(input_ids=ids, attention_mask=(mask >= 0).long()).logits
        sft_loss(logits, ids, mask, num_tokens=num_tokens).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_gradient_accumulation_matches_one_big_batch():
    """1x4 == 2x2 == 4x1 micro-batching when every micro-batch divides by the step's token count.

    Rows have different numbers of target tokens, so a per-micro-batch mean would NOT match.
    """
    model = _tiny_lm()
    torch.manual_seed(1)
    ids = torch.randint(0, 32, (4, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 1]])
    total = int(mask[:, 1:].sum())
    whole = _grads(model, [(ids, mask)], total)
    for size in (2, 1):
        parts = [(ids[i : i + size], mask[i : i + size]) for i in range(0, 4, size)]
        for a, b in zip(whole, _grads(model, parts, total)):
            assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The naive per-micro-batch mean differs: this is what the global normaliser fixes.
    naive = []
    model.zero_grad()
    for i in range(4):
        logits = model(input_ids=ids[i : i + 1]).logits
        (sft_loss(logits, ids[i : i + 1], mask[i : i + 1]) / 4).backward()
    naive = [p.grad.clone() for p in model.parameters()]
    assert not all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(whole, naive))
