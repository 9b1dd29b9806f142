"""PPO (RLHF) against a reward model trained on arithmetic pairs: the KL to the reference stays
bounded, the critic learns, the held-out reward-model score does not fall; a killed PPO run
resumes to the same numbers, adaptive β included.

That PPO *raises* a reward is shown on a verifiable reward, on every seed:
`test_rl_learns.py::test_rl_raises_the_reward[ppo]` (seeds 0-4: reward last5 − first5 0.33 / 0.32
/ 0.32 / 0.37 / 0.39, threshold 0.2). Against these tiny reward models it is not seed-robust, so
it is recorded here, not asserted. Seeds 0-4 (`python tests/seed_sweep.py --seeds 0-4 --
tests/integration/test_ppo_learns.py`, AVX2 host), 30 steps:
    score last5 − first5             0.158 / 0.099 / 0.198 / 0.225 / 0.066
    held-out RM score after − before 0.101 / 0.254 / -0.001 / 0.409 / 0.152 (30 prompts × 8 samples)
    max kl/sequence_mean             2.65 / 0.70 / 1.05 / 2.82 / 2.35 nats
    value loss last5 / first5        0.61 / 0.56 / 0.51 / 0.46 / 0.56
The reward models differ by seed in scale (seed 0 scores around 1.1, seed 1 around 0.1) and the
weaker warm starts (300 SFT steps; seeds 1, 2 add at 10-13 % greedy) give weak ones, while the
RM test's stronger set-up (600 + 300 steps) leaves the policy too little room. 60 steps, a
critic initialised from the RM, lr 1e-4 and 128 prompts per step did not make the score rise on
every seed either. Accuracy under the exact-answer check is not asserted: an 83 %-accurate reward
model can be, and is, partly over-optimised (Gao et al. 2022, arXiv 2210.10760).
"""

import json

import pytest

from posttrain.config import load_config
from posttrain.recipes import rl
from simulated_kill import killed_after_step
from test_reward_model_learns import reward_model_run, warm_policy_dir

pytestmark = pytest.mark.integration


def ppo_overrides(tmp_path, name, reward, seed=0):
    return [
        f"model.name_or_path={warm_policy_dir(seed, 'ppo')}", "model.device=cpu", "algorithm.name=ppo",
        f"run.seed={seed}", f"run.output_dir={tmp_path}", f"run.name={name}", "run.report_to=[]", "run.save_every=1000",
        "data.arithmetic.max_operand=19", "data.arithmetic.num_train=370", "data.arithmetic.num_eval=30",
        "data.max_length=32", "eval.num_samples=30", f"eval.reward={reward}", f"reward.functions=[{reward}]",
        "rollout.max_new_tokens=5", "rollout.prompts_per_step=32", "rollout.samples_per_prompt=1",
        "micro_batch_size=32", "updates_per_batch=2", "optim.lr=3e-4",
    ]


def logged(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward/score_mean" in r]


def test_ppo_against_a_reward_model_keeps_kl_bounded_and_its_critic_learns(tmp_path, learning):
    # The warm policy and the reward model are those of the same seed.
    reward = f"reward_model:{reward_model_run(learning.seed, 'ppo') / 'model'}"
    cfg = load_config(rl.RLConfig, None, ppo_overrides(tmp_path, "ppo", reward, learning.seed) + [
        "steps=30", "eval.samples_per_prompt=8"])
    summary = rl.train(cfg)  # dispatched to recipes/ppo.py: the algorithm needs a critic
    rows = logged(tmp_path / "ppo")
    scores = [r["reward/score_mean"] for r in rows]
    kl = [r["kl/sequence_mean"] for r in rows]
    assert len(rows) == 30 and kl[0] == pytest.approx(0.0, abs=1e-5)  # batch 1 is sampled from the reference
    value_loss = [r["train/value_loss"] for r in rows]
    learning.record("score_mean last5 - first5 (not asserted)", sum(scores[-5:]) / 5 - sum(scores[:5]) / 5)
    with learning.checks() as check:
        check("eval/reward_sampled after - before",
              summary["after/eval/reward_sampled"] - summary["before/eval/reward_sampled"], ">", -0.05)
        check("max kl/sequence_mean", max(kl), "<", 8.0)
        check("max kl/mean", max(r["kl/mean"] for r in rows), "<", 2.0)
        check("train/value_loss last5 / first5", sum(value_loss[-5:]) / sum(value_loss[:5]), "<", 0.8)
    assert any(r["train/clip_fraction"] > 0 for r in rows)  # two PPO epochs per batch: the clip acts
    for key in ("kl/beta", "train/value_loss", "train/policy_loss", "value/explained_variance",
                "value/clip_fraction", "returns/mean", "values/mean", "reward/non_score_mean", "entropy/mean",
                "compute/values/flops"):
        assert key in rows[-1], key
    assert (tmp_path / "ppo" / "model" / "config.json").is_file()
    assert (tmp_path / "ppo" / "value_model" / "config.json").is_file()


def test_killed_ppo_run_resumes_with_the_same_losses_and_adaptive_kl_coefficient(tmp_path, monkeypatch):
    """Adaptive β, target 0.01 nats, horizon 8 = one batch of 8 (K_β = 1): the first batch is
    sampled from the reference (KL 0, error clipped to −0.2) so β goes 0.05 → 0.04; later batches
    have KL > 0.012 (error clipped to +0.2), so β grows ×1.2 per batch. A resumed run must continue
    from the saved β."""
    reward = f"reward_model:{reward_model_run(0, 'ppo') / 'model'}"

    def run(name, extra=()):
        cfg = load_config(rl.RLConfig, None, ppo_overrides(tmp_path, name, reward) + [
            "steps=4", "run.save_every=2", "rollout.prompts_per_step=8", "micro_batch_size=8", "eval.num_samples=4",
            "eval.reward=arithmetic", "algorithm.kl_target=0.01", "algorithm.kl_horizon=8", "critic.init=" + reward,
            *extra])
        return rl.train(cfg)

    def numbers(name):
        return {r["step"]: (r["reward/score_mean"], r["train/loss"], r["kl/beta"]) for r in logged(tmp_path / name)}

    straight = run("straight")
    betas = [r["kl/beta"] for r in logged(tmp_path / "straight")]
    assert betas == pytest.approx([0.05, 0.04, 0.048, 0.0576]), betas
    assert straight["final_kl_coef"] == pytest.approx(0.0576 * 1.2)

    with killed_after_step(monkeypatch, 3, "reward/score_mean"):
        run("killed")
    run("killed", ["run.resume=true"])
    expected, got = numbers("straight"), numbers("killed")
    assert sorted(got) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
