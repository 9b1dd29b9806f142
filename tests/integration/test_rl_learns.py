"""The RL loop optimises the reward it is given, and survives reward functions that fail.

The model is SFT-warmed on small additions in a module fixture (~20 s); RL then shifts its
answers toward a preference it can reach from there (an odd leading digit), which moves the
reward from about one half to clearly above it within a few dozen steps.
"""

import json
import os
import time

import pytest

from posttrain.config import load_config
from posttrain.recipes import rl, sft
from simulated_kill import killed_after_step

pytestmark = pytest.mark.integration


def odd_first_digit(prompt, completion, **row):
    text = completion.strip()
    return 1.0 if text[:1].isdigit() and int(text[0]) % 2 == 1 else 0.0


def flaky(prompt, completion, answer, **row):
    if int(answer) % 2:
        raise RuntimeError("flaky reward blew up")
    return 0.0


def sleepy(prompt, completion, answer, **row):
    """Hangs on its first call only (a marker file remembers it across worker restarts)."""
    marker = os.environ["POSTTRAIN_TEST_HANG_MARKER"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(60)
    return 0.0


@pytest.fixture(scope="module")
def warm_models(tmp_path_factory):
    """The SFT-warmed model directory for a seed (`run.seed`), built once per module and seed."""
    made = {}

    def warm(seed):
        if seed not in made:
            out = tmp_path_factory.mktemp(f"warm-seed{seed}")
            cfg = load_config(sft.SFTConfig, None, [
                f"run.output_dir={out}", "run.name=warm", "steps=250", "optim.lr=3e-3", "optim.warmup_steps=10",
                "data.arithmetic.max_operand=29", "data.arithmetic.num_train=800", "data.arithmetic.num_eval=20",
                "data.max_length=32", "model.device=cpu", "run.report_to=[]", "run.save_every=1000",
                f"run.seed={seed}",
            ])
            made[seed] = sft.train(cfg)["model_dir"]
        return made[seed]

    return warm


@pytest.fixture(scope="module")
def warm_model(warm_models):
    return warm_models(0)


def rl_overrides(tmp_path, model_dir, name):
    return [
        f"model.name_or_path={model_dir}", "model.device=cpu", f"run.output_dir={tmp_path}", f"run.name={name}",
        "run.report_to=[]", "data.arithmetic.max_operand=29", "data.arithmetic.num_train=800",
        "data.arithmetic.num_eval=20", "data.max_length=32", "eval.num_samples=20", "eval.reward=arithmetic",
        "rollout.max_new_tokens=5", "rollout.prompts_per_step=8", "rollout.samples_per_prompt=8",
        "micro_batch_size=32", "run.save_every=1000",
    ]


def rewards_by_step(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward/mean" in r]


# PPO samples each prompt once (its baseline is the critic, not the group): 64 prompts x 1 keeps the
# 64 rollouts per step of the group methods' 8 x 8.
PER_ALGORITHM = {"grpo": [], "dapo": [], "ppo": ["rollout.prompts_per_step=64", "rollout.samples_per_prompt=1"]}


@pytest.mark.parametrize("algorithm", sorted(PER_ALGORITHM))
def test_rl_raises_the_reward(tmp_path, warm_models, algorithm, learning):
    cfg = load_config(rl.RLConfig, None, rl_overrides(tmp_path, warm_models(learning.seed), algorithm) + [
        f"algorithm.name={algorithm}", "reward.functions=[test_rl_learns:odd_first_digit]", "steps=40",
        "optim.lr=3e-4", f"run.seed={learning.seed}", *PER_ALGORITHM[algorithm],
    ])
    summary = rl.train(cfg)
    rows = rewards_by_step(tmp_path / algorithm)
    first = sum(r["reward/mean"] for r in rows[:5]) / 5
    last = sum(r["reward/mean"] for r in rows[-5:]) / 5
    learning.record("reward/mean last5 - first5", last - first, ">", 0.2)
    learning.record("reward/mean last5", last, ">", 0.75)
    assert last > first + 0.2, (first, last)
    assert last > 0.75
    for key in ("reward/accuracy", "groups/kept", "response/length_mean", "groups/zero_advantage_fraction",
                "compute/rollout/tokens_per_s"):
        assert all(key in r for r in rows), key  # logged every step, updated or not
    updated = [r for r in rows if r["train/update_skipped"] == 0]  # DAPO may keep no group in a step
    assert updated
    for key in ("entropy/mean", "train/clip_fraction", "train/sampler_logprob_gap", "compute/update/flops"):
        assert key in updated[-1], key
    # The KL to the reference is measured (and logged) only where the algorithm has a KL term.
    has_kl = load_config(rl.RLConfig, None, [f"algorithm.name={algorithm}"]).algorithm.resolve().kl_coef > 0
    assert ("kl/mean" in updated[-1]) == has_kl, (algorithm, has_kl)
    assert summary["rl_steps"] == 40 and (tmp_path / algorithm / "model" / "config.json").is_file()


def test_failing_rewards_are_counted_and_training_goes_on(tmp_path, warm_model, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_TEST_HANG_MARKER", str(tmp_path / "hung-once"))
    cfg = load_config(rl.RLConfig, None, rl_overrides(tmp_path, warm_model, "faulty") + [
        "reward.functions=[arithmetic, test_rl_learns:flaky, test_rl_learns:sleepy]",
        "reward.timeout_s=1.0", "steps=2", "rollout.prompts_per_step=4", "micro_batch_size=32",
    ])
    summary = rl.train(cfg)
    rows = rewards_by_step(tmp_path / "faulty")
    assert len(rows) == 2
    raised = sum(r["rewards/test_rl_learns:flaky/raised"] for r in rows)
    timed_out = sum(r["rewards/test_rl_learns:sleepy/timed_out"] for r in rows)
    assert raised > 0 and timed_out == 1, (raised, timed_out)
    assert summary["rl_steps"] == 2


def test_killed_rl_run_resumes_to_the_same_rewards_and_losses(tmp_path, warm_model, monkeypatch):
    def run(name, extra=()):
        cfg = load_config(rl.RLConfig, None, rl_overrides(tmp_path, warm_model, name) + [
            "steps=4", "run.save_every=2", "run.log_every=1", "optim.lr=3e-4", "updates_per_batch=2",
            "reward.functions=[test_rl_learns:odd_first_digit]", *extra])
        return rl.train(cfg)

    def losses(name):  # a step that kept nothing for the update logs no loss: None on both sides
        return {r["step"]: (r["reward/mean"], r.get("train/loss")) for r in rewards_by_step(tmp_path / name)}

    run("straight")
    with killed_after_step(monkeypatch, 3, "reward/mean"):
        run("killed")
    run("killed", ["run.resume=true"])
    expected, got = losses("straight"), losses("killed")
    assert sorted(got) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
