"""The one place engines are made: `rollout.engine` names one, recipes never construct one.

`hf` (the default) samples from the module being trained, in this process. Later names
(`vllm`, `ray`) plug in here; any `package.module:function` taking `(model, tokenizer)` and
returning an `Engine` works too, so a user can bring their own without touching a recipe.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from posttrain.engines.base import Engine
from posttrain.import_path import lookup


def _hf_engine(model: nn.Module, tokenizer: Any) -> Engine:
    from posttrain.engines.hf import HFEngine

    return HFEngine(model, tokenizer)


ENGINES: dict[str, Callable[[nn.Module, Any], Engine]] = {"hf": _hf_engine}


def build_engine(name: str, model: nn.Module, tokenizer: Any) -> Engine:
    """The engine `name` (`rollout.engine`) for sampling from `model`, the policy being trained."""
    return lookup(ENGINES, name, "rollout engine")(model, tokenizer)
