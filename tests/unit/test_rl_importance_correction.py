"""`rollout.importance_correction` in the critic-free update: the trainer's own old log-probs, the
policy loss weighed by the capped π_old / π_sampler ratio, its metrics; nothing changes when off.

A 2-layer Llama (vocab 32) trains on a hand-built Dr. GRPO batch whose sampler log-probs are the
trainer's shifted by a known constant per sequence, so every number can be worked by hand."""

import copy
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from posttrain.compute import ComputeLedger
from posttrain.config import ConfigError, load_config
from posttrain.models.passes import batch_logprobs
from posttrain.recipes.rl import grpo
from posttrain.recipes.rl.batch import TokenSequence, build_batch
from posttrain.recipes.rl.config import RLConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LENGTHS = [2, 3, 1, 2]            # response tokens per sequence: 8 in all
REWARDS = [1.0, 0.0, 0.0, 1.0]    # groups [0, 0, 1, 1]: Dr. GRPO advantages r − mean = ±0.5
ADVANTAGES = [0.5, -0.5, -0.5, 0.5]
RATIOS = [3.0, 0.5, 1.5, 2.5]     # π_trainer / π_sampler on every token of each sequence
C = 4.0                           # Dr. GRPO's constant normaliser: max_new_tokens


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return LlamaForCausalLM(config)


class SeparateEngine:
    """What the update asks of a vLLM / Ray engine: it holds its own copy of the weights."""

    def shares_weights(self, model):
        return False


class _Run:
    def check_finite(self, step, metrics):
        pass


def cfg_with(*overrides):
    return load_config(RLConfig, None, ["algorithm.name=dr_grpo", "rollout.engine=vllm", "rollout.prompts_per_step=2",
                                        "rollout.samples_per_prompt=2", "micro_batch_size=2",
                                        "rollout.max_new_tokens=4", *overrides])


def hand_batch(model, ratios=RATIOS):
    """Prompts [3, 4]; responses of LENGTHS tokens; sampler log-probs = trainer's − ln ρ per sequence."""
    g = torch.Generator().manual_seed(1)
    sequences = []
    for n in LENGTHS:
        response = torch.randint(5, 32, (n,), generator=g).tolist()
        sequences.append(TokenSequence([3, 4] + response, [0, 0] + [1] * n, [0.0] * (2 + n)))
    batch = build_batch(sequences, REWARDS, [0, 0, 1, 1], pad_id=0)
    trainer = batch_logprobs(model, batch, 1.0, 2)
    shift = torch.tensor([math.log(r) for r in ratios]).unsqueeze(1)
    batch.sampler_logprobs = (trainer - shift) * batch.mask
    return batch


def update(model, batch, cfg, ledger=None):
    """One update as `rl_step` makes it, on a copy of `model` (SGD, lr 0.1, no clipping)."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    metrics = grpo.train_on_batch(model, None, SeparateEngine(), optimizer, scheduler, batch, cfg,
                                  cfg.algorithm.resolve(), _Run(), 0, ledger or ComputeLedger(), 1)
    return metrics, model


@pytest.mark.parametrize("level, weights", [
    ("token", [2.0, 0.5, 1.5, 2.0]),            # min(ρ, 2)
    ("sequence", [2.0, 0.125, 1.5, 2.0]),       # min(ρ^n, 2): 3² = 9, 0.5³, 1.5¹, 2.5² = 6.25
])
def test_correction_weighs_the_loss_by_the_capped_ratio(policy, level, weights):
    """The old log-probs are the trainer's, so at the first update ρ_PPO = 1 and each token's loss
    is −A; weighted: Σ_b n_b w_b (−A_b) / (4 sequences · C).
    token:    (−2·2·½ + 3·½·½ + 1·1.5·½ − 2·2·½) / 16 = −2.5 / 16 = −0.15625
    sequence: (−2 + 3·0.125·½ + 0.75 − 2) / 16 = −3.0625 / 16 = −0.19140625
    Weight mean over the 8 tokens: Σ n_b w_b / 8; truncated: sequences 0 and 3 (2 + 2 tokens) = ½."""
    batch = hand_batch(policy)
    ledger = ComputeLedger()
    metrics, _ = update(policy, batch, cfg_with(f"rollout.importance_correction={level}"), ledger)
    expected_loss = sum(n * w * -a for n, w, a in zip(LENGTHS, weights, ADVANTAGES)) / (4 * C)
    assert metrics["train/loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["train/is_weight_mean"] == pytest.approx(sum(n * w for n, w in zip(LENGTHS, weights)) / 8,
                                                            rel=1e-6)
    assert metrics["train/is_truncated_fraction"] == pytest.approx(0.5)
    assert metrics["train/ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # against the trainer's own old log-probs
    gap = sum(n * abs(math.log(r)) for n, r in zip(LENGTHS, RATIOS)) / 8
    assert metrics["train/sampler_logprob_gap"] == pytest.approx(gap, rel=1e-5)  # the health check is unchanged
    # The trainer's old log-probs cost one forward over the batch, in the ledger like a reference pass.
    assert ledger.state_dict()["stages"]["reference"]["tokens"] == int(batch.attention_mask.sum())


def test_mask_mode_drops_the_sequences_over_the_cap(policy):
    """MIS, token level: sequences 0 (ρ = 3) and 3 (ρ = 2.5) get weight 0, the others keep ρ:
    loss (3·0.5·½ + 1·1.5·½) / 16 = 1.5 / 16; mean weight (3·0.5 + 1.5) / 8 = 0.375."""
    metrics, _ = update(policy, hand_batch(policy), cfg_with("rollout.importance_correction=token",
                                                             "rollout.importance_mode=mask"))
    assert metrics["train/loss"] == pytest.approx(1.5 / 16, rel=1e-5)
    assert metrics["train/is_weight_mean"] == pytest.approx(0.375, rel=1e-6)
    assert metrics["train/is_truncated_fraction"] == pytest.approx(0.5)


def test_without_correction_the_sampler_log_probs_stay_the_old_ones(policy):
    """Off (the default): ρ_PPO = π/μ = RATIOS at the first update, Dr. GRPO's clip (ε = 0.2) applies:
    ℓ = max(−ρA, −clip(ρ, 0.8, 1.2)A) = [−0.6, 0.4, 0.75, −0.6] per token, so the loss is
    (2·−0.6 + 3·0.4 + 0.75 + 2·−0.6) / 16 = −0.45 / 16; no correction metrics."""
    metrics, _ = update(policy, hand_batch(policy), cfg_with())
    assert metrics["train/loss"] == pytest.approx(-0.45 / 16, rel=1e-5)
    assert not any(key.startswith("train/is_") for key in metrics)


def test_a_sampler_that_agrees_with_the_trainer_is_not_corrected(policy):
    """Sampler log-probs equal to the trainer's: weights 1, and the update with the correction on
    is the update without it (same loss, gradient norm and new weights)."""
    batch = hand_batch(policy, ratios=[1.0] * 4)
    off, off_model = update(policy, batch, cfg_with())
    on, on_model = update(policy, batch, cfg_with("rollout.importance_correction=sequence"))
    assert on["train/is_weight_mean"] == pytest.approx(1.0) and on["train/is_truncated_fraction"] == 0.0
    for key in ("train/loss", "train/grad_norm", "entropy/mean", "train/ratio_mean"):
        assert on[key] == pytest.approx(off[key], rel=1e-5, abs=1e-9), key
    for (name, a), b in zip(on_model.named_parameters(), off_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("overrides, message", [
    (["rollout.engine=hf"], r"rollout.importance_correction=token .*rollout.engine=hf samples from the trained "
                            r"module itself"),
    (["algorithm.name=ppo"], r"rollout.importance_correction=token is implemented by the critic-free loop"),
    (["rollout.importance_cap=0.5"], r"rollout.importance_cap must be a number >= 1"),
    (["rollout.importance_mode=clip"], r"rollout.importance_mode"),
])
def test_config_refuses_a_correction_with_nothing_to_correct_or_a_bad_cap(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg_with("rollout.importance_correction=token", *overrides)
