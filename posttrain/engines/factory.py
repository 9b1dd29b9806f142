"""The one place engines are made: `rollout.engine` names one, recipes never construct one.

`hf` (the default) samples from the module being trained, in this process. Later names
(`vllm`, `ray`) plug in here; any `package.module:function` taking `(model, tokenizer)` and
returning an `Engine` works too, so a user can bring their own without touching a recipe.

A factory that also takes a `precision` keyword gets the run's resolved precision
(`training/precision.py`) and should sample under it, as `hf` does, so that its log-probs are
those of the trainer's forward; one that does not take it samples in its own precision (the
logged sampler–trainer log-prob gap shows what that costs).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from posttrain.engines.base import Engine
from posttrain.import_path import lookup


def _hf_engine(model: nn.Module, tokenizer: Any, *, precision=None) -> Engine:
    from posttrain.engines.hf import HFEngine

    return HFEngine(model, tokenizer, precision=precision)


ENGINES: dict[str, Callable[..., Engine]] = {"hf": _hf_engine}


def build_engine(name: str, model: nn.Module, tokenizer: Any, *, precision=None) -> Engine:
    """The engine `name` (`rollout.engine`) for sampling from `model`, the policy being trained,
    under `precision` (a resolved `Precision`) when the engine's factory takes one."""
    factory = lookup(ENGINES, name, "rollout engine")
    if precision is not None and _takes_precision(factory):
        return factory(model, tokenizer, precision=precision)
    return factory(model, tokenizer)


def _takes_precision(factory: Callable) -> bool:
    try:
        return "precision" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable whose signature cannot be read: the plain contract
        return False
