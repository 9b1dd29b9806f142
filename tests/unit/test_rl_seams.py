"""The seams agentic RL, evaluation and scale-out stand on: group ids, per-token-mask batches,
an injected generate-and-score round, the engine factory. No model needed."""

import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.advantages import GroupLayout, grpo_advantages, rloo_advantages
from posttrain.algorithms.registry import AdvantageInputs, get_advantage_estimator
from posttrain.compute import ComputeLedger
from posttrain.config import load_config
from posttrain.engines.base import Completion, SamplingParams
from posttrain.engines.factory import ENGINES, build_engine
from posttrain.recipes.prompt_data import PromptSet
from posttrain.recipes.rl.batch import TokenSequence, build_batch
from posttrain.recipes.rl.config import RLConfig
from posttrain.recipes.rl.rollouts import ScoredRound, collect_rollouts, single_turn_round
from posttrain.verifiers.combine import RewardRunner


# ----------------------------------------------------------------------------- group ids

def test_advantages_group_by_id_whatever_the_row_order():
    """Groups {a: [1, 0], b: [1, 1], c: [0, 0, ...]} interleaved: each row gets the advantage its
    group gives it when the groups are consecutive."""
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0, 1.0])
    consecutive = grpo_advantages(rewards, 3)  # groups [1, 0, 1], [0.5, 0, 1]
    order = torch.tensor([4, 0, 2, 5, 1, 3])  # shuffle the rows
    ids = torch.tensor([0, 0, 0, 1, 1, 1])[order] + 7  # any id values
    assert_close(grpo_advantages(rewards[order], ids), consecutive[order])
    assert_close(rloo_advantages(rewards[order], ids), rloo_advantages(rewards, 3)[order])


def test_group_ids_in_the_registry_inputs_win_over_position():
    rewards = torch.tensor([1.0, 5.0, 0.0, 5.0])  # ids [0, 1, 0, 1]: group 0 = [1, 0], group 1 = [5, 5]
    mask = torch.ones(4, 2)
    out = get_advantage_estimator("dr_grpo")(AdvantageInputs(rewards=rewards, mask=mask,
                                                             group_ids=torch.tensor([0, 1, 0, 1]))).advantages
    assert_close(out[:, 0], torch.tensor([0.5, 0.0, -0.5, 0.0]))


def test_groups_of_unequal_size_are_refused_by_group_baselines():
    with pytest.raises(ValueError, match="same size"):
        GroupLayout.of(torch.tensor([0, 0, 1]), 3)


# ----------------------------------------------------------------------------- per-token masks

def test_a_two_turn_episode_trains_only_on_its_model_spans():
    """prompt [1, 2] | model [3, 4] | tool result [5, 6] | model [7, 8]: on the shifted axis entry t
    predicts token t+1, so the mask is loss_mask[1:] = [0, 1, 1, 0, 0, 1, 1] and the sampler's
    log-probs sit on exactly those entries."""
    seq = TokenSequence(token_ids=[1, 2, 3, 4, 5, 6, 7, 8], loss_mask=[0, 0, 1, 1, 0, 0, 1, 1],
                        sampler_logprobs=[0, 0, -0.1, -0.2, 0, 0, -0.3, -0.4])
    short = TokenSequence(token_ids=[1, 9], loss_mask=[0, 1], sampler_logprobs=[0, -0.5], truncated=True)
    batch = build_batch([seq, short], [1.0, None], [0, 0], pad_id=0)
    assert batch.mask.tolist() == [[0, 1, 1, 0, 0, 1, 1], [1, 0, 0, 0, 0, 0, 0]]
    assert_close(batch.sampler_logprobs[0], torch.tensor([0, -0.1, -0.2, 0, 0, -0.3, -0.4]))
    assert batch.response_lengths.tolist() == [4, 1]  # model tokens only
    assert batch.truncated.tolist() == [False, True] and batch.scorable.tolist() == [True, False]
    assert batch.group_ids.tolist() == [0, 0]


def test_a_sequence_must_not_train_on_its_first_token():
    with pytest.raises(ValueError, match="first token"):
        TokenSequence(token_ids=[1], loss_mask=[1], sampler_logprobs=[-0.1])


# ----------------------------------------------------------------------------- collection

def _cfg(*overrides):
    return load_config(RLConfig, None, ["rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
                                        "micro_batch_size=4", "rollout.max_new_tokens=4", *overrides])


PROMPTS = PromptSet([{"prompt": str(i)} for i in range(8)], [[1, 10 + i] for i in range(8)])


def scripted_round(reward_of_prompt):
    """An injected round: every sample of prompt p is a two-span sequence; sample s of prompt p
    scores reward_of_prompt(p, s). Records the rounds it was called for."""
    calls = []

    def generate_and_score(rows, prompt_ids, sampling):
        calls.append([row["prompt"] for row in rows])
        sequences, rewards, index = [], [], []
        for p, (row, ids) in enumerate(zip(rows, prompt_ids)):
            for s in range(sampling.n):
                sequences.append(TokenSequence(ids + [3, 4, 5], [0] * len(ids) + [1, 0, 1], [0.0] * len(ids) + [-1, 0, -1]))
                rewards.append(reward_of_prompt(int(row["prompt"]), s))
                index.append(p)
        return ScoredRound(sequences, rewards, index, {"rewards/total/mean": sum(rewards) / len(rewards)})

    return generate_and_score, calls


def test_dapo_metrics_cover_every_sampled_rollout_and_kept_groups_apart():
    """Odd prompts have mixed rewards ([1, 0]), even ones are all 0. Rounds go on until two odd
    prompts were seen; reward/mean is over every rollout of every round (one 1 per odd prompt
    sampled), reward/kept_mean over the kept groups only (exactly 0.5)."""
    round_fn, calls = scripted_round(lambda p, s: float(p % 2 == 1 and s == 0))
    cfg = _cfg("algorithm.name=dapo", "rollout.max_refill_rounds=3")
    batch, metrics = collect_rollouts(round_fn, PROMPTS, cfg, cfg.algorithm.resolve(), 0, pad_id=0)
    sampled = [int(p) for round_prompts in calls for p in round_prompts]
    odd = sum(p % 2 for p in sampled)
    assert odd >= 2 and batch.size == 4  # filled: two informative groups of two
    assert metrics["reward/mean"] == odd / (2 * len(sampled))
    assert metrics["reward/kept_mean"] == 0.5
    assert metrics["groups/sampled"] == len(sampled) and metrics["groups/kept"] == 2
    assert metrics["rewards/total/mean"] == pytest.approx(odd / (2 * len(sampled)))  # merged over rounds
    assert len(set(batch.group_ids.tolist())) == 2  # group ids unique across rounds


def test_a_step_that_keeps_nothing_logs_numbers_not_nan():
    round_fn, calls = scripted_round(lambda p, s: 0.0)  # every group uniform
    cfg = _cfg("algorithm.name=dapo", "rollout.max_refill_rounds=2")
    batch, metrics = collect_rollouts(round_fn, PROMPTS, cfg, cfg.algorithm.resolve(), 0, pad_id=0)
    assert batch.size == 0 and len(calls) == 3
    assert metrics["groups/kept"] == 0 and metrics["reward/mean"] == 0.0
    assert "reward/kept_mean" not in metrics
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics


class OneTokenEngine:
    def generate(self, prompt_ids, sampling):
        return [[Completion(i, [7, 2], [-0.1, -0.2], "7", "stop") for _ in range(sampling.n)]
                for i, _ in enumerate(prompt_ids)]


def test_single_turn_round_counts_prefill_and_sampled_tokens_in_the_ledger():
    """2 prompts of 2 tokens prefilled once each (4) + 2 × 2 samples × 2 tokens (8) = 12."""
    ledger = ComputeLedger()
    with RewardRunner({"one": lambda prompt, completion, **row: 1.0}) as rewards:
        scored = single_turn_round(OneTokenEngine(), rewards, ledger, n_params=10)(
            [{"prompt": "a"}, {"prompt": "b"}], [[1, 3], [1, 4]], SamplingParams(max_new_tokens=4, n=2))
    assert ledger.state_dict()["stages"]["rollout"]["tokens"] == 12
    assert scored.prompt_index == [0, 0, 1, 1] and scored.rewards == [1.0] * 4
    assert scored.sequences[0].loss_mask == [0, 0, 1, 1]


# ----------------------------------------------------------------------------- engine factory

def test_the_engine_factory_names_its_engines():
    with pytest.raises(ValueError, match="unknown rollout engine 'vllm2'.*valid names: \\['hf', 'ray', 'vllm'\\]"):
        build_engine("vllm2", torch.nn.Linear(1, 1), None)


def test_an_engine_can_be_plugged_in_by_name(monkeypatch):
    made = []
    monkeypatch.setitem(ENGINES, "mine", lambda model, tokenizer: made.append((model, tokenizer)) or "engine")
    model = torch.nn.Linear(1, 1)
    assert build_engine("mine", model, "tok") == "engine" and made == [(model, "tok")]


def test_the_runs_precision_reaches_engines_that_take_it_and_only_those(monkeypatch):
    """A factory with a `precision` keyword gets the run's; a plain `(model, tokenizer)` factory (the
    documented contract for user engines) is still called as before; `hf` holds what it was given."""
    precision = object()
    made = []
    monkeypatch.setitem(ENGINES, "plain", lambda model, tokenizer: made.append("plain") or "plain engine")
    monkeypatch.setitem(ENGINES, "aware", lambda model, tokenizer, *, precision=None: made.append(precision) or "aware")
    model = torch.nn.Linear(1, 1)
    assert build_engine("plain", model, None, precision=precision) == "plain engine"
    assert build_engine("aware", model, None, precision=precision) == "aware"
    assert made == ["plain", precision]
    assert build_engine("hf", model, None, precision=precision).precision is precision
    assert build_engine("hf", model, None).precision is None


def test_engine_options_reach_the_factory_and_unknown_ones_are_refused():
    """`rollout.engine_options` are keywords of the engine's factory, checked against its signature."""
    from posttrain.engines import factory

    seen = {}

    def recording(model, tokenizer, *, precision=None, max_batch_size=8):
        seen.update(max_batch_size=max_batch_size, precision=precision)
        return "engine"

    factory.ENGINES["recording"] = recording
    try:
        assert factory.build_engine("recording", None, None, options={"max_batch_size": 3}) == "engine"
        assert seen["max_batch_size"] == 3
        with pytest.raises(ValueError, match=r"takes no option \['sleep'\] \(it takes: \['max_batch_size'\]\)"):
            factory.build_engine("recording", None, None, options={"sleep": True})
        with pytest.raises(ValueError, match="set by rollout.workers"):
            factory.build_engine("recording", None, None, options={"workers": 2})
        with pytest.raises(ValueError, match="takes no option"):
            factory.build_engine("hf", None, None, options={"sleep_between_steps": True})
    finally:
        del factory.ENGINES["recording"]
    cfg = load_config(RLConfig, None, ["rollout.engine_options={worker_engine: 'rl_ranks:prompt_seeded_engine'}"])
    assert cfg.rollout.engine_options == {"worker_engine": "rl_ranks:prompt_seeded_engine"}
