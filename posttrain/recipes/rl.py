"""RL with verifiable rewards: GRPO and its corrected variants in one loop you can read top to bottom.

Each step:
    sample prompts → engine.generate (G samples each) → score with the reward functions →
    [DAPO: drop groups whose rewards are all equal, generate more to refill] →
    old / reference log-probs (once per batch) → advantages (registry) →
    `updates_per_batch` × (micro-batches → policy loss (+ β·KL) → backward) → clip → step →
    sync weights into the engine → log, evaluate, checkpoint.
What differs between GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++ and GSPO is only which advantage
estimator, policy loss, aggregation and KL placement the preset names (algorithms/presets.py).
PPO needs a critic as well, so `train` hands it to `recipes/ppo.py`, which reuses this file's
rollout collection.
Differences from the papers: a reward of None (not scorable) is masked out of the loss and
replaced by its group's mean so it moves no baseline; everything runs in one process.
"""

from __future__ import annotations

import copy
import time

import torch

from posttrain.algorithms.kl import kl_estimate
from posttrain.algorithms.policy_loss import overlong_penalty
from posttrain.algorithms.registry import AdvantageInputs, get_advantage_estimator, get_policy_loss
from posttrain.algorithms.advantages import group_stats, keep_mask_for_informative_groups
from posttrain.algorithms.aggregation import aggregate
from posttrain.algorithms.masked import masked_mean
from posttrain.compute import ComputeLedger, matmul_params
from posttrain.config import to_dict
from posttrain.engines.base import SamplingParams
from posttrain.engines.hf import HFEngine
from posttrain.models.loading import save_model
from posttrain.plots import plot_metrics
from posttrain.recipes.common import (
    build_optimizer, build_scheduler, checkpoint_if_due, load_model_and_tokenizer, resume_if_asked, set_seed,
)
from posttrain.recipes.prompt_data import PromptSet, load_prompt_sets
from posttrain.recipes.rl_config import RLConfig
from posttrain.recipes.rl_eval import evaluate_prompts
from posttrain.recipes.rollouts import RolloutBatch, batch_logprobs, build_batch, forward_logprobs
from posttrain.recipes.sft import apply_update, clip_gradients, step_indices
from posttrain.rewards import resolve_reward
from posttrain.run import Run
from posttrain.verifiers.combine import RewardRunner


def train(cfg: RLConfig) -> dict:
    """Run RL as configured; returns the summary also written to `summary.json`."""
    if cfg.needs_critic():
        from posttrain.recipes.ppo import train as train_ppo  # imported here: ppo.py imports this module

        return train_ppo(cfg)
    started = time.time()
    algo = cfg.algorithm.resolve()
    run = Run.start(cfg.run.output_dir, cfg.run.name, {**to_dict(cfg), "resolved_algorithm": algo.as_dict()},
                    resume=cfg.run.resume, overwrite=cfg.run.overwrite, report_to=cfg.run.report_to,
                    wandb_project=cfg.run.wandb_project)
    with run, reward_runner(cfg) as rewards:
        set_seed(cfg.run.seed)
        run.print(f"algorithm {cfg.algorithm.name}: {algo.as_dict()}")
        model, tokenizer = load_model_and_tokenizer(cfg.model)
        model.eval()  # dropout off for sampling and training alike; gradients still flow
        reference = reference_model(model) if algo.kl_coef > 0 else None
        engine = HFEngine(model, tokenizer)
        train_prompts, eval_prompts = load_prompt_sets(cfg.data, tokenizer, seed=cfg.run.seed, console=run.console)
        eval_reward = resolve_reward(cfg.eval.reward or cfg.reward.functions[0])

        optimizer = build_optimizer(model, cfg.optim)
        total_updates = cfg.steps * cfg.updates_per_batch
        scheduler = build_scheduler(optimizer, cfg.optim, total_updates)
        ledger = ComputeLedger()
        n_params = matmul_params(model)
        start_step, first_eval = resume_if_asked(run, model=model, optimizer=optimizer, scheduler=scheduler,
                                                 ledger=ledger)
        engine.load_weights(model)

        def evaluate(step: int) -> dict:
            with ledger.timed("eval"):
                metrics = evaluate_prompts(engine, eval_prompts, eval_reward, cfg, ledger, n_params)
            run.log(step, metrics)
            return metrics

        if start_step == 0:
            first_eval = evaluate(0)
        with run.progress(cfg.steps, initial=start_step, description=f"rl ({cfg.algorithm.name})") as bar:
            for step in range(start_step, cfg.steps):
                batch, rollout_metrics = collect_rollouts(engine, rewards, train_prompts, cfg, algo, step,
                                                          tokenizer.pad_token_id, ledger, n_params)
                metrics = {**rollout_metrics}
                if batch.size:
                    metrics.update(train_on_batch(model, reference, optimizer, scheduler, batch, cfg, algo, run,
                                                  step, ledger, n_params))
                engine.load_weights(model)
                metrics.update(ledger.metrics())
                if (step + 1) % cfg.run.log_every == 0 or step + 1 == cfg.steps:
                    run.log(step + 1, metrics)
                bar.advance(reward=f"{metrics['reward/mean']:.3f}")
                if cfg.run.eval_every and (step + 1) % cfg.run.eval_every == 0 and step + 1 < cfg.steps:
                    evaluate(step + 1)
                checkpoint_if_due(run, cfg.run, step + 1, cfg.steps, model=model, optimizer=optimizer,
                                  scheduler=scheduler, tokenizer=tokenizer, ledger=ledger, first_eval=first_eval)

        final_eval = evaluate(cfg.steps)
        engine.close()
        model_dir = save_model(model, tokenizer, run.model_dir)
        plot = plot_metrics(run.metrics_path, ["reward/mean", "eval/accuracy_sampled", "eval/accuracy_greedy",
                                               "kl/mean", "entropy/mean", "response/length_mean"],
                            run.dir / "rl_curves.png", title=f"RL ({cfg.algorithm.name}): {cfg.run.name}")
        summary = {
            "recipe": "rl", "algorithm": cfg.algorithm.name, "rl_steps": cfg.steps,
            "model_dir": str(model_dir), "plot": str(plot), "seconds": round(time.time() - started, 2),
            **{f"before/{k}": v for k, v in first_eval.items()},
            **{f"after/{k}": v for k, v in final_eval.items()},
            **ledger.metrics(),
        }
        run.write_summary(summary)
        run.console.print(ledger.table())
        return summary


def collect_rollouts(engine, rewards: RewardRunner, prompts: PromptSet, cfg: RLConfig, algo, step: int,
                     pad_id: int, ledger: ComputeLedger, n_params: int) -> tuple[RolloutBatch, dict]:
    """Generate and score G samples for the step's prompts; with dynamic sampling keep only
    informative groups (rewards not all equal) and refill from further prompts."""
    r = cfg.rollout
    G = r.samples_per_prompt
    wanted = r.prompts_per_step
    kept: list[RolloutBatch] = []
    kept_groups, zero_groups, total_groups = 0, 0, 0
    reward_metrics: dict = {}
    rounds = 1 + (r.max_refill_rounds if algo.dynamic_sampling else 0)
    for round_index in range(rounds):
        # Round k draws the prompts of a later, unused slice of the epoch permutation.
        indices = step_indices(step * rounds + round_index, per_step=wanted, num_examples=len(prompts),
                               seed=cfg.run.seed + 17)
        rows = [prompts.rows[i] for i in indices]
        prompt_ids = [prompts.prompt_ids[i] for i in indices]
        sampling = SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                  top_k=r.top_k, n=G, seed=cfg.run.seed * 100_003 + step * 101 + round_index)
        with ledger.timed("rollout"):
            groups = engine.generate(prompt_ids, sampling)
        completions = [c for group in groups for c in group]
        flat_rows = [row for row in rows for _ in range(G)]
        flat_prompt_ids = [ids for ids in prompt_ids for _ in range(G)]
        ledger.record("rollout", tokens=sum(len(c.token_ids) for c in completions), params=n_params)
        with ledger.timed("scoring"):
            report = rewards([row["prompt"] for row in flat_rows], [c.text for c in completions], flat_rows)
        reward_metrics = report.metrics()
        batch = build_batch(flat_prompt_ids, completions, report.total, pad_id)
        if algo.overlong_cache_fraction:
            cache = max(1, int(algo.overlong_cache_fraction * r.max_new_tokens))
            batch.rewards = batch.rewards + overlong_penalty(batch.response_lengths, r.max_new_tokens, cache)
        if cfg.reward.missing_eos_penalty:
            batch.rewards = batch.rewards - cfg.reward.missing_eos_penalty * batch.truncated.float()
        batch = _fill_unscorable(batch, G)
        total_groups += len(indices)
        zero_groups += group_stats(batch.rewards, G).num_uniform if G > 1 else 0  # PPO may sample once per prompt
        if not algo.dynamic_sampling:
            kept.append(batch)
            kept_groups = len(indices)
            break
        keep = keep_mask_for_informative_groups(batch.rewards, G)
        need = (wanted - kept_groups) * G
        index = torch.nonzero(keep).squeeze(1)[:need]
        if index.numel():
            kept.append(batch.select(index))
            kept_groups += index.numel() // G
        if kept_groups >= wanted:
            break
    batch = _concat(kept) if kept else None
    all_rewards = batch.rewards if batch is not None else torch.zeros(0)
    metrics = {
        "reward/mean": float(all_rewards.mean()) if all_rewards.numel() else float("nan"),
        "reward/accuracy": float((all_rewards >= 0.5).float().mean()) if all_rewards.numel() else float("nan"),
        "groups/zero_advantage_fraction": zero_groups / max(total_groups, 1),
        "groups/kept": float(kept_groups),
        "response/length_mean": float(batch.response_lengths.float().mean()) if batch is not None else 0.0,
        "response/truncated_fraction": float(batch.truncated.float().mean()) if batch is not None else 0.0,
        "response/unscorable": float((~batch.scorable).sum()) if batch is not None else 0.0,
        **reward_metrics,
    }
    if batch is None:  # every group uniform after all refills: skip the update, keep going
        batch = RolloutBatch(*(torch.zeros(0) for _ in range(8)))
    return batch, metrics


def train_on_batch(model, reference, optimizer, scheduler, batch: RolloutBatch, cfg: RLConfig, algo, run: Run,
                   step: int, ledger: ComputeLedger, n_params: int) -> dict:
    """Old/reference log-probs once, advantages, then `updates_per_batch` optimizer steps."""
    T = cfg.rollout.temperature
    mask = batch.mask * batch.scorable.unsqueeze(1)
    tokens = int(batch.attention_mask.sum())
    with ledger.timed("reference"):
        old_logp = batch_logprobs(model, batch, T, cfg.micro_batch_size) if cfg.updates_per_batch > 1 else None
        if old_logp is not None:
            ledger.record("reference", tokens=tokens, params=n_params)
        ref_logp = None
        if reference is not None:
            ref_logp = batch_logprobs(reference, batch, T, cfg.micro_batch_size)
            ledger.record("reference", tokens=tokens, params=n_params)
    kl_in_reward = None
    if ref_logp is not None and algo.kl_placement == "reward":
        sampling_logp = old_logp if old_logp is not None else batch.sampler_logprobs
        kl_in_reward = kl_estimate(sampling_logp, ref_logp, algo.kl_estimator) * mask
    advantages = get_advantage_estimator(algo.advantage)(AdvantageInputs(
        rewards=batch.rewards, mask=mask, group_size=cfg.rollout.samples_per_prompt, kl=kl_in_reward,
        kl_coef=algo.kl_coef, gamma=algo.gamma, lam=algo.lam)).advantages
    policy_loss = get_policy_loss(algo.policy_loss)
    normaliser = float(cfg.rollout.max_new_tokens) if algo.loss_normaliser == "max_new_tokens" else algo.loss_normaliser
    global_tokens = float(mask.sum())
    global_sequences = float((mask.sum(1) > 0).sum())
    metrics: dict = {}
    for _ in range(cfg.updates_per_batch):
        with ledger.timed("update"):
            sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip": 0.0, "ratio": 0.0}
            for start in range(0, batch.size, cfg.micro_batch_size):
                rows = slice(start, start + cfg.micro_batch_size)
                logp, entropy = forward_logprobs(model, batch, rows, T, with_entropy=True)
                m = mask[rows].to(logp.device)
                old = (old_logp[rows].to(logp.device) if old_logp is not None else logp.detach())
                out = policy_loss(logp, old, advantages[rows].to(logp.device), m, eps_low=algo.eps_low,
                                  eps_high=algo.eps_high, dual_clip=algo.dual_clip)
                loss = aggregate(out.loss, m, algo.aggregation, global_tokens=global_tokens,
                                 global_sequences=global_sequences, constant_normaliser=normaliser)
                share = float(m.sum()) / max(global_tokens, 1.0)  # this micro-batch's share of the tokens
                if ref_logp is not None:
                    kl = kl_estimate(logp, ref_logp[rows].to(logp.device), algo.kl_estimator)
                    if algo.kl_placement == "loss":
                        loss = loss + algo.kl_coef * aggregate(kl, m, algo.aggregation, global_tokens=global_tokens,
                                                               global_sequences=global_sequences,
                                                               constant_normaliser=normaliser)
                    sums["kl"] += float(masked_mean(kl.detach(), m > 0)) * share
                loss.backward()
                sums["loss"] += loss.item()
                sums["entropy"] += float(masked_mean(entropy, m > 0)) * share
                sums["clip"] += float(out.clip_frac) * share
                sums["ratio"] += float(masked_mean(out.ratio.detach(), m > 0)) * share
            ledger.record("update", tokens=tokens, params=n_params, backward=True)
            grad_norm = clip_gradients(model, cfg.optim.max_grad_norm)
            run.check_finite(step + 1, {"train/loss": sums["loss"], "train/grad_norm": grad_norm})
            lr = apply_update(optimizer, scheduler)
        metrics = {"train/loss": sums["loss"], "train/grad_norm": grad_norm, "train/lr": lr,
                   "kl/mean": sums["kl"], "entropy/mean": sums["entropy"], "train/clip_fraction": sums["clip"],
                   "train/ratio_mean": sums["ratio"]}
    if old_logp is not None:  # trainer vs sampler log-probs, both at temperature T: a health check
        gap = (batch.sampler_logprobs - old_logp).abs()
        metrics["train/sampler_logprob_gap"] = float(masked_mean(gap, mask > 0))
    return metrics


def _fill_unscorable(batch: RolloutBatch, group_size: int) -> RolloutBatch:
    """Give a None reward its group's mean (so it shifts no baseline); its tokens are masked out."""
    if bool(batch.scorable.all()):
        return batch
    rewards = batch.rewards.view(-1, group_size).clone()
    ok = batch.scorable.view(-1, group_size)
    means = (rewards * ok).sum(1) / ok.sum(1).clamp(min=1)
    rewards = torch.where(ok, rewards, means.unsqueeze(1))
    batch.rewards = rewards.view(-1)
    return batch


def _concat(parts: list[RolloutBatch]) -> RolloutBatch:
    if len(parts) == 1:
        return parts[0]
    width = max(p.input_ids.shape[1] for p in parts)
    fields = {}
    for name in RolloutBatch.__dataclass_fields__:
        tensors = []
        for p in parts:
            t = getattr(p, name)
            if t.dim() == 2:
                pad = width - p.input_ids.shape[1]
                t = torch.nn.functional.pad(t, (0, pad))  # pad id irrelevant: attention and mask are 0 there
            tensors.append(t)
        fields[name] = torch.cat(tensors)
    return RolloutBatch(**fields)


def reference_model(model):
    """A frozen copy of the starting policy (for LoRA: the base model, adapters disabled — no copy)."""
    if hasattr(model, "disable_adapter"):
        return _AdapterDisabled(model)
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    reference.eval()
    return reference


class _AdapterDisabled(torch.nn.Module):
    """Calls a peft model with its adapters switched off: the reference policy for free."""

    def __init__(self, peft_model):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(**kwargs)


def reward_runner(cfg: RLConfig) -> RewardRunner:
    names = cfg.reward.functions
    weights = dict(zip(names, cfg.reward.weights)) if cfg.reward.weights else None
    return RewardRunner({name: resolve_reward(name) for name in names}, weights,
                        on_error=cfg.reward.on_error, timeout_s=cfg.reward.timeout_s)
