"""Reward-model training: a Bradley–Terry scalar head on a causal LM, fitted to preference pairs.

The model is `AutoModelForSequenceClassification` (num_labels = 1) initialised from the policy
(usually the SFT checkpoint: its backbone already reads the task), so the saved directory is a
standard transformers reward model (`models/scalar_head.py`). Each optimizer step:
    pick the step's pairs (`step_indices`, as SFT) → micro-batches of pairs padded into one
    (2B, L) batch, chosen rows then rejected rows, one forward → scores r_c, r_r →
    Bradley–Terry loss (+ margin, + centring; `algorithms/reward_model.py`) summed over pairs and
    divided by the step's pair count → backward → NaN check → clip → step → log → eval / checkpoint.
Evaluation reports the held-out preference accuracy (r_c > r_r), loss, margin and mean reward.
The result plugs into RL as the reward function `reward_model:<run>/model`.

Difference from InstructGPT (Ouyang et al. 2022): they put all K·(K−1)/2 comparisons of one
prompt in the same batch; our pairs are independent rows, shuffled per epoch.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from posttrain.algorithms.reward_model import bradley_terry_loss
from posttrain.compute import ComputeLedger, matmul_params
from posttrain.config import DataConfig, ModelConfig, OptimConfig, RunConfig, require, require_offline_schedule, to_dict
from posttrain.data.collate import pad_preference_batch
from posttrain.data.tokenize import TokenizedPair
from posttrain.models.loading import LoraSettings, load_tokenizer, resolve_device, save_model
from posttrain.models.scalar_head import load_scalar_model, sequence_scores
from posttrain.plots import plot_metrics
from posttrain.recipes.common import (
    build_optimizer, build_scheduler, checkpoint_if_due, model_device, resolve_model_path, resume_if_asked, set_seed,
)
from posttrain.recipes.preference_data import load_preference_data
from posttrain.recipes.sft import apply_update, clip_gradients, step_indices
from posttrain.run import Run


@dataclasses.dataclass
class RewardModelConfig:
    # The policy to start from (usually the SFT model); its lm_head is dropped, a score head added.
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=1e-4, schedule="linear"))
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(name="reward_model"))
    steps: int = 200
    # Both in pairs: a step sees `pairs_per_step` pairs, `micro_batch_size` pairs (2× rows) per forward.
    pairs_per_step: int = 32
    micro_batch_size: int = 32
    # Every pair must be separated by at least this much (Llama 2's margin, here one value for all pairs).
    margin: float = 0.0
    # η of η·(r_c + r_r)²: keeps rewards centred on 0 (Eisenstein et al. 2023 use 0.01).
    centering_coef: float = 0.0

    def validate(self) -> None:
        require_offline_schedule(self, "pairs_per_step")
        require(self.centering_coef >= 0, f"centering_coef must be >= 0, got {self.centering_coef}")


def load_reward_model(cfg: ModelConfig):
    """The scalar model and tokenizer for training, initialised from `cfg.name_or_path`."""
    path = resolve_model_path(cfg.name_or_path)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code)
    lora = None
    if cfg.lora is not None:
        lora = LoraSettings(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                            target_modules=cfg.lora.target_modules)
    model = load_scalar_model(path, pad_token_id=tokenizer.pad_token_id, dtype=cfg.dtype,
                              device=resolve_device(cfg.device), lora=lora, trust_remote_code=cfg.trust_remote_code)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def train(cfg: RewardModelConfig) -> dict:
    """Train a reward model as configured; returns the summary also written to `summary.json`."""
    started = time.time()
    run = Run.start(cfg.run.output_dir, cfg.run.name, to_dict(cfg), resume=cfg.run.resume,
                    overwrite=cfg.run.overwrite, report_to=cfg.run.report_to, wandb_project=cfg.run.wandb_project)
    with run:
        set_seed(cfg.run.seed)
        model, tokenizer = load_reward_model(cfg.model)
        data = load_preference_data(cfg.data, tokenizer, seed=cfg.run.seed, console=run.console)
        require(len(data.train) > 0, f"no usable training pairs in {cfg.data.train}")

        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
        ledger = ComputeLedger()
        n_params = matmul_params(model)
        start_step, first_eval = resume_if_asked(run, model=model, optimizer=optimizer, scheduler=scheduler,
                                                 ledger=ledger)

        def evaluate(step: int) -> dict:
            with ledger.timed("eval"):
                metrics = evaluate_pairs(model, data.eval, cfg, tokenizer.pad_token_id, ledger, n_params)
            run.log(step, metrics)
            return metrics

        if start_step == 0:
            first_eval = evaluate(0)
        model.train()
        with run.progress(cfg.steps, initial=start_step, description="reward model") as bar:
            for step in range(start_step, cfg.steps):
                with ledger.timed("reward_model"):
                    pairs = [data.train[i] for i in step_indices(step, per_step=cfg.pairs_per_step,
                                                                 num_examples=len(data.train), seed=cfg.run.seed)]
                    metrics = accumulate_gradients(model, pairs, cfg, tokenizer.pad_token_id)
                    metrics["train/grad_norm"] = clip_gradients(model, cfg.optim.max_grad_norm)
                    run.check_finite(step + 1, metrics)  # before the update: a NaN never reaches the weights
                    metrics["train/lr"] = apply_update(optimizer, scheduler)
                    ledger.record("reward_model", tokens=metrics["train/tokens"], params=n_params, backward=True)
                metrics.update(ledger.metrics())
                if (step + 1) % cfg.run.log_every == 0 or step + 1 == cfg.steps:
                    run.log(step + 1, metrics)
                bar.advance(loss=f"{metrics['train/loss']:.4f}", acc=f"{metrics['train/accuracy']:.2f}")
                if cfg.run.eval_every and (step + 1) % cfg.run.eval_every == 0 and step + 1 < cfg.steps:
                    evaluate(step + 1)
                    model.train()
                checkpoint_if_due(run, cfg.run, step + 1, cfg.steps, model=model, optimizer=optimizer,
                                  scheduler=scheduler, tokenizer=tokenizer, ledger=ledger, first_eval=first_eval)

        final_eval = evaluate(cfg.steps)
        model_dir = save_model(model, tokenizer, run.model_dir)
        plot = plot_metrics(run.metrics_path, ["train/loss", "train/accuracy", "eval/loss", "eval/accuracy"],
                            run.dir / "reward_model_curves.png", title=f"Reward model: {cfg.run.name}")
        summary = {
            "recipe": "reward_model",
            "steps": cfg.steps,
            "model_dir": str(model_dir),
            "reward": f"reward_model:{model_dir}",
            "plot": str(plot),
            "seconds": round(time.time() - started, 2),
            "skipped_rows": data.skipped,
            **{f"before/{k}": v for k, v in first_eval.items()},
            **{f"after/{k}": v for k, v in final_eval.items()},
            **ledger.metrics(),
        }
        run.write_summary(summary)
        run.console.print(ledger.table())
        return summary


def score_pairs(model, pairs: list[TokenizedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One forward over the 2B padded rows; returns (r_chosen (B,), r_rejected (B,), tokens)."""
    batch = pad_preference_batch(pairs, pad_id)
    device = model_device(model)
    scores = sequence_scores(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
    return scores[: len(pairs)], scores[len(pairs):], int(batch["attention_mask"].sum())


def accumulate_gradients(model, pairs: list[TokenizedPair], cfg: RewardModelConfig, pad_id: int) -> dict:
    """Forward and backward over the step's micro-batches; gradients accumulate in `.grad`.

    Each micro-batch's summed loss is divided by the step's pair count, so the accumulated
    gradient is the step mean whatever the micro-batching.
    """
    sums = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "reward_mean": 0.0}
    tokens = 0
    for start in range(0, len(pairs), cfg.micro_batch_size):
        chunk = pairs[start : start + cfg.micro_batch_size]
        chosen, rejected, n_tokens = score_pairs(model, chunk, pad_id)
        out = bradley_terry_loss(chosen, rejected, margin=cfg.margin or None, centering_coef=cfg.centering_coef,
                                 num_pairs=len(pairs))
        out.loss.backward()
        share = len(chunk) / len(pairs)
        sums["loss"] += out.loss.item()
        sums["accuracy"] += float(out.accuracy) * share
        sums["margin"] += float(out.margin) * share
        sums["reward_mean"] += float(out.mean_reward) * share
        tokens += n_tokens
    return {**{f"train/{k}": v for k, v in sums.items()}, "train/tokens": tokens}


@torch.no_grad()
def evaluate_pairs(model, pairs: list[TokenizedPair], cfg: RewardModelConfig, pad_id: int,
                   ledger: ComputeLedger, n_params: int) -> dict:
    """Held-out preference accuracy (r_c > r_r), loss, margin and rewards over `pairs`."""
    if not pairs:
        return {}
    model.eval()
    chosen, rejected, tokens = [], [], 0
    for start in range(0, len(pairs), cfg.micro_batch_size):
        c, r, n = score_pairs(model, pairs[start : start + cfg.micro_batch_size], pad_id)
        chosen.append(c)
        rejected.append(r)
        tokens += n
    ledger.record("eval", tokens=tokens, params=n_params)
    out = bradley_terry_loss(torch.cat(chosen), torch.cat(rejected), margin=cfg.margin or None,
                             centering_coef=cfg.centering_coef)
    return {"eval/loss": float(out.loss), "eval/accuracy": float(out.accuracy), "eval/margin": float(out.margin),
            "eval/reward_mean": float(out.mean_reward), "eval/chosen_reward": float(out.chosen_reward),
            "eval/rejected_reward": float(out.rejected_reward), "eval/num_pairs": float(len(pairs))}
