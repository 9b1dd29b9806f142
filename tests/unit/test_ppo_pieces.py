"""PPO pieces without training: KL-in-reward shaping through GAE and whitening (by hand),
explained variance, dropout switched off, the missing-EOS penalty, and the config checks."""

import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.presets import get_preset
from posttrain.algorithms.value_loss import explained_variance
from posttrain.compute import ComputeLedger
from posttrain.config import ConfigError, load_config
from posttrain.engines.base import Completion
from posttrain.recipes.rl.ppo import kl_shaped_advantages
from posttrain.recipes.prompt_data import PromptSet
from posttrain.recipes.rl.rollouts import collect_rollouts, single_turn_round
from posttrain.recipes.rl.config import RLConfig
from posttrain.training.modes import train_mode
from posttrain.verifiers.combine import RewardRunner

NAN = float("nan")


def test_kl_shaped_rewards_gae_and_whitening_by_hand():
    """Two sequences on the shifted axis (T = 4); position 0 is the prompt.

    Row 0, mask [0, 1, 1, 1], score 2: k1 = logp − ref = [−1 + 1.5, −0.5 + 0.5, −2 + 1] = [0.5, 0, −1];
      β = 0.1 → r = [−0.05, 0, 2 + 0.1] (the score on the last token, −β·k1 on every token).
      V = [0.5, 1.0, 1.5], γ = 1, λ = 0.9:
        δ3 = 2.1 − 1.5 = 0.6             A3 = 0.6
        δ2 = 0 + 1.5 − 1.0 = 0.5         A2 = 0.5 + 0.9·0.6 = 1.04
        δ1 = −0.05 + 1.0 − 0.5 = 0.45    A1 = 0.45 + 0.9·1.04 = 1.386
      returns = A + V = [1.886, 2.04, 2.1].
    Row 1, mask [0, 1, 0, 0], score −1, k1 = 0, V = 0.25: A = −1 − 0.25 = −1.25, return −1.
    Padding holds garbage (nan); it must not leak. Whitening: over the 4 valid advantages,
    population variance.
    """
    logp = torch.tensor([[NAN, -1.0, -0.5, -2.0], [NAN, -1.0, NAN, NAN]])
    ref = torch.tensor([[NAN, -1.5, -0.5, -1.0], [NAN, -1.0, NAN, NAN]])
    values = torch.tensor([[9.0, 0.5, 1.0, 1.5], [9.0, 0.25, NAN, NAN]])
    mask = torch.tensor([[0.0, 1, 1, 1], [0, 1, 0, 0]])
    algo = dataclasses.replace(get_preset("ppo"), gamma=1.0, lam=0.9)
    adv, returns, kl = kl_shaped_advantages(torch.tensor([2.0, -1.0]), logp, ref, values, mask, algo, beta=0.1)

    assert_close(kl, torch.tensor([[0.0, 0.5, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]))
    assert_close(returns, torch.tensor([[0.0, 1.886, 2.04, 2.1], [0.0, -1.0, 0.0, 0.0]]))
    raw = [1.386, 1.04, 0.6, -1.25]
    mean = sum(raw) / 4
    std = math.sqrt(sum((a - mean) ** 2 for a in raw) / 4)
    white = [(a - mean) / std for a in raw]
    assert_close(adv, torch.tensor([[0.0, white[0], white[1], white[2]], [0.0, white[3], 0.0, 0.0]]),
                 rtol=1e-5, atol=1e-5)


def test_kl_coefficient_zero_leaves_only_the_score():
    """β = 0: r = [0, 0, 2] whatever the log-probs; V = 0, γ = λ = 1 → returns all 2."""
    logp, ref = torch.tensor([[-1.0, -5.0, -0.1]]), torch.zeros(1, 3)
    algo = dataclasses.replace(get_preset("ppo"), gamma=1.0, lam=1.0)
    _, returns, _ = kl_shaped_advantages(torch.tensor([2.0]), logp, ref, torch.zeros(1, 3), torch.ones(1, 3),
                                         algo, beta=0.0)
    assert_close(returns, torch.full((1, 3), 2.0))


def test_explained_variance_by_hand():
    """R = [1, 2, 3, (pad)], V = [1, 2, 2]: R − V = [0, 0, 1], Var = 2/9; Var(R) = 2/3 → 1 − 1/3 = 2/3.
    V = R → 1; constant returns → nan (undefined)."""
    returns, mask = torch.tensor([[1.0, 2.0, 3.0, 50.0]]), torch.tensor([[1, 1, 1, 0]])
    assert_close(explained_variance(torch.tensor([[1.0, 2.0, 2.0, NAN]]), returns, mask), torch.tensor(2 / 3))
    assert_close(explained_variance(returns, returns, mask), torch.tensor(1.0))
    assert math.isnan(float(explained_variance(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))))


def test_train_mode_without_dropout_survives_a_later_train_call():
    """A module with dropout 0.5 (nn.Dropout and an HF-style `attention_dropout` float) gives the
    same output twice, even after `.train()`."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.drop, self.attention_dropout = torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), 0.5

        def forward(self, x):
            return torch.nn.functional.dropout(self.drop(self.linear(x)), self.attention_dropout, self.training)

    block, x = Block(), torch.ones(4, 8)
    block.train()
    assert not torch.equal(block(x), block(x))  # dropout really is on before
    train_mode(block, dropout=False)
    assert block.training  # train mode: gradient checkpointing stays active
    block.train()
    assert torch.equal(block(x), block(x)) and block.drop.p == 0.0 and block.attention_dropout == 0.0


class ScriptedEngine:
    """Per prompt: one finished answer ([7, EOS]) and one cut off at max_new_tokens ([7, 7, 7])."""

    def generate(self, prompt_ids, sampling):
        out = []
        for i, _ in enumerate(prompt_ids):
            done = Completion(i, [7, 2], [-0.1, -0.1], "7", "stop")
            cut = Completion(i, [7, 7, 7], [-0.1] * 3, "777", "length")
            out.append([done, cut][: sampling.n])
        return out


def _rollout_cfg(*overrides):
    return load_config(RLConfig, None, ["algorithm.name=ppo", "rollout.prompts_per_step=2", "micro_batch_size=2",
                                        "rollout.max_new_tokens=3", *overrides])


def test_missing_eos_penalty_is_subtracted_from_the_score_of_unfinished_responses():
    """Score 0.5 for everything; penalty 1.0 → finished 0.5, cut off −0.5. The logged score stays 0.5."""
    cfg = _rollout_cfg("rollout.samples_per_prompt=2", "micro_batch_size=4", "reward.missing_eos_penalty=1.0")
    prompts = PromptSet([{"prompt": "a"}, {"prompt": "b"}], [[1, 3], [1, 4]])
    with RewardRunner({"half": lambda prompt, completion, **row: 0.5}) as rewards:
        batch, metrics = collect_rollouts(single_turn_round(ScriptedEngine(), rewards, ComputeLedger(), 1), prompts,
                                          cfg, cfg.algorithm.resolve(), 0, pad_id=0)
    assert batch.rewards.tolist() == [0.5, -0.5, 0.5, -0.5]
    assert batch.truncated.tolist() == [False, True, False, True]
    assert metrics["rewards/total/mean"] == 0.5 and metrics["reward/mean"] == 0.0


def test_one_sample_per_prompt_is_fine_for_ppo():
    cfg = _rollout_cfg("rollout.samples_per_prompt=1")
    prompts = PromptSet([{"prompt": "a"}, {"prompt": "b"}], [[1, 3], [1, 4]])
    with RewardRunner({"one": lambda prompt, completion, **row: 1.0}) as rewards:
        batch, metrics = collect_rollouts(single_turn_round(ScriptedEngine(), rewards, ComputeLedger(), 1), prompts,
                                          cfg, cfg.algorithm.resolve(), 0, pad_id=0)
    assert batch.size == 2 and metrics["groups/zero_advantage_fraction"] == 0.0


def test_ppo_config_is_accepted_and_checked():
    cfg = load_config(RLConfig, None, ["algorithm.name=ppo", "rollout.samples_per_prompt=1", "micro_batch_size=16",
                                       "algorithm.kl_target=6.0", "critic.init=reward_model:/some/dir"])
    algo = cfg.algorithm.resolve()
    assert cfg.needs_critic() and algo.advantage == "gae" and algo.kl_target == 6.0 and algo.lam == 0.95
    assert not load_config(RLConfig, None, []).needs_critic()


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.kl_placement=loss"], "kl_placement must be 'reward'"),
    (["critic.vf_coef=0"], "critic.vf_coef must be > 0"),
    (["critic.value_clip=0"], "critic.value_clip must be > 0 or null"),
    (["algorithm.lam=1.5"], r"gamma and algorithm.lam must lie in \[0, 1\]"),
    (["algorithm.kl_target=6", "algorithm.kl_coef=0"], "kl_target .* must be > 0 and start from kl_coef > 0"),
    (["reward.missing_eos_penalty=-1"], "missing_eos_penalty must be >= 0"),
])
def test_bad_ppo_configs_fail_at_start(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLConfig, None, ["algorithm.name=ppo", *overrides])


def test_adaptive_kl_is_refused_outside_the_critic_loop():
    with pytest.raises(ConfigError, match="implemented by the critic loop only"):
        load_config(RLConfig, None, ["algorithm.name=grpo", "algorithm.kl_target=6"])
