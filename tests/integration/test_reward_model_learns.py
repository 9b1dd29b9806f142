"""The reward-model recipe learns held-out preferences, and its saved model is a standard
transformers reward model: reloaded, it gives the same scores, and `reward_model:<dir>` scores
(batched or one at a time) what training scored.

Why the warm start: the RM reads correctness off its backbone, so it needs a policy that can add.
Addition is learnt in a jump whose timing varies with the seed: a 300-step SFT on sums of 0–19
adds at ~95 % greedy for seed 0 but at 10–13 % for seeds 1 and 2, and the RM on top of those
stays near 0.65; 600 steps bring seeds 0–4 to >= 0.65 greedy. (Longer, 1000 steps, adds better
but made a worse RM backbone: 0.56–0.73 held-out accuracy after the same RM training.)
The pairs: each problem with NEAR_MISSES different near misses (correct answer chosen), for
training (~1,500 pairs: one near miss per problem let the RM fit those pairs rather than
correctness) and for the held-out set: its 30 problems are every 0–19 sum in the test split, so
120 held-out pairs instead of 30 make the accuracy less coarse (steps of 0.008, not 0.033).
Seeds 0–4: warm policy 0.93 / 0.90 / 0.67 / 1.0 / 0.90 greedy; RM held-out accuracy 0.83 / 0.84 /
0.82 / 0.83 / 0.83 (from 0.45–0.58), margin 1.8–2.4; the thresholds sit below the worst seed.
The warm models and RMs are built once per session and seed in the test cache.
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
NEAR_MISSES = 4  # rejected answers per problem, in the training and the held-out pairs


def _shared_runs() -> Path:
    return Path(os.environ["POSTTRAIN_CACHE"]) / "rm-test-runs"


def warm_policy_dir(seed: int = 0, setup: str = "rm") -> str:
    """SFT on sums of 0–19 with `run.seed=seed` (built once per test session, seed and set-up).

    `setup="rm"`: 600 steps (this file's tests). `setup="ppo"`: the 300-step warm start
    `test_ppo_learns.py` was tuned on (its docstring says why it keeps it)."""
    name = f"warm-{setup}-seed{seed}"
    model_dir = _shared_runs() / name / "model"
    if not (model_dir / "config.json").is_file():
        extra = (["steps=600", "eval.reward=arithmetic", "eval.num_samples=30", "eval.temperature=0"]
                 if setup == "rm" else ["steps=300"])
        cfg = load_config(sft.SFTConfig, None, ARITHMETIC + extra + [
            f"run.output_dir={_shared_runs()}", f"run.name={name}", "run.overwrite=true",
            "optim.lr=3e-3", "optim.warmup_steps=10", f"run.seed={seed}"])
        sft.train(cfg)
    return str(model_dir)


def _pairs(problems, seed: int, split: str) -> list[dict]:
    """Each problem NEAR_MISSES times, with a different near miss each time (seeded)."""
    rejected: dict[str, set[str]] = {}
    rows = []
    for draw in range(20 * NEAR_MISSES):
        if len(rows) == NEAR_MISSES * len(problems):
            break
        for row in preference_rows(problems, seed=f"{seed}/{split}/{draw}"):
            taken = rejected.setdefault(row["prompt"][0]["content"], set())
            if row["rejected"] not in taken and len(taken) < NEAR_MISSES:
                taken.add(row["rejected"])
                rows.append(row)
    return rows


def preference_files(seed: int = 0) -> tuple[Path, Path]:
    """Training and held-out pair files of a seed (written once per session and seed)."""
    out = _shared_runs() / f"pairs-seed{seed}"
    train, held_out = out / "train.jsonl", out / "eval.jsonl"
    if not held_out.is_file():
        out.mkdir(parents=True, exist_ok=True)
        task = ArithmeticTask(max_operand=19)
        for path, split, n in ((train, "train", 370), (held_out, "test", 30)):
            rows = _pairs(task.problems(n, seed=seed, split=split), seed, split)
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return train, held_out


def _rm_data(seed: int) -> list[str]:
    train, held_out = preference_files(seed)
    return [f"data.train={train}", f"data.eval={held_out}"]


def reward_model_run(seed: int = 0, setup: str = "rm") -> Path:
    """A reward model trained on arithmetic pairs from the warm policy of the same seed and set-up
    (once per session, seed and set-up). `setup="rm"`: 300 cosine steps on the NEAR_MISSES pair
    files; `setup="ppo"`: 100 constant-LR steps on the built-in one-pair-per-problem data."""
    name = f"rm-{setup}-seed{seed}"
    run_dir = _shared_runs() / name
    if not (run_dir / "summary.json").is_file():
        extra = (_rm_data(seed) + ["steps=300", "optim.schedule=cosine"] if setup == "rm"
                 else ["steps=100", "optim.schedule=constant"])
        cfg = load_config(reward_model.RewardModelConfig, None, ARITHMETIC + extra + [
            f"model.name_or_path={warm_policy_dir(seed, setup)}", f"run.output_dir={_shared_runs()}",
            f"run.name={name}", "run.overwrite=true", "pairs_per_step=32", "micro_batch_size=32", "optim.lr=1e-3",
            "run.eval_every=25", "centering_coef=0.01", f"run.seed={seed}"])
        reward_model.train(cfg)
    return run_dir


def test_held_out_preference_accuracy_rises_well_above_chance(learning):
    run_dir = reward_model_run(learning.seed)
    summary = json.loads((run_dir / "summary.json").read_text())
    warm = json.loads((Path(warm_policy_dir(learning.seed)).parent / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/accuracy" in r]
    assert summary["after/eval/num_pairs"] == NEAR_MISSES * 30
    learning.record("warm policy after/eval/accuracy_greedy", warm["after/eval/accuracy_greedy"])
    with learning.checks() as check:
        check("before/eval/accuracy", summary["before/eval/accuracy"], "<", 0.65)
        check("after/eval/accuracy", summary["after/eval/accuracy"], ">=", 0.75)
        check("eval/loss after - before", summary["after/eval/loss"] - summary["before/eval/loss"], "<", 0.0)
        check("after/eval/margin", summary["after/eval/margin"], ">", 0.5)
        check("train/accuracy last10 - first10", sum(r["train/accuracy"] for r in train[-10:]) / 10
              - sum(r["train/accuracy"] for r in train[:10]) / 10, ">", 0.0)
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
    cfg = load_config(reward_model.RewardModelConfig, None, ARITHMETIC + _rm_data(0))
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
    pairs = [json.loads(line) for line in preference_files(0)[1].read_text().splitlines()]
    forwards = []
    # Scores are read through the backbone and the head separately (models/scalar_head.py, so the
    # head runs in float32 under autocast): count the backbone's forwards.
    backbone = getattr(scorer.model, scorer.model.base_model_prefix)
    backbone.register_forward_hook(lambda module, args, output: forwards.append(1))
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
