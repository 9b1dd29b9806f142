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

import torch

from posttrain.algorithms.reward_model import bradley_terry_loss
from posttrain.compute import ComputeLedger, matmul_params
from posttrain.config import (
    DataConfig, ModelConfig, OptimConfig, PrecisionName, RunConfig, require, require_offline_schedule,
)
from posttrain.data.collate import pad_preference_batch
from posttrain.data.tokenize import TokenizedPair
from posttrain.models.build import lora_settings, resolve_model_path
from posttrain.models.device import model_device
from posttrain.models.loading import load_tokenizer, resolve_device
from posttrain.models.scalar_head import load_scalar_model, sequence_scores
from posttrain.recipes.preference.pair_data import load_preference_data
from posttrain.training.loop import TrainingLoop, set_seed, start_run
from posttrain.training.modes import train_mode
from posttrain.training.optim import build_optimizer, build_scheduler, optimizer_step
from posttrain.training.order import step_indices
from posttrain.training.precision import recipe_precision


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
    # fp32, bf16-mixed (bf16 autocast over float32 weights; the score head stays float32) or auto:
    # posttrain/training/precision.py.
    precision: PrecisionName = "fp32"

    def validate(self) -> None:
        require_offline_schedule(self, "pairs_per_step")
        require(self.centering_coef >= 0, f"centering_coef must be >= 0, got {self.centering_coef}")


def load_reward_model(cfg: ModelConfig):
    """The scalar model and tokenizer for training, initialised from `cfg.name_or_path`."""
    path = resolve_model_path(cfg.name_or_path)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code)
    model = load_scalar_model(path, pad_token_id=tokenizer.pad_token_id, dtype=cfg.dtype,
                              device=resolve_device(cfg.device), lora=lora_settings(cfg),
                              trust_remote_code=cfg.trust_remote_code)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def train(cfg: RewardModelConfig) -> dict:
    """Train a reward model as configured; returns the summary also written to `summary.json`."""
    run = start_run(cfg)
    with run:
        set_seed(cfg.run.seed)
        model, tokenizer = load_reward_model(cfg.model)
        train_mode(model, dropout=True)  # supervised on fixed pairs, as SFT: the model's own dropout
        data = load_preference_data(cfg.data, tokenizer, seed=cfg.run.seed, console=run.console)
        require(len(data.train) > 0, f"no usable training pairs in {cfg.data.train}")

        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
        ledger = ComputeLedger()
        n_params = matmul_params(model)

        def evaluate() -> dict:
            metrics = evaluate_pairs(model, data.eval, cfg, tokenizer.pad_token_id, ledger, n_params)
            train_mode(model, dropout=True)
            return metrics

        def reward_model_step(step: int) -> dict:
            with ledger.timed("reward_model"):
                pairs = [data.train[i] for i in step_indices(step, per_step=cfg.pairs_per_step,
                                                             num_examples=len(data.train), seed=cfg.run.seed)]
                metrics = accumulate_gradients(model, pairs, cfg, tokenizer.pad_token_id)
                metrics.update(optimizer_step(model, optimizer, scheduler, max_grad_norm=cfg.optim.max_grad_norm,
                                              loss=metrics["train/loss"],
                                              check_finite=lambda m: run.check_finite(step + 1, m)))
                ledger.record("reward_model", tokens=metrics["train/tokens"], params=n_params, backward=True)
            return metrics

        loop = TrainingLoop(run, cfg.run, cfg.steps, model=model, optimizer=optimizer, scheduler=scheduler,
                            ledger=ledger, tokenizer=tokenizer, evaluate=evaluate)
        loop.resume()
        loop.train(reward_model_step, description="reward model",
                   postfix=lambda m: {"loss": f"{m['train/loss']:.4f}", "acc": f"{m['train/accuracy']:.2f}"})
        return loop.finish(
            {"recipe": "reward_model", "steps": cfg.steps, "reward": f"reward_model:{run.model_dir}",
             "skipped_rows": data.skipped},
            model=model, plot_name="reward_model_curves.png", title=f"Reward model: {cfg.run.name}",
            plot_keys=["train/loss", "train/accuracy", "eval/loss", "eval/accuracy"])


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
    precision = recipe_precision(cfg)
    for start in range(0, len(pairs), cfg.micro_batch_size):
        chunk = pairs[start : start + cfg.micro_batch_size]
        with precision.autocast():  # the forward only; the scores come back float32
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
    precision = recipe_precision(cfg)
    chosen, rejected, tokens = [], [], 0
    for start in range(0, len(pairs), cfg.micro_batch_size):
        with precision.autocast():
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
