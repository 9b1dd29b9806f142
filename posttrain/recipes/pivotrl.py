"""`posttrain pivotrl`: RL spent only on the pivotal turns of expert trajectories.

PivotRL (Yi et al. 2026, arXiv 2603.21383), top to bottom:
    expert trajectories (the environment's scripted expert, or a JSONL of chat records)
    → candidates: every expert model call, state = the history before it (pivot/candidates.py),
      or a seeded sample of `pivot.max_candidates` of them
    → profile each candidate with the frozen starting policy: K one-turn samples, each scored by
      the functional verifier against the expert's action, no environment step (pivot/profile.py)
    → pivots: reward variance > 0 and mean < λ
    → single-turn GRPO-family updates on the pivots only (preset `pivotrl`: leave-one-out
      baseline, clip 0.2, no KL), the loss on the action tokens
    → when the pivots' reward saturates, re-profile every candidate with the current policy and
      pick new pivots (as the Nemotron 3 reports describe doing).
Held-out evaluation plays whole episodes in the environment (task success), as end-to-end RL's
does, so the two are compared on the same measure; the rollout turns spent are counted in the
same way (one per sampled model turn, profiling included).

Profiles are saved under the run directory with what they were measured on and reused by a
resumed run or by a later run pointed at them (`pivot.profile_dir`). A resumed run also
restores which profile (initial or a re-profile) was in use.

Data parallel (`distributed.world_size: N`, or torchrun), as `posttrain rl` runs: every rank
runs the training steps on its share of each step's pivots (whole groups, `collect_rollouts`
with the ranks), with the step's global loss normalisers and summed gradients. Rank 0 alone
profiles (and writes the saved profile) and broadcasts the result — the pivot ids, the profile's
metrics and cost — so every rank trains on the same pivots. The re-profiling decision reads the
step's reward/mean, the same figure on every rank (the rollout metrics are gathered), so the
ranks re-profile at the same step. A resumed run restores the pivot state from rank 0's
checkpoint on every rank.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Union

from posttrain.agents.episodes import TemplateEncoder
from posttrain.algorithms.aggregation import loss_counts
from posttrain.compute import ComputeLedger, matmul_params
from posttrain.config import require
from posttrain.data.readers import read_records
from posttrain.envs.registry import environment_spec
from posttrain.pivot.candidates import extract_candidates
from posttrain.pivot.profiler import CandidateProfiler, ProfileSettings
from posttrain.pivot.reward import candidate_row
from posttrain.recipes.prompt_data import PromptSet, load_prompt_sets
from posttrain.recipes.rl.config import AlgorithmConfig, RLConfig
from posttrain.recipes.rl.evaluation import evaluate_prompts, rl_eval_reward_runner
from posttrain.recipes.rl.grpo import load_policy, loss_mask, train_on_batch
from posttrain.recipes.rl.multi_turn import episode_limits
from posttrain.recipes.rl.rewards import check_sandbox
from posttrain.recipes.rl.rollouts import collect_rollouts, single_turn_round
from posttrain.recipes.rl.samples import RolloutLog
from posttrain.rewards import resolve_reward
from posttrain.training.distributed import Ranks, launch, world_size
from posttrain.training.loop import TrainingLoop, set_seed, start_run, warn_to
from posttrain.training.optim import build_optimizer, build_scheduler
from posttrain.verifiers.combine import RewardRunner

__all__ = ["PivotConfig", "PivotRLConfig", "train"]


@dataclasses.dataclass
class PivotConfig:
    # Expert trajectories: "builtin" = the environment's scripted expert on its training tasks, or
    # a JSONL of chat records {"messages", "tools", <task columns>}.
    expert: str = "builtin"
    # K: one-turn samples per candidate when profiling.
    samples_per_candidate: int = 8
    # λ: a pivot's profiled mean reward must be below this (and its variance above min_variance).
    max_mean: float = 0.6
    min_variance: float = 0.0
    # Re-profile every candidate with the current policy once the pivots' mean training reward over
    # the last `reprofile_window` steps reaches this; null = keep the first profile.
    reprofile_at: Union[float, None] = 0.8
    reprofile_window: int = 5
    # The functional verifier (a reward over candidate rows); null = the environment's.
    reward: Union[str, None] = None
    # Where profiles are saved and looked up; null = <run dir>/profiles.
    profile_dir: Union[str, None] = None
    # Profile at most this many candidates, drawn uniformly (seeded) from every expert turn; null =
    # all. Profiling costs K turns per candidate, so a fixed budget spread over many trajectories
    # sees more distinct states than the same budget spent on every turn of a few.
    max_candidates: Union[int, None] = None


@dataclasses.dataclass
class PivotRLConfig(RLConfig):
    algorithm: AlgorithmConfig = dataclasses.field(default_factory=lambda: AlgorithmConfig(name="pivotrl"))
    pivot: PivotConfig = dataclasses.field(default_factory=PivotConfig)

    def validate(self) -> None:
        super().validate()
        require(bool(self.env.name), "pivotrl needs an environment (env.name): its expert, its verifier and "
                                     "its episodes for evaluation")
        p = self.pivot
        require(p.samples_per_candidate >= 2, f"pivot.samples_per_candidate must be >= 2, got {p.samples_per_candidate}")
        require(0 < p.max_mean <= 1, f"pivot.max_mean must lie in (0, 1], got {p.max_mean}")
        require(p.min_variance >= 0, f"pivot.min_variance must be >= 0, got {p.min_variance}")
        require(p.reprofile_at is None or 0 < p.reprofile_at <= 1,
                f"pivot.reprofile_at must lie in (0, 1] or be null, got {p.reprofile_at}")
        require(p.max_candidates is None or p.max_candidates >= 1,
                f"pivot.max_candidates must be >= 1 or null, got {p.max_candidates}")
        require(p.reprofile_window >= 1, f"pivot.reprofile_window must be >= 1, got {p.reprofile_window}")
        require(not self.needs_critic(), "pivotrl trains with a group baseline; a critic algorithm (ppo) does not apply")
        # Over several ranks, `check_world_size` (RLConfig.validate) asks for whole prompts per rank.
        require(world_size(self.distributed) == 1 or self.distributed.strategy == "ddp",
                "pivotrl on several ranks runs with distributed.strategy=ddp (rank 0 profiles alone, which "
                "sharded parameters would not allow)")


def train(cfg: PivotRLConfig) -> dict:
    """Run PivotRL as configured, on every rank the config asks for; returns the summary also
    written to `summary.json`."""
    cfg.check_world_size(world_size(cfg.distributed))  # also checked at load; a config built in code may skip that
    return launch(train_rank, cfg)


def train_rank(cfg: PivotRLConfig) -> dict:
    """PivotRL on this process's rank (the single process unless `launch` or torchrun started ranks)."""
    algo = cfg.algorithm.resolve()
    ranks = Ranks.current(cfg.distributed.strategy)
    run = start_run(cfg, {"resolved_algorithm": algo.as_dict()}, ranks=ranks)
    spec = environment_spec(cfg.env)
    verifier_name = cfg.pivot.reward or spec.action_reward
    warn = warn_to(run)
    check_sandbox(cfg.reward.sandbox.require, [verifier_name, cfg.eval.reward or ""])
    with run, RewardRunner({verifier_name: resolve_reward(verifier_name)}, on_error=cfg.reward.on_error,
                           timeout_s=cfg.reward.timeout_s, warn=warn) as verifier, \
            rl_eval_reward_runner(cfg, warn=warn) as task_success:
        set_seed(cfg.run.seed)
        run.print(f"algorithm {cfg.algorithm.name}: {algo.as_dict()}; verifier {verifier_name}")
        with ranks.main_first():  # rank 0 builds what is cached on disk (a tiny model, task files)
            model, tokenizer, reference, engine = load_policy(cfg, algo)
            train_tasks, eval_tasks = load_prompt_sets(cfg.data, tokenizer, seed=cfg.run.seed, console=run.console,
                                                       eval_rewards=task_success, source_rows=spec.rows)
            candidates = extract_candidates(expert_rows(cfg, spec, train_tasks.rows), source=cfg.pivot.expert)
        require(bool(candidates), f"pivot.expert {cfg.pivot.expert!r} gave no assistant turns to train on")
        candidates = subsample(candidates, cfg.pivot.max_candidates, cfg.run.seed)
        encoder = TemplateEncoder(tokenizer)
        rows = [candidate_row(c, cfg.env.parser) for c in candidates]
        states = PromptSet(rows, [encoder.prompt_ids(c.state, c.tools) for c in candidates])
        run.print(f"pivotrl: {len(candidates)} candidates from {len(train_tasks)} expert trajectories")

        trainer = ranks.wrap(model)  # the update's forward passes: DDP over several ranks, else the model
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps * cfg.updates_per_batch)
        ledger = ComputeLedger()
        n_params = matmul_params(model)
        generate_and_score = single_turn_round(engine, verifier, ledger, n_params)
        samples = RolloutLog(run, cfg.rollout.log_samples, cfg.run.log_every, cfg.steps)
        limits = episode_limits(cfg, getattr(model.config, "max_position_embeddings", None))
        profiler = CandidateProfiler(
            candidates, states.prompt_ids, rows, engine, verifier, verifier_name,
            ProfileSettings(cfg.pivot.samples_per_candidate, cfg.pivot.max_mean, cfg.pivot.min_variance,
                            cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k),
            Path(cfg.pivot.profile_dir) if cfg.pivot.profile_dir else run.dir / "profiles", ledger, n_params,
            seed=cfg.run.seed)
        # Which profile is in use, its pivots, what profiling cost, the recent pivot rewards: all
        # restored on resume, so a resumed run trains on the pivots it had (no re-profiling).
        state = {"profile": 0, "pivot_ids": None, "profiles_used": 0, "profile_turns": 0, "profile_tokens": 0,
                 "recent": []}

        def profile() -> tuple[PromptSet, dict]:
            """Profile every candidate with the current weights (or reuse a saved profile): the pivots.
            Data parallel: rank 0 profiles (and saves the profile), every rank gets its result."""
            result = None
            with ranks.full_weights(model):
                if ranks.is_main:
                    result = profiler.profile(state["profile"], model)
            result = ranks.broadcast(result)  # every rank calls it at the same step (see pivot_step)
            state.update(pivot_ids=result.pivot_ids, profiles_used=state["profiles_used"] + 1,
                         profile_turns=state["profile_turns"] + result.sampled_turns,
                         profile_tokens=state["profile_tokens"] + result.generated_tokens)
            m = result.metrics
            run.print(f"pivotrl: profile {state['profile']} ({'reused' if m['pivots/profile_reused'] else 'measured'}): "
                      f"{len(result.pivot_ids)} pivots of {len(candidates)} candidates, candidate mean reward "
                      f"{m['pivots/candidate_mean_reward']:.3f}")
            return pivot_set(result.pivot_ids), m

        def pivot_set(ids: list[str]) -> PromptSet:
            chosen = set(ids)
            keep = [i for i, c in enumerate(candidates) if c.id in chosen]
            return PromptSet([states.rows[i] for i in keep], [states.prompt_ids[i] for i in keep])

        def evaluate() -> dict:
            return evaluate_prompts(engine, eval_tasks, task_success, cfg, ledger, n_params,
                                    episodes=(spec.make, tokenizer, limits))

        pivots, profile_logged = None, {}

        def pivot_step(step: int) -> dict:
            nonlocal pivots, profile_logged
            if pivots is None and state["pivot_ids"] is not None:  # resumed: the pivots it had
                pivots = pivot_set(state["pivot_ids"])
            if pivots is None:
                pivots, profile_logged = profile()
            metrics = dict(profile_logged)
            profile_logged = {}
            if not len(pivots):  # nothing informative left: the policy solves or fails every candidate
                metrics.update({"train/update_skipped": 1.0, "pivots/rollout_turns": 0.0, "pivots/generated_tokens": 0.0})
                return metrics
            with ranks.full_weights(model):
                batch, rollout_metrics = collect_rollouts(generate_and_score, pivots, cfg, algo, step,
                                                          tokenizer.pad_token_id, samples, ranks=ranks)
            metrics.update(rollout_metrics)
            counts = loss_counts(loss_mask(batch), ranks.sum)  # the whole step's, over every rank
            if counts.rows:  # every rank updates, one whose share is empty too (see train_on_batch)
                metrics.update(train_on_batch(model, reference, engine, optimizer, scheduler, batch, cfg, algo, run,
                                              step, ledger, n_params, counts=counts, ranks=ranks, trainer=trainer))
                engine.load_weights(model)
            metrics["train/update_skipped"] = float(counts.rows == 0)
            # Rollout turns: one per sampled turn (training), plus every profiling sample so far. The
            # rollout metrics are the step's over every rank, so each rank takes the same decision below.
            sampled = rollout_metrics["groups/sampled"] * cfg.rollout.samples_per_prompt
            metrics["pivots/rollout_turns"] = float(sampled)
            metrics["pivots/generated_tokens"] = float(sampled * rollout_metrics["response/length_mean"])
            metrics["pivots/profile_turns_total"] = float(state["profile_turns"])
            recent = state["recent"] = (state["recent"] + [rollout_metrics["reward/mean"]])[-cfg.pivot.reprofile_window:]
            saturated = (cfg.pivot.reprofile_at is not None and len(recent) == cfg.pivot.reprofile_window
                         and sum(recent) / len(recent) >= cfg.pivot.reprofile_at)
            if saturated:
                state["profile"] += 1
                state["recent"], state["pivot_ids"] = [], None
                pivots = None  # the next step re-profiles with the weights it starts from
            return metrics

        loop = TrainingLoop(run, cfg.run, cfg.steps, model=model, optimizer=optimizer, scheduler=scheduler,
                            ledger=ledger, tokenizer=tokenizer, evaluate=evaluate,
                            extra_state=lambda: {"pivot": dict(state)}, ranks=ranks)
        loop.resume(on_state=lambda saved: state.update(saved.get("pivot", {})))  # rank 0's checkpoint, on every rank
        engine.load_weights(model)
        loop.train(pivot_step, description="pivotrl", postfix=lambda m: {"reward": f"{m.get('reward/mean', 0):.3f}"})
        engine.close()
        return loop.finish(
            {"recipe": "pivotrl", "algorithm": cfg.algorithm.name, "rl_steps": cfg.steps,
             "candidates": len(candidates), "profiles": state["profiles_used"],
             "profile_rollout_turns": state["profile_turns"], "profile_generated_tokens": state["profile_tokens"]},
            model=model, reward_runners=(verifier, task_success), plot_name="pivotrl_curves.png",
            title=f"PivotRL: {cfg.run.name}",
            plot_keys=["reward/mean", "pivots/kept", "eval/accuracy_greedy", "eval/accuracy_sampled",
                       "entropy/mean", "response/length_mean"])


def subsample(candidates: list, limit: Union[int, None], seed: int) -> list:
    """At most `limit` candidates, a seeded uniform draw kept in their original order."""
    if limit is None or len(candidates) <= limit:
        return candidates
    chosen = set(random.Random(seed).sample(range(len(candidates)), limit))
    return [c for i, c in enumerate(candidates) if i in chosen]


def expert_rows(cfg: PivotRLConfig, spec, task_rows: list[dict]) -> list[dict]:
    """The expert trajectories: the environment's scripted expert on the training tasks, or a file."""
    if cfg.pivot.expert == "builtin":
        require(spec.expert_rows is not None,
                f"environment {cfg.env.name!r} has no scripted expert; set pivot.expert to a JSONL of chat records")
        return spec.expert_rows(task_rows)
    return [record.data for record in read_records(cfg.pivot.expert)]  # a bad line raises DataError naming it
