"""PPO for language models (RLHF): a policy, a value model and a KL-penalised reward in one loop.

`posttrain rl` with `algorithm.name: ppo` lands here (`rl.train` dispatches every algorithm whose
advantage needs a critic). Each step, top to bottom:
    sample prompts → engine.generate → score with the reward functions (e.g. `reward_model:<dir>`,
    batched) → minus `reward.missing_eos_penalty` for responses without EOS → once per batch:
    old log-probs, reference log-probs, old values → per-token reward
    r_t = −β·k1_t, plus the score on the last response token → GAE(γ, λ) → advantages whitened
    over the valid tokens → `updates_per_batch` PPO epochs, each one optimizer step over all
    micro-batches of (clipped policy loss + vf_coef · clipped value loss) → β update (fixed or
    adaptive) → log, evaluate, checkpoint.

References: PPO (Schulman et al. 2017, arXiv 1707.06347); the LM recipe — KL to a frozen
reference in the reward, per-token k1 estimate, adaptive β — from Ziegler et al. 2019 (arXiv
1909.08593) and InstructGPT (Ouyang et al. 2022, arXiv 2203.02155); GAE (Schulman et al. 2016,
arXiv 1506.02438); value clipping as in OpenAI baselines (see algorithms/value_loss.py); the
missing-EOS penalty and the value model read per token from a sequence-classification head as
in TRL's PPOTrainer (after Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO",
arXiv 2403.17031).

Dropout is off in the trained models (policy, value: `train_mode(dropout=False)`, train mode so
gradient checkpointing works) and the frozen ones are in eval mode (reference, reward model), so
the log-probs and values of the rollout, of the old-policy pass and of the update are the same
function of the weights. With an engine that does not share the policy's weights (another
process, vLLM), the sampler's log-probs are the old log-probs, as in `grpo.py`.

Differences from the papers: one AdamW steps policy and critic together, with one gradient clip
over both (as TRL does); each PPO epoch is one optimizer step over the whole batch (gradient
accumulation across micro-batches) rather than several shuffled minibatches; responses whose
reward is None are dropped from the update.
"""

from __future__ import annotations

import torch

from posttrain.algorithms.aggregation import aggregate
from posttrain.algorithms.kl import kl_estimate
from posttrain.algorithms.kl_control import build_kl_controller
from posttrain.algorithms.masked import masked_mean, masked_sum
from posttrain.algorithms.registry import AdvantageInputs, get_advantage_estimator, get_policy_loss
from posttrain.algorithms.value_loss import clipped_value_loss, explained_variance
from posttrain.compute import ComputeLedger, matmul_params
from posttrain.config import require
from posttrain.engines.factory import build_engine
from posttrain.models.build import load_model_and_tokenizer, resolve_model_path
from posttrain.models.loading import load_tokenizer, resolve_device
from posttrain.models.passes import batch_logprobs, batch_values, forward_logprobs, forward_values
from posttrain.envs.registry import environment_spec
from posttrain.models.reference import reference_model
from posttrain.models.scalar_head import load_scalar_model
from posttrain.recipes.prompt_data import load_prompt_sets
from posttrain.recipes.rl.batch import RolloutBatch
from posttrain.recipes.rl.config import RLConfig
from posttrain.recipes.rl.grpo import old_logprobs
from posttrain.recipes.rl.rewards import reward_runners, turn_reward_runner
from posttrain.recipes.rl.multi_turn import episode_limits, rollout_round
from posttrain.recipes.rl.rollouts import collect_rollouts
from posttrain.recipes.rl.samples import RolloutLog
from posttrain.recipes.rl.evaluation import evaluate_prompts
from posttrain.rewards import REWARD_MODEL_PREFIX
from posttrain.run import Run
from posttrain.training.loop import TrainingLoop, set_seed, start_run
from posttrain.training.modes import train_mode
from posttrain.training.optim import build_optimizer, build_scheduler, optimizer_step
from posttrain.training.precision import recipe_precision


def train(cfg: RLConfig) -> dict:
    """Run PPO as configured; returns the summary also written to `summary.json`."""
    algo = cfg.algorithm.resolve()
    run = start_run(cfg, {"resolved_algorithm": algo.as_dict()})
    with run, reward_runners(cfg, run) as (rewards, score_eval), turn_reward_runner(cfg, run) as turn_rewards:
        set_seed(cfg.run.seed)
        run.print(f"algorithm {cfg.algorithm.name}: {algo.as_dict()}")
        policy, tokenizer = load_model_and_tokenizer(cfg.model)
        critic = load_value_model(cfg, tokenizer)
        needs_reference = algo.kl_coef > 0 or algo.kl_target is not None
        reference = reference_model(policy) if needs_reference else None
        for model in (policy, critic):
            train_mode(model, dropout=False)
        for reward in rewards.rewards.values():  # a reward model scores in eval mode: no dropout
            if isinstance(getattr(reward.fn, "model", None), torch.nn.Module):
                reward.fn.model.eval()
        engine = build_engine(cfg.rollout.engine, policy, tokenizer, precision=recipe_precision(cfg),
                              workers=cfg.rollout.workers, timeout_s=cfg.rollout.worker_timeout_s,
                              options=cfg.rollout.engine_options)
        spec = environment_spec(cfg.env) if cfg.env.name else None  # multi-turn episodes
        train_prompts, eval_prompts = load_prompt_sets(cfg.data, tokenizer, seed=cfg.run.seed, console=run.console,
                                                       rewards=rewards, eval_rewards=score_eval,
                                                       source_rows=spec.rows if spec else None)

        trained = torch.nn.ModuleDict({"policy": policy, "value": critic})  # one optimizer, one checkpoint
        optimizer = build_optimizer(trained, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps * cfg.updates_per_batch)
        kl_control = build_kl_controller(algo.kl_coef, algo.kl_target, algo.kl_horizon)
        ledger = ComputeLedger()
        n_params = {"policy": matmul_params(policy), "value": matmul_params(critic)}
        make_env = spec.make if spec else None
        limits = episode_limits(cfg, getattr(policy.config, "max_position_embeddings", None))
        generate_and_score = rollout_round(engine, tokenizer, rewards, ledger, n_params["policy"], make_env, limits,
                                           turn_rewards, cfg.reward.turn_coef)
        episodes = (make_env, tokenizer, limits) if make_env else None
        samples = RolloutLog(run, cfg.rollout.log_samples, cfg.run.log_every, cfg.steps)

        def evaluate() -> dict:
            return evaluate_prompts(engine, eval_prompts, score_eval, cfg, ledger, n_params["policy"], episodes=episodes)

        def ppo_step(step: int) -> dict:
            batch, metrics = collect_rollouts(generate_and_score, train_prompts, cfg, algo, step,
                                              tokenizer.pad_token_id, samples)
            metrics["reward/score_mean"] = metrics.get("rewards/total/mean", float("nan"))
            metrics["kl/beta"] = kl_control.value  # the β this batch's rewards are penalised with
            if batch.size:
                batch = batch.select(torch.nonzero(batch.scorable).flatten())  # None rewards: no update
            if batch.size:
                metrics.update(train_on_batch(policy, critic, reference, engine, trained, optimizer, scheduler, batch,
                                              cfg, algo, kl_control.value, run, step, ledger, n_params))
                kl_control.update(metrics["kl/sequence_mean"], n_steps=batch.size)
                engine.load_weights(policy)
            metrics["train/update_skipped"] = float(batch.size == 0)
            return metrics

        loop = TrainingLoop(run, cfg.run, cfg.steps, model=trained, optimizer=optimizer, scheduler=scheduler,
                            ledger=ledger, tokenizer=tokenizer, evaluate=evaluate,
                            extra_state=lambda: {"kl_controller": kl_control.state_dict()})
        loop.resume(on_state=lambda state: kl_control.load_state_dict(state["kl_controller"]))
        engine.load_weights(policy)  # a resumed run samples from the restored weights
        loop.train(ppo_step, description=f"rl ({cfg.algorithm.name})",
                   postfix=lambda m: {"score": f"{m['reward/score_mean']:.3f}",
                                      "kl": f"{m.get('kl/sequence_mean', 0):.3f}"})
        engine.close()
        return loop.finish(
            {"recipe": "rl", "algorithm": cfg.algorithm.name, "rl_steps": cfg.steps,
             "final_kl_coef": kl_control.value},
            model=policy, also_save={"value_model": critic}, reward_runners=(rewards, score_eval, turn_rewards),
            plot_name="rl_curves.png",
            title=f"RL ({cfg.algorithm.name}): {cfg.run.name}",
            plot_keys=["reward/score_mean", "kl/sequence_mean", "kl/beta", "value/explained_variance",
                       "eval/accuracy_sampled", "response/length_mean"])


def load_value_model(cfg: RLConfig, tokenizer) -> torch.nn.Module:
    """The critic: the policy checkpoint with a fresh scalar head, or a reward model (`critic.init`)."""
    init = cfg.critic.init.strip()
    if init == "policy":
        source = resolve_model_path(cfg.model.name_or_path)
    else:
        source = init[len(REWARD_MODEL_PREFIX):] if init.startswith(REWARD_MODEL_PREFIX) else init
        # Values are read from the policy's token ids, so the critic must share its vocabulary.
        require(load_tokenizer(source).get_vocab() == tokenizer.get_vocab(),
                f"critic.init {init!r}: its tokenizer differs from the policy's ({cfg.model.name_or_path}); "
                "the value model must read the same token ids")
    return load_scalar_model(source, pad_token_id=tokenizer.pad_token_id, dtype=cfg.model.dtype,
                             device=resolve_device(cfg.model.device), trust_remote_code=cfg.model.trust_remote_code)


def kl_shaped_advantages(scores: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor,
                         old_values: torch.Tensor, mask: torch.Tensor, algo, beta: float):
    """PPO's targets from one rollout batch. Shapes: scores (B,); the rest (B, T), T = L-1.

    KL_t = the configured estimator (k1: log π_old − log π_ref) on each sampled token; token
    reward r_t = −β·KL_t, plus the sequence score on the last response token (Ziegler et al.
    2019); then the configured advantage estimator (gae: GAE(γ, λ) on the critic's values, and
    advantages whitened over the valid tokens of the whole batch).

    Returns:
        (advantages, returns, kl), each (B, T), 0 outside the mask.
    """
    kl = kl_estimate(old_logp, ref_logp, algo.kl_estimator, mask=mask)
    estimate = get_advantage_estimator(algo.advantage)(AdvantageInputs(
        rewards=scores, mask=mask, values=old_values, kl=kl, kl_coef=beta, gamma=algo.gamma, lam=algo.lam))
    return estimate.advantages, estimate.returns, kl


def train_on_batch(policy, critic, reference, engine, trained, optimizer, scheduler, batch: RolloutBatch,
                   cfg: RLConfig, algo, beta: float, run: Run, step: int, ledger: ComputeLedger, n_params: dict) -> dict:
    """Old log-probs, reference log-probs and values once; KL-shaped rewards, GAE, whitening;
    then `updates_per_batch` optimizer steps on policy + vf_coef · value loss."""
    T = cfg.rollout.temperature
    mbs = cfg.micro_batch_size
    precision = recipe_precision(cfg)  # forwards under its autocast; log-probs and values come back float32
    mask = batch.mask
    valid = mask > 0
    tokens = int(batch.attention_mask.sum())
    with ledger.timed("reference"), precision.autocast():
        old_logp, computed = old_logprobs(policy, engine, batch, cfg)
        if old_logp is None:  # PPO's KL-shaped reward needs them even for a single update
            old_logp, computed = batch_logprobs(policy, batch, T, mbs), True
        if computed:
            ledger.record("reference", tokens=tokens, params=n_params["policy"])
        ref_logp = old_logp
        if reference is not None:
            ref_logp = batch_logprobs(reference, batch, T, mbs)
            ledger.record("reference", tokens=tokens, params=n_params["policy"])
    with ledger.timed("values"), precision.autocast():
        old_values = batch_values(critic, batch, mbs)
        ledger.record("values", tokens=tokens, params=n_params["value"])
    advantages, returns, kl = kl_shaped_advantages(batch.rewards, old_logp, ref_logp, old_values, mask, algo, beta)
    sequence_kl = masked_sum(kl, valid, dim=1)
    metrics: dict = {
        "kl/mean": float(masked_mean(kl, valid)),  # per token
        "kl/sequence_mean": float(sequence_kl.mean()),  # per sample, summed over its tokens (what β controls)
        "reward/non_score_mean": float(-beta * sequence_kl.mean()),
        "reward/penalised_mean": float(batch.rewards.mean()),  # score after the missing-EOS penalty
        "returns/mean": float(masked_mean(returns, valid)),
        "values/mean": float(masked_mean(old_values, valid)),
        "value/explained_variance": float(explained_variance(old_values, returns, valid)),
    }

    policy_loss = get_policy_loss(algo.policy_loss)
    normaliser = float(cfg.rollout.max_new_tokens) if algo.loss_normaliser == "max_new_tokens" else algo.loss_normaliser
    counts = {"global_tokens": float(mask.sum()), "global_sequences": float(valid.any(1).sum()),
              "constant_normaliser": normaliser}
    gap = 0.0
    for update in range(cfg.updates_per_batch):
        with ledger.timed("update"):
            sums = dict.fromkeys(("loss", "policy_loss", "value_loss", "entropy", "clip", "value_clip", "ratio",
                                  "approx_kl"), 0.0)
            for start in range(0, batch.size, mbs):
                rows = slice(start, start + mbs)
                with precision.autocast():  # the forwards only; backward runs outside the region
                    logp, entropy = forward_logprobs(policy, batch, rows, T, with_entropy=True)
                    values = forward_values(critic, batch, rows)
                m = mask[rows].to(logp.device)
                pol = policy_loss(logp, old_logp[rows].to(logp.device), advantages[rows].to(logp.device), m,
                                  eps_low=algo.eps_low, eps_high=algo.eps_high, dual_clip=algo.dual_clip)
                pg_loss = aggregate(pol.loss, m, algo.aggregation, **counts)
                val = clipped_value_loss(values, old_values[rows].to(values.device), returns[rows].to(values.device),
                                         m.to(values.device), clip_range=cfg.critic.value_clip)
                vf_loss = aggregate(val.loss, m.to(values.device), algo.aggregation, **counts)
                loss = pg_loss + cfg.critic.vf_coef * vf_loss.to(pg_loss.device)
                loss.backward()
                share = float(m.sum()) / max(counts["global_tokens"], 1.0)  # this micro-batch's share of tokens
                if update == 0:  # the trainer's log-probs of the weights that sampled: the health check
                    sampler = batch.sampler_logprobs[rows].to(logp.device)
                    gap += float(masked_mean((sampler - logp.detach()).abs(), m > 0)) * share
                sums["loss"] += loss.item()
                sums["policy_loss"] += pg_loss.item()
                sums["value_loss"] += vf_loss.item()
                sums["entropy"] += float(masked_mean(entropy, m > 0)) * share
                sums["clip"] += float(pol.clip_frac) * share
                sums["value_clip"] += float(val.clip_frac) * share
                sums["ratio"] += float(masked_mean(pol.ratio, m > 0)) * share
                sums["approx_kl"] += float(pol.approx_kl) * share
            ledger.record("update", tokens=tokens, params=n_params["policy"] + n_params["value"], backward=True)
            stepped = optimizer_step(trained, optimizer, scheduler, max_grad_norm=cfg.optim.max_grad_norm,
                                     loss=sums["loss"], check_finite=lambda m: run.check_finite(step + 1, m))
    metrics.update({
        "train/loss": sums["loss"], "train/policy_loss": sums["policy_loss"], "train/value_loss": sums["value_loss"],
        **stepped, "entropy/mean": sums["entropy"],
        "train/clip_fraction": sums["clip"], "value/clip_fraction": sums["value_clip"],
        "train/ratio_mean": sums["ratio"], "train/approx_kl": sums["approx_kl"],
    })
    metrics["train/sampler_logprob_gap"] = gap  # mean |sampler − trainer| log-prob over the model tokens
    return metrics
