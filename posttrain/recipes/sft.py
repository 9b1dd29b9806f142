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

import dataclasses
import time

import torch

from posttrain.algorithms.sft import sft_loss
from posttrain.compute import ComputeLedger, matmul_params
from posttrain.config import (
    DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig, require, require_offline_schedule, to_dict,
)
from posttrain.data.collate import pad_batch
from posttrain.engines.hf import HFEngine
from posttrain.evaluation import task_accuracy
from posttrain.models.loading import save_model
from posttrain.plots import plot_metrics
from posttrain.recipes.common import (
    build_optimizer, build_scheduler, checkpoint_if_due, load_model_and_tokenizer, model_device, resume_if_asked,
    set_seed,
)
from posttrain.recipes.sft_data import SFTData, load_sft_data
from posttrain.rewards import resolve_reward
from posttrain.run import Run


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

    def validate(self) -> None:
        require_offline_schedule(self, "sequences_per_step")


def step_indices(step: int, *, per_step: int, num_examples: int, seed: int) -> list[int]:
    """The example indices of an optimizer step: epoch e visits a permutation seeded by (seed, e).

    A pure function of the step, so resuming needs no sampler state beyond the step number.
    """
    permutations: dict[int, list[int]] = {}  # a step spans at most a few epochs: one permutation each
    indices = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, num_examples)
        if epoch not in permutations:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            permutations[epoch] = torch.randperm(num_examples, generator=generator).tolist()
        indices.append(permutations[epoch][offset])
    return indices


def train(cfg: SFTConfig) -> dict:
    """Run SFT as configured; returns the summary also written to `summary.json`."""
    started = time.time()
    run = Run.start(cfg.run.output_dir, cfg.run.name, to_dict(cfg), resume=cfg.run.resume,
                    overwrite=cfg.run.overwrite, report_to=cfg.run.report_to,
                    wandb_project=cfg.run.wandb_project)
    with run:
        set_seed(cfg.run.seed)
        model, tokenizer = load_model_and_tokenizer(cfg.model)
        device = model_device(model)
        data = load_sft_data(cfg.data, tokenizer, eval_cfg=cfg.eval, seed=cfg.run.seed, console=run.console)
        require(len(data.train) > 0, f"no usable training rows in {cfg.data.train}")
        reward_fn = resolve_reward(cfg.eval.reward) if cfg.eval.reward else None

        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
        ledger = ComputeLedger()
        n_params = matmul_params(model)
        start_step, first_eval = resume_if_asked(run, model=model, optimizer=optimizer, scheduler=scheduler,
                                                 ledger=ledger)

        def evaluate(step: int) -> dict:
            with ledger.timed("eval"):
                metrics = evaluate_sft(model, tokenizer, data, cfg, reward_fn, ledger, n_params)
            run.log(step, metrics)
            return metrics

        if start_step == 0:
            first_eval = evaluate(0)
        model.train()
        with run.progress(cfg.steps, initial=start_step, description="sft") as bar:
            for step in range(start_step, cfg.steps):
                with ledger.timed("sft"):
                    metrics = accumulate_gradients(model, data, cfg, step, tokenizer.pad_token_id, device)
                    metrics["train/grad_norm"] = clip_gradients(model, cfg.optim.max_grad_norm)
                    run.check_finite(step + 1, metrics)  # before the update: a NaN never reaches the weights
                    metrics["train/lr"] = apply_update(optimizer, scheduler)
                    ledger.record("sft", tokens=metrics["train/tokens"], params=n_params, backward=True)
                metrics.update(ledger.metrics())
                if (step + 1) % cfg.run.log_every == 0 or step + 1 == cfg.steps:
                    run.log(step + 1, metrics)
                bar.advance(loss=f"{metrics['train/loss']:.4f}")
                if cfg.run.eval_every and (step + 1) % cfg.run.eval_every == 0 and step + 1 < cfg.steps:
                    evaluate(step + 1)
                    model.train()
                checkpoint_if_due(run, cfg.run, step + 1, cfg.steps, model=model, optimizer=optimizer,
                                  scheduler=scheduler, tokenizer=tokenizer, ledger=ledger, first_eval=first_eval)

        final_eval = evaluate(cfg.steps)
        model_dir = save_model(model, tokenizer, run.model_dir)
        plot = plot_metrics(run.metrics_path, ["train/loss", "eval/loss", "eval/accuracy_greedy",
                                               "eval/accuracy_sampled"], run.dir / "sft_curves.png",
                            title=f"SFT: {cfg.run.name}")
        summary = {
            "recipe": "sft",
            "steps": cfg.steps,
            "model_dir": str(model_dir),
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
    for start in range(0, len(examples), cfg.micro_batch_size):
        batch = pad_batch(examples[start : start + cfg.micro_batch_size], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = sft_loss(logits, batch["input_ids"], batch["loss_mask"], num_tokens=step_targets)
        loss.backward()
        total_loss += loss.item()
        total_tokens += int(batch["attention_mask"].sum())
    return {"train/loss": total_loss, "train/target_tokens": step_targets, "train/tokens": total_tokens}


def clip_gradients(model, max_grad_norm: float) -> float:
    """Clip the global gradient norm; returns the norm before clipping."""
    params = [p for p in model.parameters() if p.requires_grad]
    return float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))


def apply_update(optimizer, scheduler) -> float:
    """Step the optimizer and the schedule, clear gradients; returns the learning rate used."""
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr


@torch.no_grad()
def evaluate_sft(model, tokenizer, data: SFTData, cfg: SFTConfig, reward_fn, ledger: ComputeLedger,
                 n_params: int) -> dict:
    """Held-out loss, and greedy / sampled accuracy when a reward is configured."""
    model.eval()
    device = model_device(model)
    metrics: dict[str, float] = {}
    if data.eval:
        total, targets, tokens = 0.0, 0, 0
        for start in range(0, len(data.eval), cfg.micro_batch_size):
            chunk = data.eval[start : start + cfg.micro_batch_size]
            batch = {k: v.to(device) for k, v in pad_batch(chunk, tokenizer.pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            count = int(batch["loss_mask"][:, 1:].sum())
            total += sft_loss(logits, batch["input_ids"], batch["loss_mask"], num_tokens=count).item() * count
            targets += count
            tokens += int(batch["attention_mask"].sum())
        metrics["eval/loss"] = total / max(targets, 1)
        ledger.record("eval", tokens=tokens, params=n_params)
    if reward_fn is not None and data.eval_prompts:
        metrics.update(task_accuracy(HFEngine(model, tokenizer), data.eval_prompts, data.eval_prompt_ids, reward_fn,
                                     cfg.eval, seed=cfg.run.seed, ledger=ledger, n_params=n_params))
    return metrics
