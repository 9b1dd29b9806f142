"""The reward-model recipe learns held-out preferences, and its saved model is a standard
transformers reward model: reloaded, it gives the same scores, and `reward_model:<dir>` scores
(batched or one at a time) what training scored.

Why the warm start: the RM reads correctness off its backbone, so it needs a policy that can add.
A 300-step SFT on sums of 0–19 (~30 s) adds to ~95 % greedy; from there ~100 RM steps lift
held-out preference accuracy from chance to ~0.8. (From a 250-step SFT on 0–29, which adds at
~8 %, the same RM training stalls near 0.6: the RM cannot learn addition from 1 bit per pair.)
The warm model and the RM are built once per session in the test cache, so `test_ppo_learns.py`
reuses them when both files run together.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from posttrain.config import load_config
from posttrain.data.collate import pad_sequences
from posttrain.envs.arithmetic import ArithmeticTask, preference_rows
from posttrain.recipes import sft
from posttrain.recipes.preference import reward_model
from posttrain.models.build import resolve_model_path
from posttrain.verifiers.combine import RewardRunner

pytestmark = pytest.mark.integration

ARITHMETIC = ["data.arithmetic.max_operand=19", "data.arithmetic.num_train=370", "data.arithmetic.num_eval=30",
              "data.max_length=32", "model.device=cpu", "run.report_to=[]", "run.save_every=1000"]


def _shared_runs() -> Path:
    return Path(os.environ["POSTTRAIN_CACHE"]) / "rm-test-runs"


def warm_policy_dir() -> str:
    """SFT on sums of 0–19 (built once per test session)."""
    model_dir = _shared_runs() / "warm" / "model"
    if not (model_dir / "config.json").is_file():
        cfg = load_config(sft.SFTConfig, None, ARITHMETIC + [
            f"run.output_dir={_shared_runs()}", "run.name=warm", "run.overwrite=true", "steps=300",
            "optim.lr=3e-3", "optim.warmup_steps=10"])
        sft.train(cfg)
    return str(model_dir)


def reward_model_run() -> Path:
    """A reward model trained on built-in arithmetic pairs from the warm policy (once per session)."""
    run_dir = _shared_runs() / "rm"
    if not (run_dir / "summary.json").is_file():
        cfg = load_config(reward_model.RewardModelConfig, None, ARITHMETIC + [
            f"model.name_or_path={warm_policy_dir()}", f"run.output_dir={_shared_runs()}", "run.name=rm",
            "run.overwrite=true", "steps=100", "pairs_per_step=32", "micro_batch_size=32", "optim.lr=1e-3",
            "optim.schedule=constant", "run.eval_every=25", "centering_coef=0.01"])
        reward_model.train(cfg)
    return run_dir


def test_held_out_preference_accuracy_rises_well_above_chance():
    run_dir = reward_model_run()
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    assert summary["before/eval/accuracy"] < 0.65, summary
    assert summary["after/eval/accuracy"] >= 0.75, evals
    assert summary["after/eval/loss"] < summary["before/eval/loss"]
    assert summary["after/eval/margin"] > 0.5
    train = [r for r in rows if "train/accuracy" in r]
    assert sum(r["train/accuracy"] for r in train[-10:]) / 10 > sum(r["train/accuracy"] for r in train[:10]) / 10
    for key in ("train/loss", "train/margin", "train/reward_mean", "train/grad_norm", "compute/reward_model/flops"):
        assert key in train[-1], key


def test_saved_reward_model_reloads_with_identical_scores_and_scores_like_training():
    """Reload with plain transformers; score the held-out pairs one by one, batched through
    `reward_model:<dir>`, and compare with the accuracy and margin the recipe logged."""
    from transformers import AutoModelForSequenceClassification

    from posttrain.recipes.preference.pair_data import load_preference_data
    from posttrain.rewards import resolve_reward

    run_dir = reward_model_run()
    summary = json.loads((run_dir / "summary.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    scorer = resolve_reward(f"reward_model:{run_dir / 'model'}")
    cfg = load_config(reward_model.RewardModelConfig, None, ARITHMETIC)
    data = load_preference_data(cfg.data, scorer.tokenizer, seed=cfg.run.seed)
    with torch.no_grad():
        one_by_one = [[model(input_ids=torch.tensor([ids])).logits.item() for ids in (p.chosen.input_ids,
                                                                                   p.rejected.input_ids)]
                      for p in data.eval]
    chosen, rejected = zip(*one_by_one)
    accuracy = sum(c > r for c, r in one_by_one) / len(one_by_one)
    margin = (sum(chosen) - sum(rejected)) / len(one_by_one)
    assert accuracy == pytest.approx(summary["after/eval/accuracy"])
    assert margin == pytest.approx(summary["after/eval/margin"], abs=1e-4)
    # The reward function renders (prompt, completion) as training did and scores a batch at once.
    problems = ArithmeticTask(max_operand=19).problems(30, seed=cfg.run.seed, split="test")
    pairs = preference_rows(problems, seed=cfg.run.seed)
    forwards = []
    scorer.model.register_forward_hook(lambda module, args, output: forwards.append(1))
    with RewardRunner({"rm": scorer}) as runner:  # as the RL loop calls rewards
        report = runner([r["prompt"] for r in pairs], [r["chosen"] for r in pairs], pairs)
    assert len(forwards) == 1  # the whole batch in one forward, through the `batch` hook
    assert report.per_reward["rm"] == pytest.approx(list(chosen), abs=1e-4)
    assert scorer(pairs[0]["prompt"], pairs[0]["rejected"]) == pytest.approx(rejected[0], abs=1e-4)


def test_bad_reward_model_specs_fail_clearly(tmp_path):
    from posttrain.rewards import resolve_reward

    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_reward(f"reward_model:{tmp_path}")
    with pytest.raises(ValueError, match="must look like 'reward_model:/path/to/model_dir'"):
        resolve_reward("reward_model:")


def test_score_is_read_at_the_last_real_token_and_survives_save_and_load(tmp_path):
    """An untrained scalar model on the tiny policy: each row's score in a right- or left-padded
    batch equals its score alone, and save → from_pretrained gives the same scores."""
    from transformers import AutoModelForSequenceClassification

    from posttrain.models.loading import load_tokenizer, save_model
    from posttrain.models.scalar_head import load_scalar_model, sequence_scores, token_values

    path = resolve_model_path("tiny")
    tokenizer = load_tokenizer(path)
    model = load_scalar_model(path, pad_token_id=tokenizer.pad_token_id).eval()
    sequences = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    with torch.no_grad():
        alone = torch.stack([sequence_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0]
                             for s in sequences])
        for side in ("right", "left"):
            ids = pad_sequences(sequences, tokenizer.pad_token_id, side=side)
            attention = pad_sequences([[1] * len(s) for s in sequences], 0, side=side)
            torch.testing.assert_close(sequence_scores(model, ids, attention), alone, rtol=1e-5, atol=1e-5)
        # token_values is the same head before pooling: its last real position is the sequence score.
        values = token_values(model, pad_sequences(sequences, tokenizer.pad_token_id),
                              pad_sequences([[1] * len(s) for s in sequences], 0))
        torch.testing.assert_close(values[torch.arange(3), torch.tensor([5, 1, 3])], alone, rtol=1e-5, atol=1e-5)
    save_model(model, tokenizer, tmp_path / "rm")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    ids = pad_sequences(sequences, tokenizer.pad_token_id)
    attention = pad_sequences([[1] * len(s) for s in sequences], 0)
    with torch.no_grad():  # same weights, same batch: bit-for-bit the same scores
        torch.testing.assert_close(sequence_scores(reloaded, ids, attention), sequence_scores(model, ids, attention),
                                   rtol=0, atol=0)
    assert load_tokenizer(tmp_path / "rm")("12+7=")["input_ids"] == tokenizer("12+7=")["input_ids"]
