"""The frozen reference policy RL's KL term is measured against."""

from __future__ import annotations

import copy

import torch


def reference_model(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the starting policy (for LoRA: the base model, adapters disabled — no copy)."""
    if hasattr(model, "disable_adapter"):
        return _AdapterDisabled(model)
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    reference.eval()
    return reference


class _AdapterDisabled(torch.nn.Module):
    """Calls a peft model with its adapters switched off: the reference policy for free."""

    def __init__(self, peft_model):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(**kwargs)
