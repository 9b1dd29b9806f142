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

Per-turn scores (`reward.turn_functions`) go through a runner of their own with the same limits:
one call per model turn, the conversation before the turn as the prompt and the turn's text as the
completion. They shape the episode's one reward (`with_turn_scores`) rather than giving each
turn its own advantage: the group baselines of the GRPO family are per sequence, and a sum keeps
every algorithm of the family working on episodes unchanged.
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
from posttrain.recipes.rl.samples import transcript
from posttrain.verifiers.combine import RewardRunner

__all__ = ["EpisodeAnswer", "episode_generator", "episode_limits", "episode_text", "final_answer", "multi_turn_round",
           "play_episodes", "rollout_round", "score_turns", "turn_inputs", "with_turn_scores"]


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
    try:
        trajectories, stats = run_episodes(envs, flat_rows, engine, tokenizer, dataclasses.replace(sampling, n=1),
                                           limits, encoder=encoder)
        answers = [final_answer(env, t) for env, t in zip(envs, trajectories)]
    finally:
        for env in envs:  # their workbooks, connections, files: freed now, not when collected
            if callable(getattr(env, "close", None)):
                env.close()
    return prompt_index, flat_rows, trajectories, answers, stats


def episode_text(trajectory: Trajectory) -> str:
    """The conversation after the reset messages (from the model's first turn on), as text."""
    first = next((s.message_index for s in trajectory.spans if s.source == "model"), len(trajectory.messages))
    return transcript(trajectory.messages[first:])


def turn_inputs(trajectories: list[Trajectory]) -> tuple[list[int], list[Any], list[str], list[dict]]:
    """Every model turn of every trajectory as a reward input: (owner, prompts, completions, rows).
    Turn k of trajectory i is scored with the messages before it as the prompt, its text as the
    completion, and trajectory i's row plus ``turn_index=k`` and ``num_turns``; owner says i."""
    owner, prompts, completions, rows = [], [], [], []
    for i, trajectory in enumerate(trajectories):
        spans = [s for s in trajectory.spans if s.source == "model"]
        for k, span in enumerate(spans):
            owner.append(i)
            prompts.append(trajectory.messages[:span.message_index])
            completions.append(str(trajectory.messages[span.message_index].get("content") or ""))
            rows.append({**trajectory.row, "turn_index": k, "num_turns": len(spans)})
    return owner, prompts, completions, rows


def with_turn_scores(outcome: list[float | None], turn_scores: list[list[float | None]],
                     coef: float) -> list[float | None]:
    """Episode rewards: outcome + coef × the mean of the episode's scorable turn scores. An
    unscorable outcome (None) stays None; unscorable turns are left out of the mean, and an
    episode with none scorable (or no turns) keeps its outcome."""
    out = []
    for reward, turns in zip(outcome, turn_scores, strict=True):
        valid = [s for s in turns if s is not None]
        out.append(None if reward is None else reward + (coef * sum(valid) / len(valid) if valid else 0.0))
    return out


def score_turns(turn_rewards: RewardRunner, trajectories: list[Trajectory]) -> tuple[list[list[float | None]], dict]:
    """Each trajectory's per-turn totals from `turn_rewards` (also set as `trajectory.turn_rewards`)
    and the batch's metrics (turn_rewards/<name>/mean, raised, timed_out, invalid; turn_rewards/turns)."""
    owner, prompts, completions, rows = turn_inputs(trajectories)
    report = turn_rewards(prompts, completions, rows)
    per_trajectory: list[list[float | None]] = [[] for _ in trajectories]
    for i, score in zip(owner, report.total):
        per_trajectory[i].append(score)
    for trajectory, scores in zip(trajectories, per_trajectory):
        trajectory.turn_rewards = scores
    return per_trajectory, {**report.metrics("turn_rewards"), "turn_rewards/turns": float(len(owner))}


def multi_turn_round(engine: Engine, make_env: Callable[[dict], Environment], rewards: RewardRunner,
                     tokenizer: Any, limits: EpisodeLimits, ledger: ComputeLedger, n_params: int,
                     turn_rewards: RewardRunner | None = None, turn_coef: float = 1.0) -> GenerateAndScore:
    """Episodes of `make_env(row)` for every sample of every row, scored by `rewards` (and per
    turn by `turn_rewards`, weighted by `turn_coef`, when given)."""
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
            totals, metrics = list(report.total), report.metrics()
            if turn_rewards is not None:
                turn_scores, turn_metrics = score_turns(turn_rewards, trajectories)
                totals = with_turn_scores(totals, turn_scores, turn_coef)
                metrics.update(turn_metrics)
        for trajectory, reward in zip(trajectories, totals):
            trajectory.reward = reward
        sequences = [trajectory_sequence(t) for t in trajectories]
        return ScoredRound(sequences, totals, prompt_index, metrics, episodes=stats,
                           texts=[episode_text(t) for t in trajectories])

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
                  n_params: int, make_env: Callable[[dict], Environment] | None, limits: EpisodeLimits | None,
                  turn_rewards: RewardRunner | None = None, turn_coef: float = 1.0) -> GenerateAndScore:
    """The step's rollout: one completion per sample, or whole episodes when `env.name` is set
    (per-turn scores only there: the config refuses them without an environment)."""
    if make_env is None:
        from posttrain.recipes.rl.rollouts import single_turn_round

        return single_turn_round(engine, rewards, ledger, n_params)
    return multi_turn_round(engine, make_env, rewards, tokenizer, limits, ledger, n_params, turn_rewards, turn_coef)
