"""Model building (tiny offline models) and loading/saving of Hugging Face causal LMs."""

from posttrain.models.loading import (
    LoraSettings,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    save_model,
)
from posttrain.models.tiny import PRESETS, build_tiny_model, default_corpus, train_tokenizer

__all__ = [
    "PRESETS",
    "LoraSettings",
    "build_tiny_model",
    "count_parameters",
    "default_corpus",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "save_model",
    "train_tokenizer",
]
