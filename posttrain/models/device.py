"""Where a model's weights live: the one answer every pass and engine asks for."""

from __future__ import annotations

import torch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (posttrain keeps a model on one device); the CPU
    for a module without parameters (a scripted stand-in model in tests)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")
