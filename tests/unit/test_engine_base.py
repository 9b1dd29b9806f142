"""Tests for posttrain.engines.base: SamplingParams / Completion validation, prompt checks, the protocol."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from posttrain.engines import Completion, Engine, HFEngine, SamplingParams, validate_prompt_ids


def test_sampling_params_defaults_and_greedy_flag():
    params = SamplingParams(max_new_tokens=4)
    assert (params.temperature, params.top_p, params.top_k, params.n, params.seed, params.stop_token_ids) == (
        1.0, 1.0, 0, 1, None, None)
    assert not params.greedy
    assert SamplingParams(max_new_tokens=4, temperature=0).greedy


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"max_new_tokens": 4, "temperature": -0.1}, "temperature"),
        ({"max_new_tokens": 4, "temperature": float("nan")}, "temperature"),
        ({"max_new_tokens": 4, "temperature": float("inf")}, "temperature"),
        ({"max_new_tokens": 4, "top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 4, "top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 4, "top_k": -1}, "top_k"),
        ({"max_new_tokens": 4, "n": 0}, "n"),
        ({"max_new_tokens": 4, "seed": -3}, "seed"),
        ({"max_new_tokens": 4, "stop_token_ids": 7}, "stop_token_ids"),
        ({"max_new_tokens": 4, "stop_token_ids": [1, -2]}, r"stop_token_ids\[1\]"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"max_new_tokens": 4, "stop_sequences": [1, 2]}, r"stop_sequences\[0\]"),
        ({"max_new_tokens": 4, "stop_sequences": [[1], []]}, r"stop_sequences\[1\]"),
        ({"max_new_tokens": 4, "stop_sequences": [[1, -2]]}, r"stop_sequences\[0\]\[1\]"),
        ({"max_new_tokens": 4, "stop_sequences": "</think>"}, "stop_sequences"),
    ],
)
def test_sampling_params_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        SamplingParams(**kwargs)


def test_sampling_params_accepts_boundaries_and_copies_stop_ids():
    stops = (5, np.int64(9))
    params = SamplingParams(max_new_tokens=1, temperature=0, top_p=1.0, top_k=0, n=1, seed=0, stop_token_ids=stops)
    assert params.stop_token_ids == [5, 9] and isinstance(params.stop_token_ids, list)


def test_completion_checks_lengths_and_finish_reason():
    done = Completion(prompt_index=2, token_ids=[4, 2], logprobs=[-0.5, -1.0], text="x", finish_reason="stop")
    assert done.prompt_index == 2 and done.finish_reason == "stop"
    with pytest.raises(ValueError, match="prompt 0: 2 token_ids but 1 logprobs"):
        Completion(0, [1, 2], [-0.1], "", "length")
    with pytest.raises(ValueError, match="finish_reason"):
        Completion(0, [1], [-0.1], "", "eos")


def test_validate_prompt_ids_converts_and_names_the_bad_prompt():
    out = validate_prompt_ids([torch.tensor([3, 4]), (np.int64(5),), [6]], vocab_size=10)
    assert out == [[3, 4], [5], [6]] and all(type(t) is int for p in out for t in p)
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        validate_prompt_ids([])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        validate_prompt_ids([[1], []])
    with pytest.raises(ValueError, match="prompt 0: expected a list of token ids, got str"):
        validate_prompt_ids(["hello"])
    with pytest.raises(ValueError, match=r"prompt 1, position 2: token id 10 is not an int in \[0, 10\)"):
        validate_prompt_ids([[1], [1, 2, 10]], vocab_size=10)
    with pytest.raises(ValueError, match="prompt 0, position 0: token id -1"):
        validate_prompt_ids([[-1]])
    with pytest.raises(ValueError, match="prompt 0, position 1: token id 1.5"):
        validate_prompt_ids([[1, 1.5]])


def test_hf_engine_satisfies_the_engine_protocol():
    class NoModel(nn.Module):
        def forward(self, input_ids, **kwargs):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 3))

    engine = HFEngine(NoModel(), tokenizer=None)
    assert isinstance(engine, Engine)
    with pytest.raises(ValueError, match="max_batch_size must be an int >= 1"):
        HFEngine(NoModel(), tokenizer=None, max_batch_size=0)
