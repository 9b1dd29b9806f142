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
than one worker from one that does not is an error. `rollout.engine_options` are further keywords
for the factory (checked against its signature): `ray` takes `worker_engine` (the engine inside
each worker, `hf` or an import path) and `max_batch_size`; `vllm` takes `sleep_between_steps`,
`gpu_memory_utilization`, `max_model_len` and any other `vllm.LLM` argument; `hf` takes none.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from torch import nn

from posttrain.engines.base import Engine
from posttrain.import_path import lookup


def _hf_engine(model: nn.Module, tokenizer: Any, *, precision=None) -> Engine:
    from posttrain.engines.hf import HFEngine

    return HFEngine(model, tokenizer, precision=precision)


def _ray_engine(model: nn.Module, tokenizer: Any, *, precision=None, workers: int = 1,
                timeout_s: float = 300.0, worker_engine: str = "hf", max_batch_size: int = 256) -> Engine:
    from posttrain.engines.ray_engine import RayEngine

    return RayEngine(model, tokenizer, workers=workers, timeout_s=timeout_s, precision=precision,
                     worker_engine=worker_engine, max_batch_size=max_batch_size)


def _vllm_engine(model: nn.Module, tokenizer: Any, *, precision=None, **options: Any) -> Engine:
    from posttrain.engines.vllm_engine import VLLMEngine

    # bf16 under bf16-mixed, else the model's dtype; options: sleep_between_steps,
    # gpu_memory_utilization, max_model_len and any other vllm.LLM argument.
    return VLLMEngine(model, tokenizer, precision=precision, **options)


ENGINES: dict[str, Callable[..., Engine]] = {"hf": _hf_engine, "ray": _ray_engine, "vllm": _vllm_engine}


def build_engine(name: str, model: nn.Module, tokenizer: Any, *, precision=None, workers: int = 1,
                 timeout_s: float | None = None, options: Mapping[str, Any] | None = None) -> Engine:
    """The engine `name` (`rollout.engine`) for sampling from `model`, the policy being trained,
    under `precision` (a resolved `Precision`), with `workers` replicas and a `timeout_s` per remote
    call, each passed when the engine's factory takes it, and `options` (`rollout.engine_options`),
    keywords the factory must take."""
    factory = lookup(ENGINES, name, "rollout engine")
    kwargs: dict[str, Any] = dict(_checked_options(factory, name, options or {}))
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


def _checked_options(factory: Callable, name: str, options: Mapping[str, Any]) -> Mapping[str, Any]:
    """`options`, once each is known to be a keyword `factory` takes (or it takes **kwargs)."""
    reserved = [key for key in options if key in ("precision", "workers", "timeout_s")]
    if reserved:
        raise ValueError(f"rollout.engine_options: {reserved} are set by rollout.workers, "
                         "rollout.worker_timeout_s and the run's precision, not here")
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return options
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return options
    takes = [key for key, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
             and key not in ("precision", "workers", "timeout_s")]
    unknown = [key for key in options if key not in takes]
    if unknown:
        raise ValueError(f"rollout.engine_options: rollout engine {name!r} takes no option {unknown}"
                         f" (it takes: {takes or 'none'})")
    return options


def _takes(factory: Callable, keyword: str) -> bool:
    try:
        return keyword in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable whose signature cannot be read: the plain contract
        return False
