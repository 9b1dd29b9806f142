"""Supervised fine-tuning: next-token loss on completion / assistant tokens only.

The loop, top to bottom, each optimizer step:
    pick the step's sequences (a seeded permutation per epoch, so the data position is just
    the step number) → split into micro-batches → forward → NLL summed over target tokens and
    divided by the *step's* target-token count → backward (accumulate) → NaN check → clip →
    optimizer and schedule step → log → evaluate / checkpoint when due.
Dividing every micro-batch by the whole step's token count makes gradient accumulation exact:
1×8 and 8×1 micro-batching give the same gradient (tested).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from posttrain.algorithms.sft import sft_loss
from posttrain.compute import ComputeLedger, matmul_params
from posttrain.config import (
    DataConfig, EvalConfig, ModelConfig, OptimConfig, PrecisionName, RunConfig, require, require_offline_schedule,
)
from posttrain.data.collate import pad_batch
from posttrain.engines.factory import build_engine
from posttrain.evaluation import eval_config_runner, task_accuracy
from posttrain.models.build import load_model_and_tokenizer
from posttrain.models.device import model_device
from posttrain.recipes.sft_data import SFTData, load_sft_data
from posttrain.training.loop import TrainingLoop, set_seed, start_run, warn_to
from posttrain.training.modes import train_mode
from posttrain.training.optim import build_optimizer, build_scheduler, optimizer_step
from posttrain.training.order import step_indices
from posttrain.training.precision import recipe_precision


@dataclasses.dataclass
class SFTConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(name="sft"))
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    steps: int = 400
    # Both in sequences: one optimizer step sees `sequences_per_step` sequences, fed through the
    # model `micro_batch_size` at a time (gradient accumulation in between).
    sequences_per_step: int = 32
    micro_batch_size: int = 32
    # fp32, bf16-mixed (bf16 autocast over float32 weights and optimizer state) or auto (bf16-mixed
    # on CUDA, and on a CPU only where bf16 matmuls measure fast): posttrain/training/precision.py.
    precision: PrecisionName = "fp32"

    def validate(self) -> None:
        require_offline_schedule(self, "sequences_per_step")


def train(cfg: SFTConfig) -> dict:
    """Run SFT as configured; returns the summary also written to `summary.json`."""
    run = start_run(cfg)
    # The held-out task accuracy's reward (if `eval.reward` is set), under a timeout.
    with run, (eval_config_runner(cfg.eval, warn=warn_to(run)) or contextlib.nullcontext()) as reward_fn:
        set_seed(cfg.run.seed)
        model, tokenizer = load_model_and_tokenizer(cfg.model)
        # Dropout stays as the model's config sets it: supervised targets are fixed, nothing compares
        # two passes (unlike RL and DPO, whose recipes turn it off).
        train_mode(model, dropout=True)
        device = model_device(model)
        data = load_sft_data(cfg.data, tokenizer, eval_cfg=cfg.eval, seed=cfg.run.seed, console=run.console)
        require(len(data.train) > 0, f"no usable training rows in {cfg.data.train}")

        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
        ledger = ComputeLedger()
        n_params = matmul_params(model)

        def evaluate() -> dict:
            metrics = evaluate_sft(model, tokenizer, data, cfg, reward_fn, ledger, n_params)
            train_mode(model, dropout=True)
            return metrics

        def sft_step(step: int) -> dict:
            with ledger.timed("sft"):
                metrics = accumulate_gradients(model, data, cfg, step, tokenizer.pad_token_id, device)
                metrics.update(optimizer_step(model, optimizer, scheduler, max_grad_norm=cfg.optim.max_grad_norm,
                                              loss=metrics["train/loss"],
                                              check_finite=lambda m: run.check_finite(step + 1, m)))
                ledger.record("sft", tokens=metrics["train/tokens"], params=n_params, backward=True)
            return metrics

        loop = TrainingLoop(run, cfg.run, cfg.steps, model=model, optimizer=optimizer, scheduler=scheduler,
                            ledger=ledger, tokenizer=tokenizer, evaluate=evaluate)
        loop.resume()
        loop.train(sft_step, description="sft", postfix=lambda m: {"loss": f"{m['train/loss']:.4f}"})
        return loop.finish(
            {"recipe": "sft", "steps": cfg.steps, "skipped_rows": data.skipped},
            model=model, reward_runners=(reward_fn,), plot_name="sft_curves.png", title=f"SFT: {cfg.run.name}",
            plot_keys=["train/loss", "eval/loss", "eval/accuracy_greedy", "eval/accuracy_sampled"])


def accumulate_gradients(model, data: SFTData, cfg: SFTConfig, step: int, pad_id: int,
                         device: torch.device) -> dict:
    """Forward and backward over the step's micro-batches; gradients accumulate in `.grad`."""
    indices = step_indices(step, per_step=cfg.sequences_per_step, num_examples=len(data.train),
                           seed=cfg.run.seed)
    examples = [data.train[i] for i in indices]
    # Normalise by the target tokens of the whole step (token t is a target iff mask[t] and t > 0).
    step_targets = sum(sum(ex.loss_mask[1:]) for ex in examples)
    total_loss = 0.0
    total_tokens = 0
    precision = recipe_precision(cfg)
    for start in range(0, len(examples), cfg.micro_batch_size):
        batch = pad_batch(examples[start : start + cfg.micro_batch_size], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with precision.autocast():  # the forward only: the loss casts the logits to float32
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = sft_loss(logits, batch["input_ids"], batch["loss_mask"], num_tokens=step_targets)
        loss.backward()
        total_loss += loss.item()
        total_tokens += int(batch["attention_mask"].sum())
    return {"train/loss": total_loss, "train/target_tokens": step_targets, "train/tokens": total_tokens}


@torch.no_grad()
def evaluate_sft(model, tokenizer, data: SFTData, cfg: SFTConfig, reward_fn, ledger: ComputeLedger,
                 n_params: int) -> dict:
    """Held-out loss, and greedy / sampled accuracy when a reward is configured."""
    model.eval()
    device = model_device(model)
    precision = recipe_precision(cfg)
    metrics: dict[str, float] = {}
    if data.eval:
        total, targets, tokens = 0.0, 0, 0
        for start in range(0, len(data.eval), cfg.micro_batch_size):
            chunk = data.eval[start : start + cfg.micro_batch_size]
            batch = {k: v.to(device) for k, v in pad_batch(chunk, tokenizer.pad_token_id).items()}
            with precision.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            count = int(batch["loss_mask"][:, 1:].sum())
            total += sft_loss(logits, batch["input_ids"], batch["loss_mask"], num_tokens=count).item() * count
            targets += count
            tokens += int(batch["attention_mask"].sum())
        metrics["eval/loss"] = total / max(targets, 1)
        ledger.record("eval", tokens=tokens, params=n_params)
    if reward_fn is not None and data.eval_prompts:
        engine = build_engine("hf", model, tokenizer, precision=precision)
        metrics.update(task_accuracy(engine, data.eval_prompts, data.eval_prompt_ids, reward_fn,
                                     cfg.eval, seed=cfg.run.seed, ledger=ledger, n_params=n_params))
    return metrics
