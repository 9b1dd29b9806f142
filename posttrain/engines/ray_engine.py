"""RayEngine: `rollout.engine: ray` — N copies of the policy, each sampled by an HFEngine in a Ray actor.

The driver (the training process) keeps the policy and trains it; each worker holds its own copy
and samples with :class:`~posttrain.engines.hf.HFEngine`. One ``generate``:

1. The prompts are split into ``workers`` contiguous chunks (sizes differing by at most one); a
   prompt goes to one worker with all its ``n`` samples, so a GRPO group is never split.
2. Worker ``i`` samples with seed ``s + i``, where ``s`` is ``SamplingParams.seed`` (or, when it is
   None, one draw from torch's global RNG, so ``torch.manual_seed`` still makes a run
   reproducible). A run is therefore reproducible for a fixed worker count, but its *sampled*
   completions differ from the single-process ``hf`` engine's for the same seed (other seeds,
   other batches); greedy completions (T = 0) are the same token ids, and the log-probs agree up to
   float error (batches padded differently).
3. The results are put back in prompt order, ``prompt_index`` relative to the whole batch.

``load_weights(policy)`` puts the state dict in Ray's object store ONCE (``ray.put``) and every
worker loads it from there, with a version number (1, 2, ... per sync; 0 = the weights the engine
was built with). Each worker returns the version it sampled with; ``generate`` checks they all
equal the engine's current version and reports it as ``last_stats["weight_version"]``.

Faults: every remote call waits at most ``timeout_s`` (``rollout.worker_timeout_s``). A worker that
dies or times out is reported (a warning with its error), killed, replaced by a fresh actor built
from the initial policy plus the latest weights, and its call retried once; a second failure raises
a ``RuntimeError`` naming the worker and both errors. An exception raised by the sampling code
itself (bad input) is not a fault of the worker and is raised as is.

Ray: when Ray is not yet initialised, the engine connects to the cluster at ``RAY_ADDRESS`` when
that is set (posttrain must be installed there) and otherwise starts a small local Ray
(``num_cpus=workers``, no dashboard, worker logs not forwarded, namespace ``posttrain``), which
``close()`` shuts down again. Workers sample on CPU, one CPU each (GPU placement is future work).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
import warnings
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from posttrain.engines.base import Completion, SamplingParams, validate_prompt_ids

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError
except ImportError as err:  # pragma: no cover - exercised only without ray installed
    raise ImportError("rollout.engine=ray needs Ray: pip install 'posttrain[ray]'") from err

__all__ = ["RayEngine", "split_contiguous"]

NAMESPACE = "posttrain"


class _Worker:
    """One engine replica: an HFEngine over its own copy of the policy (runs inside a Ray actor)."""

    def __init__(self, model: nn.Module, tokenizer: Any, precision, max_batch_size: int, index: int) -> None:
        from posttrain.engines.hf import HFEngine

        torch.set_num_threads(1)
        self.index = index
        self.version = 0
        self.engine = HFEngine(model, tokenizer, max_batch_size=max_batch_size, precision=precision)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> tuple[list[list[Completion]], dict, int]:
        out = self.engine.generate(prompts, sampling)
        return out, self.engine.last_stats, self.version

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> int:
        self.engine.load_weights(state)
        self.version = version
        return version

    def pid(self) -> int:
        return os.getpid()


def split_contiguous(count: int, parts: int) -> list[tuple[int, int]]:
    """``min(parts, count)`` contiguous ``[lo, hi)`` ranges covering ``range(count)``, in order,
    sizes differing by at most one (the first ranges are the longer ones)."""
    parts = min(parts, count)
    size, extra = divmod(count, parts)
    ranges, lo = [], 0
    for i in range(parts):
        hi = lo + size + (1 if i < extra else 0)
        ranges.append((lo, hi))
        lo = hi
    return ranges


class RayEngine:
    """Samples with ``workers`` HFEngine replicas in Ray actors (see the module docstring).

    Args:
        model: the policy; each worker gets a copy as it is now (its later weights come through
            ``load_weights``). It is serialised once, on CPU.
        tokenizer: decodes completions (copied to every worker).
        workers: number of replicas, >= 1.
        timeout_s: seconds any remote call (construction, generate, load_weights) may take.
        precision: the run's resolved ``Precision``, under which every worker samples.
        max_batch_size: each worker's HFEngine batch size.

    Attributes:
        last_stats: after each ``generate``: ``prompt_tokens`` and ``generated_tokens`` summed over
            the workers, ``seconds`` (wall clock, as the driver waited), ``weight_version``,
            ``workers`` used and ``restarts`` during the call.
        version: the weight version the workers hold (0 until the first ``load_weights``).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, workers: int = 1, timeout_s: float = 300.0,
                 precision=None, max_batch_size: int = 256) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"RayEngine: workers (rollout.workers) must be an int >= 1, got {workers!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"RayEngine: timeout_s (rollout.worker_timeout_s) must be > 0, got {timeout_s!r}")
        self.workers, self.timeout_s = workers, float(timeout_s)
        self.precision, self.max_batch_size = precision, max_batch_size
        self.vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        self.version = 0
        self.last_stats: dict[str, float] = {"prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0,
                                             "weight_version": 0}
        self._closed = False
        self._started_ray = False
        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init(address=os.environ["RAY_ADDRESS"], namespace=NAMESPACE, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, namespace=NAMESPACE)
            self._started_ray = True
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0)(_Worker)
        self._model_ref = ray.put(_cpu_copy(model))
        self._tokenizer_ref = ray.put(tokenizer)
        self._weights_ref = None  # the latest state dict in the object store (None: the initial model)
        self._actors = [self._new_actor(i) for i in range(workers)]
        try:
            ray.get([actor.pid.remote() for actor in self._actors], timeout=self.timeout_s)
        except (GetTimeoutError, RayActorError) as err:
            self.close()
            raise RuntimeError(f"RayEngine: the {workers} worker(s) did not start within "
                               f"{self.timeout_s:g} s (rollout.worker_timeout_s): {err}") from err

    # ------------------------------------------------------------------ protocol

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[list[Completion]]:
        """Sample ``sampling.n`` completions per prompt over the workers; see the module docstring."""
        if self._closed:
            raise RuntimeError("RayEngine.generate: the engine is closed")
        if not isinstance(sampling, SamplingParams):
            raise TypeError(f"RayEngine.generate: sampling must be a SamplingParams, got {type(sampling).__name__}")
        prompts = validate_prompt_ids(prompt_ids, self.vocab_size)
        seed = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        ranges = split_contiguous(len(prompts), self.workers)
        params = [_with_seed(sampling, seed + i) for i in range(len(ranges))]
        start = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        pending = [self._actors[i].generate.remote(prompts[lo:hi], params[i]) for i, (lo, hi) in enumerate(ranges)]
        results: list[list[Completion]] = []
        stats = {"prompt_tokens": 0, "generated_tokens": 0}
        restarts = 0
        for i, ((lo, hi), ref) in enumerate(zip(ranges, pending)):
            try:
                out, worker_stats, version = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except (GetTimeoutError, RayActorError) as err:
                restarts += 1
                out, worker_stats, version = self._retry(
                    i, err, "generate", lambda actor: actor.generate.remote(prompts[lo:hi], params[i]))
            if version != self.version:
                raise RuntimeError(f"RayEngine: worker {i} sampled with weight version {version}, "
                                   f"expected {self.version} (the weight sync failed)")
            for local, group in enumerate(out):
                for completion in group:
                    completion.prompt_index = lo + local
                results.append(group)
            stats["prompt_tokens"] += worker_stats["prompt_tokens"]
            stats["generated_tokens"] += worker_stats["generated_tokens"]
        self.last_stats = {**stats, "seconds": time.perf_counter() - start, "weight_version": self.version,
                           "workers": len(ranges), "restarts": restarts}
        return results

    def load_weights(self, source: nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Push ``source``'s weights to every worker through the object store (one ``ray.put``)."""
        if self._closed:
            raise RuntimeError("RayEngine.load_weights: the engine is closed")
        if isinstance(source, nn.Module):
            state = source.state_dict()
        elif isinstance(source, Mapping):
            state = source
        else:
            raise TypeError(f"RayEngine.load_weights: expected an nn.Module or a state dict, "
                            f"got {type(source).__name__}")
        version = self.version + 1
        ref = ray.put({key: value.detach().cpu() for key, value in state.items()})
        deadline = time.monotonic() + self.timeout_s
        pending = [actor.load_weights.remote(ref, version) for actor in self._actors]
        self._weights_ref, self.version = ref, version  # a restarted worker loads these
        for i, call in enumerate(pending):
            try:
                ray.get(call, timeout=max(0.0, deadline - time.monotonic()))
            except (GetTimeoutError, RayActorError) as err:
                self._retry(i, err, "load_weights", lambda actor: actor.pid.remote())  # a restart loads them

    def shares_weights(self, model: nn.Module) -> bool:
        """Never: the workers hold copies, so the sampler's log-probs are the update's old log-probs."""
        return False

    def close(self) -> None:
        """Kill the workers, and shut down the local Ray this engine started; idempotent."""
        if self._closed:
            return
        self._closed = True
        for actor in getattr(self, "_actors", []):
            ray.kill(actor, no_restart=True)
        self._actors = []
        if self._started_ray:
            ray.shutdown()

    # ------------------------------------------------------------------ workers

    def _new_actor(self, index: int):
        actor = self._actor_class.remote(self._model_ref, self._tokenizer_ref, self.precision,
                                         self.max_batch_size, index)
        if self._weights_ref is not None:
            actor.load_weights.remote(self._weights_ref, self.version)  # actor calls run in order
        return actor

    def _retry(self, index: int, err: Exception, what: str, call):
        """Replace worker ``index`` after ``err`` and run ``call(actor)`` on the new one, once."""
        warnings.warn(f"RayEngine: worker {index} failed during {what} ({type(err).__name__}: {err}); "
                      "restarting it and retrying once", RuntimeWarning, stacklevel=3)
        ray.kill(self._actors[index], no_restart=True)
        self._actors[index] = self._new_actor(index)
        try:
            return ray.get(call(self._actors[index]), timeout=self.timeout_s)
        except (GetTimeoutError, RayActorError) as again:
            raise RuntimeError(f"RayEngine: worker {index} failed during {what} ({type(err).__name__}: {err}) "
                               f"and again after a restart ({type(again).__name__}: {again}); "
                               f"rollout.worker_timeout_s is {self.timeout_s:g} s") from again


def _with_seed(sampling: SamplingParams, seed: int) -> SamplingParams:
    return dataclasses.replace(sampling, seed=seed)


def _cpu_copy(model: nn.Module) -> nn.Module:
    """The module as it will be serialised for the workers: itself when already on CPU."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()
