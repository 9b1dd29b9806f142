"""RL recipe pieces without a model: config checks, rollout packing, unscorable rewards."""

import pytest
import torch
from torch.testing import assert_close

from posttrain.config import ConfigError, load_config
from posttrain.engines.base import Completion
from posttrain.recipes.rl.batch import build_batch as build_sequence_batch, concat_batches, single_turn_sequence
from posttrain.recipes.rl.config import RLConfig
from posttrain.recipes.rl.rollouts import _fill_unscorable


def test_algorithm_preset_with_user_overrides():
    cfg = load_config(RLConfig, None, ["algorithm.name=dapo", "algorithm.eps_high=0.3"])
    algo = cfg.algorithm.resolve()
    assert algo.dynamic_sampling and algo.aggregation == "token-mean"  # from the DAPO preset
    assert algo.eps_high == 0.3 and algo.eps_low == 0.2                # user key wins, rest kept


@pytest.mark.parametrize("overrides, message", [
    (["rollout.prompts_per_step=3", "rollout.samples_per_prompt=5", "micro_batch_size=4"],
     r"3 × 5 = 15 sequences\) must be a multiple of micro_batch_size \(4\)"),
    (["algorithm.name=grpo2"], "unknown algorithm 'grpo2'"),
    (["rollout.samples_per_prompt=1", "micro_batch_size=1"], "samples_per_prompt must be >= 2"),
    (["reward.weights=[1.0, 2.0]"], "reward.weights has 2 entries for 1 reward.functions"),
    (["rollout.temperature=0"], "temperature must be > 0"),
])
def test_inconsistent_rl_configs_fail_at_start(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLConfig, None, overrides)


def build_batch(prompt_ids, completions, rewards, pad_id, group_size=1):
    """Single-turn rollouts, `group_size` consecutive samples per prompt."""
    sequences = [single_turn_sequence(p, c) for p, c in zip(prompt_ids, completions)]
    return build_sequence_batch(sequences, rewards, [i // group_size for i in range(len(sequences))], pad_id)


def completion(ids, finish="stop"):
    return Completion(prompt_index=0, token_ids=ids, logprobs=[-0.5] * len(ids), text="", finish_reason=finish)


def test_build_batch_masks_exactly_the_response_tokens_on_the_shifted_axis():
    # Prompt [5, 6] + response [7, 8(EOS)]: shifted positions 1 and 2 predict 7 and 8.
    # Prompt [5] + response [9] (truncated): shifted position 0 predicts 9.
    batch = build_batch([[5, 6], [5]], [completion([7, 8]), completion([9], "length")], [1.0, None], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch.mask.tolist() == [[0, 1, 1], [1, 0, 0]]
    assert batch.sampler_logprobs.tolist() == [[0, -0.5, -0.5], [-0.5, 0, 0]]
    assert batch.scorable.tolist() == [True, False]
    assert batch.truncated.tolist() == [False, True]
    assert batch.response_lengths.tolist() == [2, 1]


def test_unscorable_reward_takes_its_group_mean():
    # Group 1: [1, None, 0] -> None becomes mean(1, 0) = 0.5; group 2 untouched.
    batch = build_batch([[1]] * 6, [completion([2])] * 6, [1.0, None, 0.0, 0.0, 1.0, 1.0], pad_id=0, group_size=3)
    assert_close(_fill_unscorable(batch).rewards, torch.tensor([1.0, 0.5, 0.0, 0.0, 1.0, 1.0]))


def test_concat_pads_batches_of_different_widths():
    a = build_batch([[1]], [completion([2, 3, 4])], [1.0], pad_id=0)
    b = build_batch([[1]], [completion([2])], [0.0], pad_id=0)
    both = concat_batches([a, b])
    assert both.input_ids.tolist() == [[1, 2, 3, 4], [1, 2, 0, 0]]
    assert both.mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_forward_logprobs_on_response_positions_matches_the_full_logits():
    from posttrain.algorithms.entropy import entropy_from_logits
    from posttrain.algorithms.logprobs import token_logprobs
    from posttrain.models.build import load_model_and_tokenizer
    from posttrain.training.loop import set_seed
    from posttrain.config import ModelConfig
    from posttrain.models.passes import forward_logprobs

    set_seed(0)
    model, _ = load_model_and_tokenizer(ModelConfig(device="cpu"))
    model.eval()
    # Prompts of 5 and 3 tokens: the LM head runs from shifted column 2 (the shorter prompt's last token).
    batch = build_batch([[11, 12, 13, 14, 15], [21, 22, 23]],
                        [completion([31, 32]), completion([41, 42, 43, 44])], [1.0, 0.0], pad_id=0)
    logp, entropy = forward_logprobs(model, batch, slice(0, 2), temperature=0.7, with_entropy=True)
    full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    mask = batch.mask > 0
    assert_close(logp[mask], token_logprobs(full, batch.input_ids, 0.7)[mask])
    assert_close(entropy[mask], entropy_from_logits(full, 0.7)[mask])
    assert logp[:, :2].abs().sum() == 0  # prompt-only columns are never computed


def test_accepts_logits_to_keep_looks_through_wrappers():
    from posttrain.config import ModelConfig
    from posttrain.models.loading import accepts_logits_to_keep
    from posttrain.models.build import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(ModelConfig(device="cpu"))
    assert accepts_logits_to_keep(model)

    class Holder(torch.nn.Module):  # like rl's reference wrapper: the model sits in `peft_model`
        def __init__(self, inner):
            super().__init__()
            self.peft_model = inner

        def forward(self, **kwargs):
            return self.peft_model(**kwargs)

    assert accepts_logits_to_keep(Holder(model))

    class Plain(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    assert not accepts_logits_to_keep(Plain())
