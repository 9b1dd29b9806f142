"""Collecting one step's rollouts: generate-and-score rounds, reward shaping, DAPO's filter and refill.

The loop calls `collect_rollouts(generate_and_score, ...)`. What one round does — sample G
completions per prompt and score them — is the injected `generate_and_score` function, so a
multi-turn environment (episodes in lockstep, tool calls) or a remote engine replaces
`single_turn_round` without touching the loop or the filter. A round returns token sequences
with their loss masks, rewards and each sequence's prompt; collection turns them into one
`RolloutBatch` with unique group ids across rounds.

Metrics are computed over every sampled rollout of every round, before dynamic sampling drops
groups (as the DAPO paper reports them, Yu et al. 2025, arXiv 2503.14476); the groups that were
kept for the update have their own `reward/kept_mean`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from posttrain.algorithms.advantages import group_stats, keep_mask_for_informative_groups
from posttrain.algorithms.policy_loss import overlong_penalty
from posttrain.agents.episodes import EpisodeStats
from posttrain.compute import ComputeLedger
from posttrain.engines.base import Engine, SamplingParams
from posttrain.recipes.prompt_data import PromptSet
from posttrain.recipes.rl.batch import RolloutBatch, TokenSequence, build_batch, concat_batches, single_turn_sequence
from posttrain.training.order import step_indices
from posttrain.verifiers.combine import RewardRunner


@dataclass
class ScoredRound:
    """One round of rollouts: `sequences[i]` answers prompt `prompt_index[i]` of the round's rows
    and scored `rewards[i]` (None: not scorable); `texts[i]` is what it says (the completion, or
    the episode's conversation), for the rollouts sample (empty: the round gave no text)."""

    sequences: list[TokenSequence]
    rewards: list[float | None]
    prompt_index: list[int]
    metrics: dict = field(default_factory=dict)  # the reward runner's figures for this round
    episodes: EpisodeStats | None = None  # multi-turn rounds: turns, stops, tool calls
    texts: list[str] = field(default_factory=list)


# (rows, prompt token ids, sampling) -> ScoredRound; `sampling.n` rollouts per prompt.
GenerateAndScore = Callable[[list[dict], list[list[int]], SamplingParams], ScoredRound]


def single_turn_round(engine: Engine, rewards: RewardRunner, ledger: ComputeLedger, n_params: int
                      ) -> GenerateAndScore:
    """One completion per sample, scored by the reward functions: RL with verifiable rewards."""

    def generate_and_score(rows: list[dict], prompt_ids: list[list[int]], sampling: SamplingParams) -> ScoredRound:
        with ledger.timed("rollout"):
            groups = engine.generate(prompt_ids, sampling)
        completions = [c for group in groups for c in group]
        prompt_index = [c.prompt_index for c in completions]
        # Each prompt is prefilled once (its cache shared by its samples), then every sampled token decoded.
        ledger.record("rollout", tokens=sum(map(len, prompt_ids)) + sum(len(c.token_ids) for c in completions),
                      params=n_params)
        flat_rows = [rows[i] for i in prompt_index]
        with ledger.timed("scoring"):
            report = rewards([row["prompt"] for row in flat_rows], [c.text for c in completions], flat_rows)
        sequences = [single_turn_sequence(prompt_ids[i], c) for i, c in zip(prompt_index, completions)]
        return ScoredRound(sequences, report.total, prompt_index, report.metrics(),
                           texts=[c.text for c in completions])

    return generate_and_score


def collect_rollouts(generate_and_score: GenerateAndScore, prompts: PromptSet, cfg, algo, step: int,
                     pad_id: int, sample_log=None) -> tuple[RolloutBatch, dict]:
    """The step's scored rollouts, G per prompt; with dynamic sampling only informative groups
    (rewards not all equal), refilled from later prompts for up to `max_refill_rounds` rounds.
    `sample_log` (a `samples.RolloutLog`) gets the first round, to keep a few rollouts as text.

    Returns the batch to train on (empty when every group was uniform) and the step's metrics.
    """
    r = cfg.rollout
    G = r.samples_per_prompt
    wanted = r.prompts_per_step
    kept: list[RolloutBatch] = []
    sampled: list[RolloutBatch] = []
    round_metrics: list[tuple[dict, int]] = []
    episodes: EpisodeStats | None = None
    kept_groups = zero_groups = total_groups = 0
    rounds = 1 + (r.max_refill_rounds if algo.dynamic_sampling else 0)
    for round_index in range(rounds):
        # Round k draws the prompts of a later, unused slice of the epoch permutation.
        indices = step_indices(step * rounds + round_index, per_step=wanted, num_examples=len(prompts),
                               seed=cfg.run.seed + 17)
        sampling = SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                  top_k=r.top_k, n=G, seed=cfg.run.seed * 100_003 + step * 101 + round_index)
        rows = [prompts.rows[i] for i in indices]
        scored = generate_and_score(rows, [prompts.prompt_ids[i] for i in indices], sampling)
        group_ids = [total_groups + i for i in scored.prompt_index]  # unique across the step's rounds
        if sample_log is not None and round_index == 0:
            sample_log.record(step, rows, scored, group_ids)
        batch = shape_rewards(build_batch(scored.sequences, scored.rewards, group_ids, pad_id), cfg, algo)
        sampled.append(batch)
        round_metrics.append((scored.metrics, batch.size))
        if scored.episodes is not None and episodes is None:
            episodes = scored.episodes
        elif scored.episodes is not None:
            episodes.add(scored.episodes)
        total_groups += len(indices)
        zero_groups += group_stats(batch.rewards, batch.group_ids).num_uniform if G > 1 else 0  # PPO may sample once
        if not algo.dynamic_sampling:
            kept.append(batch)
            kept_groups = len(indices)
            break
        keep = keep_mask_for_informative_groups(batch.rewards, batch.group_ids)
        index = torch.nonzero(keep).squeeze(1)[: (wanted - kept_groups) * G]
        if index.numel():
            kept.append(batch.select(index))
            kept_groups += index.numel() // G
        if kept_groups >= wanted:
            break
    everything = concat_batches(sampled)
    metrics = {
        "reward/mean": float(everything.rewards.mean()),
        "reward/accuracy": float((everything.rewards >= 0.5).float().mean()),
        "groups/sampled": float(total_groups),
        "groups/kept": float(kept_groups),
        "groups/zero_advantage_fraction": zero_groups / max(total_groups, 1),
        "response/length_mean": float(everything.response_lengths.float().mean()),
        "response/truncated_fraction": float(everything.truncated.float().mean()),
        "response/unscorable": float((~everything.scorable).sum()),
        **merge_reward_metrics(round_metrics),
        **(episodes.metrics() if episodes is not None else {}),
    }
    if not kept:  # every group uniform after all refills: nothing to learn from this step
        return RolloutBatch.empty(), metrics
    batch = concat_batches(kept)
    metrics["reward/kept_mean"] = float(batch.rewards.mean())
    return batch, metrics


def shape_rewards(batch: RolloutBatch, cfg, algo) -> RolloutBatch:
    """The configured length shaping (DAPO's overlong penalty, the missing-EOS penalty), then a
    None reward replaced by its group's mean (so it moves no baseline; its tokens are masked out)."""
    r = cfg.rollout
    if algo.overlong_cache_fraction:
        cache = max(1, int(algo.overlong_cache_fraction * r.max_new_tokens))
        batch.rewards = batch.rewards + overlong_penalty(batch.response_lengths, r.max_new_tokens, cache)
    if cfg.reward.missing_eos_penalty:
        batch.rewards = batch.rewards - cfg.reward.missing_eos_penalty * batch.truncated.float()
    return _fill_unscorable(batch)


def _fill_unscorable(batch: RolloutBatch) -> RolloutBatch:
    # Not `GroupLayout`: that needs equal groups of >= 2 (what a group baseline assumes), while PPO
    # samples each prompt once and a refilled DAPO batch may hold any group sizes here.
    if bool(batch.scorable.all()):
        return batch
    _, group = torch.unique(batch.group_ids, return_inverse=True)
    ok = batch.scorable.float()
    sums = torch.zeros(int(group.max()) + 1).index_add_(0, group, batch.rewards * ok)
    counts = torch.zeros_like(sums).index_add_(0, group, ok)
    means = sums / counts.clamp(min=1)
    batch.rewards = torch.where(batch.scorable, batch.rewards, means[group])
    return batch


def merge_reward_metrics(rounds: list[tuple[dict, int]]) -> dict:
    """The reward runner's per-round figures as one step's: failure and unscorable counts summed,
    means averaged over the scorable rollouts of every round (absent when no round had one)."""
    out: dict = {}
    for key in {k for metrics, _ in rounds for k in metrics}:
        if not key.endswith("/mean"):
            out[key] = sum(metrics.get(key, 0.0) for metrics, _ in rounds)
            continue
        unscorable_key = key[: -len("mean")] + "unscorable"
        weighted = [(metrics[key], size - metrics.get(unscorable_key, 0.0)) for metrics, size in rounds
                    if key in metrics and not math.isnan(metrics[key])]
        weight = sum(w for _, w in weighted)
        if weight > 0:
            out[key] = sum(value * w for value, w in weighted) / weight
    return out
