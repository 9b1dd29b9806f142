"""Models as a config section describes them: `tiny` names resolved, LoRA and dtype applied."""

from __future__ import annotations

from pathlib import Path

from posttrain.config import ModelConfig
from posttrain.models.loading import LoraSettings, load_causal_lm, load_tokenizer, resolve_device
from posttrain.cache import cache_dir
from posttrain.models.tiny import build_tiny_model


def tiny_model_cache() -> Path:
    """Where `tiny` models are built once and reused: $POSTTRAIN_CACHE or ~/.cache/posttrain."""
    return cache_dir("models")


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


def lora_settings(cfg: ModelConfig) -> LoraSettings | None:
    if cfg.lora is None:
        return None
    return LoraSettings(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                        target_modules=cfg.lora.target_modules)


def load_model_and_tokenizer(cfg: ModelConfig):
    """Policy model and tokenizer as the config says (device, dtype, optional LoRA)."""
    path = resolve_model_path(cfg.name_or_path)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code)
    model = load_causal_lm(
        path,
        dtype=cfg.dtype,
        device=str(resolve_device(cfg.device)),
        lora=lora_settings(cfg),
        gradient_checkpointing=cfg.gradient_checkpointing,
        trust_remote_code=cfg.trust_remote_code,
    )
    return model, tokenizer
