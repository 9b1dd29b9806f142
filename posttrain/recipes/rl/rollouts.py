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

Over several data-parallel ranks (`training/distributed.py`) each rank samples its block of every
round's prompts, whole groups, with its own seed, and filters and refills its share alone (ranks
may run different numbers of rounds); group ids stay global, and the metrics are the step's,
computed from every rank's rollouts (`RolloutTally`, gathered once per step).
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
from posttrain.training.distributed import Ranks
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
                     pad_id: int, sample_log=None, ranks: Ranks = Ranks()) -> tuple[RolloutBatch, dict]:
    """The step's scored rollouts, G per prompt; with dynamic sampling only informative groups
    (rewards not all equal), refilled from later prompts for up to `max_refill_rounds` rounds.
    `sample_log` (a `samples.RolloutLog`) gets the first round, to keep a few rollouts as text.
    Over several `ranks`, this rank's share: its block of each round's prompts (module docstring).

    Returns the batch to train on (empty when every group was uniform) and the step's metrics.
    """
    r = cfg.rollout
    G = r.samples_per_prompt
    wanted = r.prompts_per_step // ranks.world_size  # this rank's groups
    kept: list[RolloutBatch] = []
    sampled: list[RolloutBatch] = []
    round_metrics: list[tuple[dict, int]] = []
    episodes: EpisodeStats | None = None
    kept_groups = zero_groups = total_groups = 0
    rounds = 1 + (r.max_refill_rounds if algo.dynamic_sampling else 0)
    for round_index in range(rounds):
        # Round k draws the prompts of a later, unused slice of the epoch permutation.
        indices = ranks.shard(step_indices(step * rounds + round_index, per_step=r.prompts_per_step,
                                           num_examples=len(prompts), seed=cfg.run.seed + 17))
        sampling = SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                  top_k=r.top_k, n=G, seed=ranks.seed(cfg.run.seed * 100_003 + step * 101 + round_index))
        rows = [prompts.rows[i] for i in indices]
        scored = generate_and_score(rows, [prompts.prompt_ids[i] for i in indices], sampling)
        # Unique across the step's rounds and ranks: the prompt's place among the round's prompts.
        first_group = round_index * r.prompts_per_step + ranks.rank * wanted
        group_ids = [first_group + i for i in scored.prompt_index]
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
    batch = concat_batches(kept) if kept else RolloutBatch.empty()  # empty: every group uniform after all refills
    tally = RolloutTally(everything.rewards, everything.response_lengths, everything.truncated, everything.scorable,
                         batch.rewards if kept else None, total_groups, kept_groups, zero_groups, round_metrics,
                         episodes)
    return batch, rollout_metrics(ranks.gather(tally))


@dataclass
class RolloutTally:
    """What one rank sampled in a step, per sequence of every round, for the step's metrics."""

    rewards: torch.Tensor
    response_lengths: torch.Tensor
    truncated: torch.Tensor
    scorable: torch.Tensor
    kept_rewards: torch.Tensor | None  # None: no group kept
    sampled_groups: int
    kept_groups: int
    zero_groups: int
    round_metrics: list[tuple[dict, int]]  # the reward runner's figures and the size of each round
    episodes: EpisodeStats | None


def rollout_metrics(tallies: list[RolloutTally]) -> dict:
    """The step's rollout metrics from every rank's tally (one tally in one process)."""
    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(t, name) for t in tallies])

    rewards = cat("rewards")
    total_groups = sum(t.sampled_groups for t in tallies)
    episodes = [t.episodes for t in tallies if t.episodes is not None]
    for more in episodes[1:]:
        episodes[0].add(more)
    metrics = {
        "reward/mean": float(rewards.mean()),
        "reward/accuracy": float((rewards >= 0.5).float().mean()),
        "groups/sampled": float(total_groups),
        "groups/kept": float(sum(t.kept_groups for t in tallies)),
        "groups/zero_advantage_fraction": sum(t.zero_groups for t in tallies) / max(total_groups, 1),
        "response/length_mean": float(cat("response_lengths").float().mean()),
        "response/truncated_fraction": float(cat("truncated").float().mean()),
        "response/unscorable": float((~cat("scorable")).sum()),
        **merge_reward_metrics([entry for t in tallies for entry in t.round_metrics]),
        **(episodes[0].metrics() if episodes else {}),
    }
    kept = [t.kept_rewards for t in tallies if t.kept_rewards is not None]
    if kept:
        metrics["reward/kept_mean"] = float(torch.cat(kept).mean())
    return metrics


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
