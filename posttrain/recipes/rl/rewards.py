"""The reward runner an RL run scores with, built from the config's `reward` section."""

from __future__ import annotations

from posttrain.rewards import resolve_reward
from posttrain.run import Run
from posttrain.verifiers.combine import RewardRunner


def reward_runner(cfg, run: Run) -> RewardRunner:
    """The configured reward functions, weights, timeout and error policy."""
    names = cfg.reward.functions
    weights = dict(zip(names, cfg.reward.weights)) if cfg.reward.weights else None
    return RewardRunner({name: resolve_reward(name) for name in names}, weights,
                        on_error=cfg.reward.on_error, timeout_s=cfg.reward.timeout_s)


def eval_reward(cfg):
    """What held-out accuracy is scored with: `eval.reward`, else the first training reward."""
    return resolve_reward(cfg.eval.reward or cfg.reward.functions[0])
