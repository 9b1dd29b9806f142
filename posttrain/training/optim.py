"""The optimizer, its schedule, and one optimizer step (clip, step, schedule, clear)."""

from __future__ import annotations

from typing import Callable

import torch
import transformers

from posttrain.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return transformers.get_scheduler(
        cfg.schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps
    )


def clip_gradients(model: torch.nn.Module, max_grad_norm: float) -> float:
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


def optimizer_step(model, optimizer, scheduler, *, max_grad_norm: float, loss: float,
                   check_finite: Callable[[dict], None]) -> dict:
    """The end of every training step: clip the gradients, stop on a non-finite loss or gradient
    norm *before* it reaches the weights (`check_finite`, e.g. `run.check_finite` for this step),
    then step. Returns `train/grad_norm` and `train/lr`."""
    grad_norm = clip_gradients(model, max_grad_norm)
    check_finite({"train/loss": loss, "train/grad_norm": grad_norm})
    return {"train/grad_norm": grad_norm, "train/lr": apply_update(optimizer, scheduler)}
