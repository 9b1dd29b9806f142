"""Pieces every recipe shares: seeding, model resolution, optimizer and schedule."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
import transformers

from posttrain.checkpoint import load_checkpoint, save_checkpoint
from posttrain.config import ModelConfig, OptimConfig
from posttrain.models.loading import LoraSettings, load_causal_lm, load_tokenizer, resolve_device
from posttrain.models.tiny import build_tiny_model


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tiny_model_cache() -> Path:
    """Where `tiny` models are built once and reused: $POSTTRAIN_CACHE or ~/.cache/posttrain."""
    root = os.environ.get("POSTTRAIN_CACHE") or Path.home() / ".cache" / "posttrain"
    return Path(root) / "models"


def resolve_model_path(name_or_path: str) -> str:
    """`tiny[:arch[:preset]]` builds (once) the offline tiny model; anything else passes through.

    Tiny models are deterministic for their (arch, preset), so a cached build is the same model.
    """
    if name_or_path != "tiny" and not name_or_path.startswith("tiny:"):
        return name_or_path
    parts = name_or_path.split(":")
    arch = parts[1] if len(parts) > 1 and parts[1] else "qwen2"
    preset = parts[2] if len(parts) > 2 and parts[2] else "tiny"
    out_dir = tiny_model_cache() / f"tiny-{arch}-{preset}"
    if not (out_dir / "config.json").is_file():
        build_tiny_model(out_dir, arch=arch, preset=preset)
    return str(out_dir)


def load_model_and_tokenizer(cfg: ModelConfig):
    """Policy model and tokenizer as the config says (device, dtype, optional LoRA)."""
    path = resolve_model_path(cfg.name_or_path)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code)
    lora = None
    if cfg.lora is not None:
        lora = LoraSettings(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                            target_modules=cfg.lora.target_modules)
    model = load_causal_lm(
        path,
        dtype=cfg.dtype,
        device=str(resolve_device(cfg.device)),
        lora=lora,
        gradient_checkpointing=cfg.gradient_checkpointing,
        trust_remote_code=cfg.trust_remote_code,
    )
    return model, tokenizer


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return transformers.get_scheduler(
        cfg.schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps
    )


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def resume_if_asked(run, *, model, optimizer, scheduler, ledger, on_state=None) -> tuple[int, dict]:
    """Restore the run's checkpoint when it resumes: returns (start step, the run's first evaluation).

    A fresh run gets (0, {}). The first evaluation travels in the checkpoint so a resumed run
    can still report accuracy before and after. `on_state`, if given, is called with the whole
    trainer state, for recipe state saved with `checkpoint_if_due(extra_state=...)`.
    """
    if run.resume_checkpoint is None:
        return 0, {}
    state = load_checkpoint(run.resume_checkpoint, model=model, optimizer=optimizer, scheduler=scheduler)
    ledger.load_state_dict(state["ledger"])
    if on_state is not None:
        on_state(state)
    run.print(f"resumed from {run.resume_checkpoint} at step {state['step']}")
    return int(state["step"]), state.get("first_eval", {})


def checkpoint_if_due(run, run_cfg, step: int, total_steps: int, *, model, optimizer, scheduler, tokenizer,
                      ledger, first_eval: dict, extra_state: dict | None = None) -> None:
    """Save after `step` completed steps every `run.save_every` steps (the final model is saved apart).

    `extra_state` (JSON-serialisable) joins the trainer state, e.g. PPO's adaptive KL coefficient.
    """
    if step % run_cfg.save_every or step >= total_steps:
        return
    save_checkpoint(run.dir, step, model=model, optimizer=optimizer, scheduler=scheduler, tokenizer=tokenizer,
                    keep_last=run_cfg.keep_last,
                    trainer_state={**(extra_state or {}), "step": step, "ledger": ledger.state_dict(),
                                   "first_eval": first_eval})
