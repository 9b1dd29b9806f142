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
``close()`` shuts down again. Workers sample on CPU, one CPU each, wherever Ray has room; each
worker reports the Ray node it runs on (``node_ids``, ``last_stats["nodes"]``).

Several training ranks (``distributed.world_size`` > 1, or torchrun): ``workers`` is the run's
total (``rollout.workers``) and must be a multiple of the world size N; each rank's engine owns
``workers / N`` actors of its own (anonymous actors, so no names to collide), samples the rank's
own shard of the prompts through them, and pushes the rank's weights (the same on every rank:
DDP) to them after each update. Worker ``i`` of a rank whose round seed is ``s`` samples with
``s + i·N``: ``Ranks.seed`` made ``s`` = base·N + rank, so no two workers of a round share a seed
(``s + i`` at N = 1, as above). All ranks share one Ray: rank 0 connects or starts it as above and
posts its GCS address in the process group's key-value store (``Ranks.share``: not a collective,
so it works inside ``Ranks.main_first``), and every other rank connects to that address — a rank
on another node needs that node in the Ray cluster (``ray start --address``), since a Ray driver
talks to its own node's raylet. At ``close()`` the other ranks disconnect first and rank 0
shuts down the Ray it started only after they have (``Ranks.main_last``, at most ``timeout_s``).

The worker's engine: ``worker_engine`` names the engine each actor samples with, by the same
lookup as ``rollout.engine`` (``engines/factory.py``): ``hf`` (the default) or an import path
``package.module:function`` taking ``(model, tokenizer)`` (and ``precision`` when it takes it),
importable on every Ray node. Tests plug in an engine whose completions do not depend on which
worker or rank samples a prompt (``tests/integration/rl_ranks.py``).

Not yet: GPU placement of the workers, placement groups (Ray places each actor where a CPU is
free), one ``ray.put`` of the weights for all ranks (each rank puts its own, identical, copy).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import time
import warnings
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from posttrain.engines.base import Completion, SamplingParams, check_generate_call, sampling_seed
from posttrain.training.distributed import Ranks

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError
except ImportError as err:  # pragma: no cover - exercised only without ray installed
    raise ImportError("rollout.engine=ray needs Ray: pip install 'posttrain[ray]'") from err

__all__ = ["RayEngine", "split_contiguous"]

NAMESPACE = "posttrain"
AUTH_MODE = "RAY_AUTH_MODE"  # Ray's token authentication switch (an environment variable)
_engines_made = itertools.count()  # the n-th engine of this process: its keys in the ranks' store


class _Worker:
    """One engine replica: an HFEngine (or the ``worker_engine``) over its own copy of the policy
    (runs inside a Ray actor)."""

    def __init__(self, model: nn.Module, tokenizer: Any, precision, max_batch_size: int, index: int,
                 engine: str = "hf") -> None:
        torch.set_num_threads(1)
        self.index = index
        self.version = 0
        self.node_id = ray.get_runtime_context().get_node_id()
        if engine == "hf":
            from posttrain.engines.hf import HFEngine

            self.engine = HFEngine(model, tokenizer, max_batch_size=max_batch_size, precision=precision)
        else:
            from posttrain.engines.factory import build_engine

            self.engine = build_engine(engine, model, tokenizer, precision=precision)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams
                 ) -> tuple[list[list[Completion]], dict, int, str]:
        out = self.engine.generate(prompts, sampling)
        return out, dict(getattr(self.engine, "last_stats", {})), self.version, self.node_id

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> int:
        self.engine.load_weights(state)
        self.version = version
        return version

    def node(self) -> str:
        return self.node_id

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
        workers: number of replicas over all ranks (``rollout.workers``), >= 1 and a multiple of
            the world size; this rank's engine owns ``workers / world_size`` of them.
        timeout_s: seconds any remote call (construction, generate, load_weights) may take.
        precision: the run's resolved ``Precision``, under which every worker samples.
        max_batch_size: each worker's HFEngine batch size.
        worker_engine: the engine inside each worker: ``hf`` or an import path (module docstring).

    Attributes:
        last_stats: after each ``generate``: ``prompt_tokens`` and ``generated_tokens`` summed over
            the workers, ``seconds`` (wall clock, as the driver waited), ``weight_version``,
            ``workers`` used, ``restarts`` during the call and ``nodes`` (distinct Ray nodes they ran on).
        version: the weight version the workers hold (0 until the first ``load_weights``).
        node_ids: the Ray node id of each of this rank's workers (updated when one is replaced).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, workers: int = 1, timeout_s: float = 300.0,
                 precision=None, max_batch_size: int = 256, worker_engine: str = "hf") -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"RayEngine: workers (rollout.workers) must be an int >= 1, got {workers!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"RayEngine: timeout_s (rollout.worker_timeout_s) must be > 0, got {timeout_s!r}")
        self.ranks = Ranks.current()
        if workers % self.ranks.world_size:
            raise ValueError(f"RayEngine: workers (rollout.workers={workers}) must be a multiple of the world "
                             f"size ({self.ranks.world_size}): each rank owns rollout.workers / world size of them")
        _check_worker_engine(worker_engine)
        self.workers, self.timeout_s = workers // self.ranks.world_size, float(timeout_s)
        self.precision, self.max_batch_size, self.worker_engine = precision, max_batch_size, worker_engine
        self.vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        self.version = 0
        self.last_stats: dict[str, float] = {"prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0,
                                             "weight_version": 0}
        self._closed = False
        self._key = f"posttrain/ray-engine-{next(_engines_made)}"
        self._connected = _connect(self.ranks, self._key, num_cpus=workers)  # this engine called ray.init
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0)(_Worker)
        self._model_ref = ray.put(_cpu_copy(model))
        self._tokenizer_ref = ray.put(tokenizer)
        self._weights_ref = None  # the latest state dict in the object store (None: the initial model)
        self._actors = [self._new_actor(i) for i in range(self.workers)]
        try:
            self.node_ids = ray.get([actor.node.remote() for actor in self._actors], timeout=self.timeout_s)
        except (GetTimeoutError, RayActorError) as err:
            self._release()  # no waiting for the other ranks: they may never build theirs
            raise RuntimeError(f"RayEngine: the {self.workers} worker(s) did not start within "
                               f"{self.timeout_s:g} s (rollout.worker_timeout_s): {err}") from err

    # ------------------------------------------------------------------ protocol

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[list[Completion]]:
        """Sample ``sampling.n`` completions per prompt over the workers; see the module docstring."""
        prompts = check_generate_call("RayEngine", self._closed, prompt_ids, sampling, self.vocab_size)
        seed = sampling_seed(sampling)
        ranges = split_contiguous(len(prompts), self.workers)
        params = [_with_seed(sampling, seed + i * self.ranks.world_size) for i in range(len(ranges))]
        start = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        pending = [self._actors[i].generate.remote(prompts[lo:hi], params[i]) for i, (lo, hi) in enumerate(ranges)]
        results: list[list[Completion]] = []
        stats = {"prompt_tokens": 0, "generated_tokens": 0}
        restarts = 0
        for i, ((lo, hi), ref) in enumerate(zip(ranges, pending)):
            try:
                out, worker_stats, version, node = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except (GetTimeoutError, RayActorError) as err:
                restarts += 1
                out, worker_stats, version, node = self._retry(
                    i, err, "generate", lambda actor: actor.generate.remote(prompts[lo:hi], params[i]))
            if version != self.version:
                raise RuntimeError(f"RayEngine: worker {i} sampled with weight version {version}, "
                                   f"expected {self.version} (the weight sync failed)")
            self.node_ids[i] = node
            for local, group in enumerate(out):
                for completion in group:
                    completion.prompt_index = lo + local
                results.append(group)
            stats["prompt_tokens"] += worker_stats.get("prompt_tokens", 0)
            stats["generated_tokens"] += worker_stats.get("generated_tokens", 0)
        self.last_stats = {**stats, "seconds": time.perf_counter() - start, "weight_version": self.version,
                           "workers": len(ranges), "restarts": restarts,
                           "nodes": len(set(self.node_ids[:len(ranges)]))}
        return results

    def load_weights(self, source: nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Push ``source``'s weights to this rank's workers through the object store (one ``ray.put``)."""
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
                self.node_ids[i] = self._retry(i, err, "load_weights", lambda actor: actor.node.remote())

    def shares_weights(self, model: nn.Module) -> bool:
        """Never: the workers hold copies, so the sampler's log-probs are the update's old log-probs."""
        return False

    def close(self) -> None:
        """Kill this rank's workers; disconnect from the Ray this engine connected to, or shut down
        the one it started — over several ranks rank 0 does so only after every other rank has
        closed (at most ``timeout_s``, then with a warning); idempotent."""
        if not self._closed:
            self._release(wait_for_ranks=True)

    def _release(self, wait_for_ranks: bool = False) -> None:
        self._closed = True
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        if not self.ranks.is_main and self._connected:
            ray.shutdown()  # disconnect before rank 0 may stop the cluster
        if wait_for_ranks and not self.ranks.main_last(self._key + "/closed", self.timeout_s):
            warnings.warn(f"RayEngine: not every rank closed its engine within {self.timeout_s:g} s "
                          "(rollout.worker_timeout_s); shutting down Ray anyway", RuntimeWarning, stacklevel=3)
        if self.ranks.is_main and self._connected:
            ray.shutdown()

    # ------------------------------------------------------------------ workers

    def _new_actor(self, index: int):
        actor = self._actor_class.remote(self._model_ref, self._tokenizer_ref, self.precision,
                                         self.max_batch_size, index, self.worker_engine)
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


def _connect(ranks: Ranks, key: str, *, num_cpus: int) -> bool:
    """Make this process a driver of the run's one Ray; True when this call connected it (so
    ``close`` disconnects or, on the rank that started it, shuts it down). Rank 0 (or the single
    process) uses a Ray already initialised here, else joins ``RAY_ADDRESS``, else starts a local
    Ray with ``num_cpus`` (every rank's workers); over several ranks it posts the GCS address,
    and the other ranks connect to it."""
    connected = False
    if ranks.is_main and not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], namespace=NAMESPACE, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, namespace=NAMESPACE)
        connected = True
    if not ranks.distributed:
        return connected
    # With the address goes Ray's authentication mode: a local Ray that rank 0 starts can turn
    # token authentication on (Ray 2.60 does by default) in rank 0's environment only, and the
    # other ranks, spawned before, would be refused. The token itself is not passed on: Ray reads
    # it from its file (~/.ray/auth_token) or RAY_AUTH_TOKEN on each node.
    mine = json.dumps({"address": ray.get_runtime_context().gcs_address, "auth_mode": os.environ.get(AUTH_MODE)}
                      ) if ranks.is_main else None
    shared = json.loads(ranks.share(key + "/address", mine))
    if not ranks.is_main and not ray.is_initialized():
        if shared["auth_mode"] is not None and AUTH_MODE not in os.environ:
            _set_auth_mode(shared["auth_mode"])
        ray.init(address=shared["address"], namespace=NAMESPACE, log_to_driver=False)
        connected = True
    return connected


def _set_auth_mode(mode: str) -> None:
    """Set RAY_AUTH_MODE in this process after Ray was imported, as Ray does when it enables token
    authentication for a local cluster: the environment variable, then its cached config re-read."""
    os.environ[AUTH_MODE] = mode
    from ray._raylet import Config  # no public way: ray.init reads the mode from this cache

    Config.initialize("")


def _check_worker_engine(name: Any) -> None:
    """``worker_engine`` must name an engine (``rollout.engine``'s lookup) that samples in a CPU
    actor: not ``ray`` itself, nor ``vllm`` (the workers get no GPU yet)."""
    from posttrain.engines.factory import ENGINES
    from posttrain.import_path import lookup

    if name in ("ray", "vllm") or not isinstance(name, str):
        raise ValueError(f"RayEngine: worker_engine must be 'hf' or an import path 'pkg.module:function', "
                         f"got {name!r}")
    lookup(ENGINES, name, "rollout worker engine")  # fails here, not in every worker, when it does not resolve


def _with_seed(sampling: SamplingParams, seed: int) -> SamplingParams:
    return dataclasses.replace(sampling, seed=seed)


def _cpu_copy(model: nn.Module) -> nn.Module:
    """The module as it will be serialised for the workers: itself when already on CPU."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()
