"""Scalar-output models (reward models, PPO value models) in the standard Hugging Face form.

A reward model here is whatever ``AutoModelForSequenceClassification.from_pretrained(path,
num_labels=1)`` returns: the causal LM's backbone plus a linear ``score`` head (hidden → 1). We
use that class rather than a hand-made head so that the saved directory is an ordinary
transformers model: TRL, vLLM's reward serving or a plain ``from_pretrained`` read it back with
no posttrain code.

Two ways to read it:
- `sequence_scores`: one scalar per sequence, read like transformers reads it: at the *last token
  that is not padding* (the rightmost position whose id ≠ ``config.pad_token_id``), so the pad
  id must be set and must differ from every real token at the end of a sequence (posttrain's
  tiny tokenizer keeps pad ≠ EOS). Right and left padding both work (tested).
- `token_values`: the head at every position, (B, L) — a PPO critic's V(s_t) for each prefix.
  Same weights, read before the pooling step (as TRL's PPO value model does).

Initialising from a causal-LM checkpoint (the SFT policy) keeps the backbone and drops
``lm_head``; the new ``score`` head is initialised by transformers (normal, std =
``initializer_range``). Initialising from a reward-model directory keeps its trained head.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from posttrain.models.loading import LoraSettings, _check_source, resolve_device, resolve_dtype

__all__ = ["load_scalar_model", "sequence_scores", "token_values", "score_head"]


def load_scalar_model(
    name_or_path: str | Path,
    *,
    pad_token_id: int,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    lora: LoraSettings | None = None,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """``AutoModelForSequenceClassification`` with one output, from a causal LM or a reward model.

    Args:
        name_or_path: a causal-LM directory (the head starts fresh) or a saved reward model.
        pad_token_id: the tokenizer's pad id, written into the config: transformers finds the
            last real token of each row by comparing ids with it.
        dtype, device: as in `load_causal_lm`.
        lora: wrap with peft LoRA (task "SEQ_CLS": peft keeps the ``score`` head fully trainable).
        trust_remote_code: passed to transformers.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
        raise TypeError(f"pad_token_id must be an int, got {pad_token_id!r} (does the tokenizer have a pad token?)")
    source = _check_source(name_or_path, "reward/value model")
    target = resolve_device(device)
    # Loading a causal LM as a classifier reports lm_head as unused and score as newly
    # initialised; both are expected here, so transformers' load report is silenced.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, pad_token_id=pad_token_id, dtype=resolve_dtype(dtype, target),
            trust_remote_code=trust_remote_code,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = pad_token_id
    model.to(target)
    score_head(model)  # fail now, not mid-training, on an architecture without a `score` head
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, task_type="SEQ_CLS")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, config)
    return model


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (LoRA layers are injected in place, so
    calling the unwrapped modules still applies the adapters)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def score_head(model: torch.nn.Module) -> torch.nn.Module:
    """The (hidden → 1) head of a sequence-classification model; a clear error if it has none."""
    inner = _unwrap(model)
    head = getattr(inner, "score", None)
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no `score` head; posttrain's reward and value models "
                         "need a decoder-style AutoModelForSequenceClassification (Llama, Qwen2, Mistral, ...)")
    return head  # under peft, a wrapper that calls the adapter's trainable copy of the head


def sequence_scores(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) ids → (B,) float32 scores, read at each row's last non-pad token (see module doc).

    The head at every position (`token_values`, in float32 even under autocast), then the row's
    score where transformers' own forward reads it: the rightmost position whose id is not
    ``config.pad_token_id`` (the last column when no pad id is set). Tested equal to the forward's
    pooled logits."""
    values = token_values(model, input_ids, attention_mask)
    pad_id = _unwrap(model).config.pad_token_id
    if pad_id is None:
        return values[:, -1]
    positions = torch.arange(input_ids.shape[1], device=values.device)
    last = (positions * (input_ids.to(values.device) != pad_id)).argmax(-1)
    return values[torch.arange(values.shape[0], device=values.device), last]


def token_values(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) ids → (B, L) float: the head applied to the hidden state at every position.

    Entry t is V(x_≤t), the value of the prefix ending at token t, i.e. of the state in which
    token t+1 is chosen; so `values[:, :-1]` lines up with `token_logprobs` and the shifted
    response mask (B, L-1).
    """
    inner = _unwrap(model)
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    # The head in its weights' dtype (float32 under bf16-mixed) with autocast off: a score's bf16
    # rounding (~0.4 %) would be the size of the reward margins and value errors the losses learn from.
    head = score_head(model)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        scores = head(hidden.to(next(head.parameters()).dtype))
    if scores.shape[-1] != 1:
        raise ValueError(f"expected one score per position from a num_labels=1 model, got {scores.shape[-1]}")
    return scores.squeeze(-1).float()
