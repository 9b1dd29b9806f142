"""The one way recipes put a model they train into training mode."""

from __future__ import annotations

import torch


def train_mode(model: torch.nn.Module, *, dropout: bool) -> torch.nn.Module:
    """`model.train()`, and with `dropout=False` every dropout probability set to 0.

    Train mode matters even without dropout: transformers checkpoints activations only in train
    mode, so a model left in `eval()` silently ignores `model.gradient_checkpointing=true`.
    Dropout off is what RL, PPO and DPO need: the log-probs of the sampler, of the old-policy
    pass, of the reference and of the update must be the same function of the weights, or the
    importance ratio and the KL measure dropout noise. Setting the probabilities to 0 (rather
    than calling `eval()`) keeps them off through any later `.train()`. Covers `nn.Dropout`
    modules and the functional attention dropout transformers keeps as an `attention_dropout`
    float on attention modules. Returns the model.
    """
    model.train()
    if not dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0
    return model
