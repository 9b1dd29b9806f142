"""The one place engines are made: `rollout.engine` names one, recipes never construct one.

`hf` (the default) samples from the module being trained, in this process; `ray` samples with
`rollout.workers` HF engines in Ray actors, each on its own copy of the policy
(`engines/ray_engine.py`, imported only when chosen); `vllm` samples with vLLM on the GPU from a
copy kept in sync after each update (`engines/vllm_engine.py`, imported only when chosen; it needs
CUDA and the `posttrain[gpu]` extra). Any `package.module:function` taking `(model, tokenizer)`
and returning an `Engine` works too, so a user can bring their own without touching a recipe.

A factory that also takes a `precision` keyword gets the run's resolved precision
(`training/precision.py`) and should sample under it, as `hf` does, so that its log-probs are
those of the trainer's forward; one that does not take it samples in its own precision (the
logged sampler–trainer log-prob gap shows what that costs). Likewise `workers` and `timeout_s`
(`rollout.workers`, `rollout.worker_timeout_s`) go to a factory that takes them; asking for more
than one worker from one that does not is an error.
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


def _ray_engine(model: nn.Module, tokenizer: Any, *, precision=None, workers: int = 1,
                timeout_s: float = 300.0) -> Engine:
    from posttrain.engines.ray_engine import RayEngine

    return RayEngine(model, tokenizer, workers=workers, timeout_s=timeout_s, precision=precision)


def _vllm_engine(model: nn.Module, tokenizer: Any, *, precision=None) -> Engine:
    from posttrain.engines.vllm_engine import VLLMEngine

    return VLLMEngine(model, tokenizer, precision=precision)  # bf16 under bf16-mixed, else the model's dtype


ENGINES: dict[str, Callable[..., Engine]] = {"hf": _hf_engine, "ray": _ray_engine, "vllm": _vllm_engine}


def build_engine(name: str, model: nn.Module, tokenizer: Any, *, precision=None, workers: int = 1,
                 timeout_s: float | None = None) -> Engine:
    """The engine `name` (`rollout.engine`) for sampling from `model`, the policy being trained,
    under `precision` (a resolved `Precision`), with `workers` replicas and a `timeout_s` per remote
    call, each passed when the engine's factory takes it."""
    factory = lookup(ENGINES, name, "rollout engine")
    kwargs: dict[str, Any] = {}
    if precision is not None and _takes(factory, "precision"):
        kwargs["precision"] = precision
    if _takes(factory, "workers"):
        kwargs["workers"] = workers
    elif workers != 1:
        raise ValueError(f"rollout.workers={workers}: rollout engine {name!r} runs one replica; "
                         "use rollout.engine=ray for several")
    if timeout_s is not None and _takes(factory, "timeout_s"):
        kwargs["timeout_s"] = timeout_s
    return factory(model, tokenizer, **kwargs)


def _takes(factory: Callable, keyword: str) -> bool:
    try:
        return keyword in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable whose signature cannot be read: the plain contract
        return False
