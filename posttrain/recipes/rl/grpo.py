"""RL with verifiable rewards: GRPO and its corrected variants in one loop you can read top to bottom.

Each step:
    collect rollouts (sample prompts → generate-and-score G samples each → [DAPO: drop groups
    whose rewards are all equal, generate more to refill]) → old / reference log-probs (once per
    batch) → advantages by group id (registry) → `updates_per_batch` × (micro-batches → policy
    loss (+ β·KL) → backward) → clip → step → the engine gets the new weights → log, evaluate,
    checkpoint (`training.loop.TrainingLoop`).
What differs between GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++ and GSPO is only which advantage
estimator, policy loss, aggregation and KL placement the preset names (algorithms/presets.py).
Algorithms that need a critic run `ppo.py` instead (`recipes.rl.train` dispatches).

Old log-probs: when the engine samples from the trained module itself (`engine.shares_weights`),
the trainer's own log-probs are the old ones — recomputed once when a batch gets several
updates, the detached current ones when it gets one. A separate engine (another process, vLLM)
computes them with other kernels, so its sampler log-probs are the old log-probs and the
sampler–trainer gap is its health check. The gap is logged every step either way. With
`rollout.importance_correction` on, a separate engine's batch gets the trainer's own old
log-probs too and the sampler's enter only the capped importance weights on the loss
(truncated or masked importance sampling, `algorithms/mismatch.py`).

Data parallel (`distributed.world_size: N`, or torchrun): every rank runs this loop on its share
of each step's prompts (whole groups), the loss normalisers are the step's global counts, and
DDP (or FSDP2, `distributed.strategy: fsdp`) sums the gradients, so the update is the
single-process update over the union batch;
rank 0 alone writes the run directory and evaluates. `training/distributed.py` has the design.

Differences from the papers: a reward of None (not scorable) is masked out of the loss and
replaced by its group's mean so it moves no baseline.
"""

from __future__ import annotations

import torch

from posttrain.algorithms.aggregation import LossCounts, aggregate, loss_counts
from posttrain.algorithms.kl import kl_estimate
from posttrain.algorithms.masked import masked_mean
from posttrain.algorithms.mismatch import importance_weights
from posttrain.algorithms.registry import AdvantageInputs, get_advantage_estimator, get_policy_loss
from posttrain.compute import ComputeLedger, matmul_params
from posttrain.config import ConfigError
from posttrain.engines.factory import build_engine
from posttrain.models.build import load_model_and_tokenizer
from posttrain.models.passes import batch_logprobs, forward_logprobs
from posttrain.envs.registry import environment_spec
from posttrain.models.reference import reference_model
from posttrain.recipes.prompt_data import load_prompt_sets
from posttrain.recipes.rl.batch import RolloutBatch
from posttrain.recipes.rl.config import RLConfig
from posttrain.recipes.rl.rewards import reward_runners, turn_reward_runner
from posttrain.recipes.rl.multi_turn import episode_limits, rollout_round
from posttrain.recipes.rl.rollouts import collect_rollouts
from posttrain.recipes.rl.samples import RolloutLog
from posttrain.recipes.rl.evaluation import evaluate_prompts
from posttrain.run import Run
from posttrain.training.distributed import Ranks
from posttrain.training.loop import TrainingLoop, set_seed, start_run
from posttrain.training.modes import train_mode
from posttrain.training.optim import build_optimizer, build_scheduler, optimizer_step
from posttrain.training.precision import recipe_precision


def train(cfg: RLConfig) -> dict:
    """Run RL as configured; returns the summary also written to `summary.json`."""
    algo = cfg.algorithm.resolve()
    ranks = Ranks.current(cfg.distributed.strategy)  # one process unless started by `distributed.launch` or torchrun
    run = start_run(cfg, {"resolved_algorithm": algo.as_dict()}, ranks=ranks)
    with run, reward_runners(cfg, run) as (rewards, score_eval), turn_reward_runner(cfg, run) as turn_rewards:
        set_seed(cfg.run.seed)
        run.print(f"algorithm {cfg.algorithm.name}: {algo.as_dict()}")
        with ranks.main_first():  # rank 0 builds what is cached on disk (a tiny model, task files)
            model, tokenizer, reference, engine = load_policy(cfg, algo)
            spec = environment_spec(cfg.env) if cfg.env.name else None  # multi-turn episodes
            train_prompts, eval_prompts = load_prompt_sets(cfg.data, tokenizer, seed=cfg.run.seed,
                                                           console=run.console, rewards=rewards,
                                                           eval_rewards=score_eval,
                                                           source_rows=spec.rows if spec else None)

        if ranks.sharded and not engine.shares_weights(model):  # it would be sent DTensor shards
            raise ConfigError("distributed.strategy=fsdp samples from the trained module: use the in-process "
                              f"engine (rollout.engine=hf or one sharing the weights), not {cfg.rollout.engine!r}")
        trainer = ranks.wrap(model)  # the update's forward passes: DDP over several ranks, FSDP2 (in place), else the model
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps * cfg.updates_per_batch)
        ledger = ComputeLedger()
        n_params = matmul_params(model)
        make_env = spec.make if spec else None
        limits = episode_limits(cfg, getattr(model.config, "max_position_embeddings", None))
        generate_and_score = rollout_round(engine, tokenizer, rewards, ledger, n_params, make_env, limits,
                                           turn_rewards, cfg.reward.turn_coef)
        episodes = (make_env, tokenizer, limits) if make_env else None
        samples = RolloutLog(run, cfg.rollout.log_samples, cfg.run.log_every, cfg.steps)

        def evaluate() -> dict:
            return evaluate_prompts(engine, eval_prompts, score_eval, cfg, ledger, n_params, episodes=episodes)

        def rl_step(step: int) -> dict:
            with ranks.full_weights(model):  # FSDP: the ranks generate different lengths, gathering nothing
                batch, metrics = collect_rollouts(generate_and_score, train_prompts, cfg, algo, step,
                                                  tokenizer.pad_token_id, samples, ranks=ranks)
            counts = loss_counts(loss_mask(batch), ranks.sum)  # the whole step's, over every rank
            if counts.rows:  # every rank updates, one whose share is empty too (see train_on_batch)
                metrics.update(train_on_batch(model, reference, engine, optimizer, scheduler, batch, cfg, algo, run,
                                              step, ledger, n_params, counts=counts, ranks=ranks, trainer=trainer))
                engine.load_weights(model)
            metrics["train/update_skipped"] = float(counts.rows == 0)
            return metrics

        loop = TrainingLoop(run, cfg.run, cfg.steps, model=model, optimizer=optimizer, scheduler=scheduler,
                            ledger=ledger, tokenizer=tokenizer, evaluate=evaluate, ranks=ranks)
        loop.resume()
        engine.load_weights(model)  # a resumed run samples from the restored weights
        loop.train(rl_step, description=f"rl ({cfg.algorithm.name})",
                   postfix=lambda m: {"reward": f"{m['reward/mean']:.3f}"})
        engine.close()
        return loop.finish(
            {"recipe": "rl", "algorithm": cfg.algorithm.name, "rl_steps": cfg.steps,
             },
            model=model, reward_runners=(rewards, score_eval, turn_rewards), plot_name="rl_curves.png", title=f"RL ({cfg.algorithm.name}): {cfg.run.name}",
            plot_keys=["reward/mean", "eval/accuracy_sampled", "eval/accuracy_greedy", "kl/mean", "entropy/mean",
                       "response/length_mean"])


def load_policy(cfg: RLConfig, algo):
    """The trained policy (train mode, dropout off), its tokenizer, the frozen reference when the
    algorithm has a KL term, and the rollout engine (sampling in the run's precision): what every
    critic-free loop starts from."""
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    train_mode(model, dropout=False)
    reference = reference_model(model) if algo.kl_coef > 0 else None
    return model, tokenizer, reference, build_engine(cfg.rollout.engine, model, tokenizer,
                                                     precision=recipe_precision(cfg), workers=cfg.rollout.workers,
                                                     timeout_s=cfg.rollout.worker_timeout_s,
                                                     options=cfg.rollout.engine_options)


def old_logprobs(model, engine, batch: RolloutBatch, cfg: RLConfig) -> tuple[torch.Tensor | None, bool]:
    """The log-probs the importance ratio divides by, or None: "the current ones, detached"
    (one update per batch from an engine sharing the trainer's weights — see the module docstring);
    and whether a forward pass computed them (for the compute ledger). With
    `rollout.importance_correction` on, a separate engine's batch gets the trainer's own too: the
    sampler's log-probs then enter only the correction weights (`train_on_batch`)."""
    if not engine.shares_weights(model):
        if cfg.rollout.importance_correction != "none":
            return batch_logprobs(model, batch, cfg.rollout.temperature, cfg.micro_batch_size), True
        return batch.sampler_logprobs, False
    if cfg.updates_per_batch > 1:
        return batch_logprobs(model, batch, cfg.rollout.temperature, cfg.micro_batch_size), True
    return None, False


def loss_mask(batch: RolloutBatch) -> torch.Tensor:
    """(B, L-1): the model tokens of the scorable sequences, what the loss, KL and counts cover."""
    if not batch.size:
        return torch.zeros(0, 0)
    return batch.mask * batch.scorable.unsqueeze(1)


def logprobs_and_advantages(model, reference, engine, batch: RolloutBatch, mask: torch.Tensor, cfg: RLConfig, algo,
                            ledger: ComputeLedger, n_params: int):
    """What a batch's updates need, computed once: the old log-probs (None: the detached current
    ones), the reference log-probs (None without a KL term) and the advantages (B, L-1)."""
    tokens = int(batch.attention_mask.sum())
    with ledger.timed("reference"), recipe_precision(cfg).autocast():
        old_logp, computed = old_logprobs(model, engine, batch, cfg)
        if computed:
            ledger.record("reference", tokens=tokens, params=n_params)
        ref_logp = None
        if reference is not None:
            ref_logp = batch_logprobs(reference, batch, cfg.rollout.temperature, cfg.micro_batch_size)
            ledger.record("reference", tokens=tokens, params=n_params)
    kl_in_reward = None
    if ref_logp is not None and algo.kl_placement == "reward":
        sampling_logp = old_logp if old_logp is not None else batch.sampler_logprobs
        kl_in_reward = kl_estimate(sampling_logp, ref_logp, algo.kl_estimator) * mask
    advantages = get_advantage_estimator(algo.advantage)(AdvantageInputs(
        rewards=batch.rewards, mask=mask, group_ids=batch.group_ids, kl=kl_in_reward,
        kl_coef=algo.kl_coef, gamma=algo.gamma, lam=algo.lam)).advantages
    return old_logp, ref_logp, advantages


def train_on_batch(model, reference, engine, optimizer, scheduler, batch: RolloutBatch, cfg: RLConfig, algo,
                   run: Run, step: int, ledger: ComputeLedger, n_params: int, *, counts: LossCounts | None = None,
                   ranks: Ranks = Ranks(), trainer=None) -> dict:
    """Old/reference log-probs once, advantages, then `updates_per_batch` optimizer steps.

    `counts`: what the losses divide by (default: this batch's own counts). Data parallel:
    the step's counts over every rank, `trainer` the DDP-wrapped `model`, and this rank's `batch`
    may be empty: it then joins each update's gradient all-reduce with a zero-weight backward.
    The metrics are the step's on every rank (the update's sums are all-reduced).

    Sampler–trainer mismatch (`rollout.importance_correction`, an engine that does not share the
    weights): the old log-probs are the trainer's (`old_logprobs`), and each token's policy loss is
    multiplied by the detached weight f(π_old / π_sampler) of `algorithms/mismatch.py` before
    aggregation (the KL term is not weighted); the weights' token mean and the fraction over the
    cap are logged as train/is_weight_mean and train/is_truncated_fraction.

    Forward passes run under the run's precision (`precision.autocast()`); the log-probs they
    return, and so the ratio, KL, advantages and loss, are float32 either way."""
    T = cfg.rollout.temperature
    precision = recipe_precision(cfg)
    trainer = model if trainer is None else trainer
    mask = loss_mask(batch)
    counts = counts if counts is not None else loss_counts(mask)
    tokens = int(batch.attention_mask.sum())
    old_logp = ref_logp = advantages = None
    with ranks.full_weights(model):  # FSDP: ranks with different batch sizes run different numbers of passes
        if batch.size:  # an empty share (data parallel) only joins the update's collectives
            old_logp, ref_logp, advantages = logprobs_and_advantages(model, reference, engine, batch, mask, cfg,
                                                                     algo, ledger, n_params)
    policy_loss = get_policy_loss(algo.policy_loss)
    normaliser = float(cfg.rollout.max_new_tokens) if algo.loss_normaliser == "max_new_tokens" else algo.loss_normaliser
    global_tokens, global_sequences = counts.tokens, counts.sequences
    r = cfg.rollout
    # Decided by config and engine alone, so that every rank (an empty share too) sums the same keys.
    correct = r.importance_correction != "none" and not engine.shares_weights(model)
    metrics: dict = {}
    gap = 0.0
    starts = range(0, batch.size, cfg.micro_batch_size)
    joins = ranks.joins(len(starts))  # zero-weight micro-batches after this rank's own (data parallel)
    for update in range(cfg.updates_per_batch):
        with ledger.timed("update"):
            sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip": 0.0, "ratio": 0.0}
            if correct:
                sums.update(is_weight=0.0, is_truncated=0.0)
            for start in starts:
                rows = slice(start, start + cfg.micro_batch_size)
                # Data parallel: the update's last micro-batch all-reduces the accumulated gradients.
                with ranks.gradient_sync(trainer, sync=start == starts[-1] and not joins):
                    with precision.autocast():  # the forward only; backward runs outside the region
                        logp, entropy = forward_logprobs(trainer, batch, rows, T, with_entropy=True)
                    m = mask[rows].to(logp.device)
                    share = float(m.sum()) / max(global_tokens, 1.0)  # this micro-batch's share of the tokens
                    if update == 0:  # the trainer's log-probs of the weights that sampled: the health check
                        sampler = batch.sampler_logprobs[rows].to(logp.device)
                        gap += float(masked_mean((sampler - logp.detach()).abs(), m > 0)) * share
                    old = old_logp[rows].to(logp.device) if old_logp is not None else logp.detach()
                    out = policy_loss(logp, old, advantages[rows].to(logp.device), m, eps_low=algo.eps_low,
                                      eps_high=algo.eps_high, dual_clip=algo.dual_clip)
                    per_token = out.loss
                    if correct:  # the old log-probs are the trainer's: weigh by π_old / π_sampler, capped
                        tis = importance_weights(old, batch.sampler_logprobs[rows].to(logp.device), m,
                                                 level=r.importance_correction, cap=r.importance_cap,
                                                 mode=r.importance_mode)
                        per_token = per_token * tis.weights
                        sums["is_weight"] += float(tis.mean) * share
                        sums["is_truncated"] += float(tis.truncated_fraction) * share
                    loss = aggregate(per_token, m, algo.aggregation, global_tokens=global_tokens,
                                     global_sequences=global_sequences, constant_normaliser=normaliser)
                    if ref_logp is not None:
                        kl = kl_estimate(logp, ref_logp[rows].to(logp.device), algo.kl_estimator)
                        if algo.kl_placement == "loss":
                            loss = loss + algo.kl_coef * aggregate(kl, m, algo.aggregation,
                                                                   global_tokens=global_tokens,
                                                                   global_sequences=global_sequences,
                                                                   constant_normaliser=normaliser)
                        sums["kl"] += float(masked_mean(kl.detach(), m > 0)) * share
                    loss.backward()
                sums["loss"] += loss.item()
                sums["entropy"] += float(masked_mean(entropy, m > 0)) * share
                sums["clip"] += float(out.clip_frac) * share
                sums["ratio"] += float(masked_mean(out.ratio.detach(), m > 0)) * share
            for join in range(joins):  # zero gradients into the others' reductions (an empty share; FSDP: fewer)
                with ranks.gradient_sync(trainer, sync=join == joins - 1):
                    ranks.join_backward(trainer)
            ledger.record("update", tokens=tokens, params=n_params, backward=True)
            if ranks.distributed:  # each rank's sums are its shares of the step's: their sum is the step's
                sums = dict(zip(sums, ranks.sum(list(sums.values()))))
            stepped = optimizer_step(model, optimizer, scheduler, max_grad_norm=cfg.optim.max_grad_norm,
                                     loss=sums["loss"], check_finite=lambda m: run.check_finite(step + 1, m))
        metrics = {"train/loss": sums["loss"], **stepped,
                   "entropy/mean": sums["entropy"], "train/clip_fraction": sums["clip"],
                   "train/ratio_mean": sums["ratio"]}
        if reference is not None:  # no reference, no KL: a logged 0 would read as "the policy never moved"
            metrics["kl/mean"] = sums["kl"]
        if correct:
            metrics["train/is_weight_mean"] = sums["is_weight"]
            metrics["train/is_truncated_fraction"] = sums["is_truncated"]
    # The mean |sampler − trainer| log-prob over the step's model tokens (every rank's share of it).
    metrics["train/sampler_logprob_gap"] = ranks.sum([gap])[0]
    return metrics
