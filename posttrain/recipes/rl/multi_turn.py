"""The multi-turn rollout step: whole episodes in an environment, scored once at the end.

`multi_turn_round` is a `GenerateAndScore` (recipes/rl/rollouts.py), so GRPO, DAPO and the rest
train on episodes with no change to their loop: each prompt row gets G environments (one per
sample, each holding its own episode), `agents.episodes.run_episodes` plays them in lockstep,
and each trajectory becomes one `TokenSequence` whose loss mask covers the model's turns only.

The outcome reward goes through the run's `RewardRunner` like a single-turn completion — the same
worker-process timeouts, error counting and `on_error` — with the episode's final answer as the
"completion" (the `answer` tool's argument, or the last message when the model ended with text),
so an environment's reward is an ordinary reward function `(prompt, completion, **row)` and a
user can swap it in `reward.functions`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from posttrain.agents.episodes import EpisodeLimits, TemplateEncoder, run_episodes
from posttrain.compute import ComputeLedger
from posttrain.engines.base import Engine, SamplingParams
from posttrain.envs.base import Environment, Trajectory
from posttrain.recipes.rl.batch import trajectory_sequence
from posttrain.recipes.rl.rollouts import GenerateAndScore, ScoredRound
from posttrain.verifiers.combine import RewardRunner

__all__ = ["EpisodeAnswer", "episode_generator", "episode_limits", "final_answer", "multi_turn_round",
           "play_episodes", "rollout_round"]


def final_answer(env: Environment, trajectory: Trajectory) -> str:
    """What the episode answered: the environment's `final_answer` when it has one, else the
    text of the model's last turn ("" when the episode ended without either)."""
    answer = getattr(env, "final_answer", None)
    return str(answer) if answer is not None else trajectory.final_completion


def play_episodes(engine: Engine, make_env: Callable[[dict], Environment], tokenizer: Any, limits: EpisodeLimits,
                  encoder: TemplateEncoder, rows: list[dict], sampling: SamplingParams):
    """`sampling.n` episodes of every row in lockstep, each in its own environment.

    Returns (prompt_index, flat_rows, trajectories, answers, stats), aligned: episode i played
    `rows[prompt_index[i]]` and answered `answers[i]` (`final_answer`)."""
    prompt_index = [i for i in range(len(rows)) for _ in range(sampling.n)]
    flat_rows = [rows[i] for i in prompt_index]
    envs = [make_env(row) for row in flat_rows]
    trajectories, stats = run_episodes(envs, flat_rows, engine, tokenizer, dataclasses.replace(sampling, n=1),
                                       limits, encoder=encoder)
    answers = [final_answer(env, t) for env, t in zip(envs, trajectories)]
    return prompt_index, flat_rows, trajectories, answers, stats


def multi_turn_round(engine: Engine, make_env: Callable[[dict], Environment], rewards: RewardRunner,
                     tokenizer: Any, limits: EpisodeLimits, ledger: ComputeLedger, n_params: int) -> GenerateAndScore:
    """Episodes of `make_env(row)` for every sample of every row, scored by `rewards`."""
    encoder = TemplateEncoder(tokenizer)

    def generate_and_score(rows: list[dict], prompt_ids: list[list[int]], sampling: SamplingParams) -> ScoredRound:
        del prompt_ids  # each episode's prompt is rendered from env.reset, with that episode's tools
        with ledger.timed("rollout"):
            prompt_index, flat_rows, trajectories, answers, stats = play_episodes(
                engine, make_env, tokenizer, limits, encoder, rows, sampling)
        # Each turn prefills its episode's whole history (no cache is kept between turns), then decodes.
        ledger.record("rollout", tokens=stats.prefill_tokens + stats.model_tokens, params=n_params)
        with ledger.timed("scoring"):
            report = rewards([row["prompt"] for row in flat_rows], answers, flat_rows)
        for trajectory, reward in zip(trajectories, report.total):
            trajectory.reward = reward
        sequences = [trajectory_sequence(t) for t in trajectories]
        return ScoredRound(sequences, report.total, prompt_index, report.metrics(), episodes=stats)

    return generate_and_score


@dataclasses.dataclass
class EpisodeAnswer:
    """An evaluated episode as `evaluation.evaluate_accuracy` reads it: the final answer and every
    token the model generated over its turns."""

    text: str
    token_ids: list[int]
    trajectory: Trajectory


def episode_generator(engine: Engine, make_env: Callable[[dict], Environment], tokenizer: Any,
                      limits: EpisodeLimits, stats: list) -> Callable:
    """`evaluate_accuracy`'s `generate` for episodes; each call's `EpisodeStats` is appended to `stats`."""
    encoder = TemplateEncoder(tokenizer)

    def generate(rows: list[dict], prompt_ids: list[list[int]], sampling: SamplingParams) -> list[list[EpisodeAnswer]]:
        _, _, trajectories, answers, batch_stats = play_episodes(engine, make_env, tokenizer, limits, encoder,
                                                                 rows, sampling)
        stats.append(batch_stats)
        played = [EpisodeAnswer(answer, [i for i, m in zip(t.token_ids, t.loss_mask) if m], t)
                  for answer, t in zip(answers, trajectories)]
        n = sampling.n
        return [played[i * n:(i + 1) * n] for i in range(len(rows))]

    return generate


def episode_limits(cfg, model_max_context: int | None) -> EpisodeLimits:
    """The `env` section's limits (an `RLConfig`); the context defaults to the model's."""
    env = cfg.env
    return EpisodeLimits(max_turns=env.max_turns, max_new_tokens=cfg.rollout.max_new_tokens,
                         max_episode_tokens=env.max_episode_tokens,
                         max_context=env.max_context or model_max_context)


def rollout_round(engine: Engine, tokenizer: Any, rewards: RewardRunner, ledger: ComputeLedger,
                  n_params: int, make_env: Callable[[dict], Environment] | None, limits: EpisodeLimits | None
                  ) -> GenerateAndScore:
    """The step's rollout: one completion per sample, or whole episodes when `env.name` is set."""
    if make_env is None:
        from posttrain.recipes.rl.rollouts import single_turn_round

        return single_turn_round(engine, rewards, ledger, n_params)
    return multi_turn_round(engine, make_env, rewards, tokenizer, limits, ledger, n_params)
