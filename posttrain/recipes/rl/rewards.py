"""The reward runners an RL run scores with: training rollouts from the `reward` section, held-out
completions from `eval.reward` (else the first training reward) under the same limits, and the
per-turn scores of multi-turn episodes (`reward.turn_functions`). With `reward.workers` >= 1 the
training and turn runners score in Ray actors (`posttrain.verifiers.ray_rewards`)."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from posttrain.recipes.rl.evaluation import rl_eval_reward_runner
from posttrain.rewards import resolve_reward
from posttrain.run import Run
from posttrain.training.loop import warn_to
from posttrain.verifiers.combine import RewardRunner


SANDBOXED_REWARDS = ("code",)


def check_sandbox(required, names, key: str = "reward.sandbox.require") -> None:
    """Refuse to start when the code sandbox lacks a level of `required` (the setting `key`); warn
    once about missing levels when a sandboxed reward is in use (`names`)."""
    if required or any(name in SANDBOXED_REWARDS for name in names):
        from posttrain.verifiers.sandbox import require_protections  # probes with a subprocess: only when needed

        require_protections(required, key=key)


@contextlib.contextmanager
def reward_runners(cfg, run: Run) -> Iterator[tuple[RewardRunner, RewardRunner]]:
    """(training runner, evaluation runner), both warning on the run's console the first time a
    reward raises, times out or returns NaN; the evaluation runner reuses the training runner's
    wrapped reward when the limits are the same."""
    names = cfg.reward.functions
    weights = dict(zip(names, cfg.reward.weights)) if cfg.reward.weights else None
    warn = warn_to(run)
    check_sandbox(cfg.reward.sandbox.require, [*names, cfg.eval.reward or ""])
    with _runner(cfg, names, weights, warn) as training:
        # Evaluation scores in this process, sharing the training runner's wrapped function when the
        # limits are the same; with reward.workers it scores the driver's copy of it, not the actors.
        with rl_eval_reward_runner(cfg, warn=warn, share=training) as evaluation:
            yield training, evaluation


@contextlib.contextmanager
def turn_reward_runner(cfg, run: Run) -> Iterator[Optional[RewardRunner]]:
    """The runner of `reward.turn_functions` (None when there are none), with the training
    rewards' on_error and timeout, so a per-turn score that raises, hangs or returns NaN is
    handled and counted as an outcome reward is."""
    names = cfg.reward.turn_functions
    if not names:
        yield None
        return
    weights = dict(zip(names, cfg.reward.turn_weights)) if cfg.reward.turn_weights else None
    with _runner(cfg, names, weights, warn_to(run)) as runner:
        yield runner


def _runner(cfg, names, weights, warn) -> RewardRunner:
    """A runner of `names` under the `reward` section's limits: in this process (reward.workers=0) or
    over reward.workers Ray actors. The local Ray the first one starts (when none runs) gets a CPU
    for every actor of the run: the training and turn runners' and a Ray rollout engine's."""
    if cfg.reward.workers:
        from posttrain.verifiers.ray_rewards import RayRewardRunner  # imports Ray: only when asked for

        runners = 2 if cfg.reward.turn_functions else 1
        engine_cpus = cfg.rollout.workers if cfg.rollout.engine != "hf" else 0
        return RayRewardRunner(names, weights, workers=cfg.reward.workers, on_error=cfg.reward.on_error,
                               timeout_s=cfg.reward.timeout_s, warn=warn,
                               num_cpus=runners * cfg.reward.workers + engine_cpus)
    return RewardRunner({name: resolve_reward(name) for name in names}, weights, on_error=cfg.reward.on_error,
                        timeout_s=cfg.reward.timeout_s, warn=warn)
