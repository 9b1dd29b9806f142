"""Data-parallel training over N ranks with torch.distributed: gloo on CPU, NCCL on GPUs, one code path.

How a run gets its ranks (`launch`):

- `distributed.world_size: N` in the config: posttrain spawns N local ranks itself
  (`torch.multiprocessing`, spawn), which meet through a file store in a temporary directory (no
  port to choose). This is the CPU path: `posttrain rl cfg.yaml distributed.world_size=2`.
- Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment)
  every process already is a rank and joins through `env://`; `distributed.world_size` must then
  be 1 (the default) or the launcher's world size. On GPUs each rank takes cuda:LOCAL_RANK.
- World size 1 never touches torch.distributed: `Ranks()` is the single process, and every
  method below is then the identity (the single-process run is unchanged, bit for bit).

What the RL recipe (`recipes/rl/grpo.py`) shards and what it keeps global:

- Prompts, by whole groups: rank r samples the r-th contiguous block of each round's prompts
  (`Ranks.shard`) with all G samples of each, so group baselines need no communication. Group
  ids stay global (round offset + the prompt's position in the step's whole list).
- The sampling seed of a round is the single-process seed × world size + rank (`Ranks.seed`):
  distinct per rank, and the single-process seed itself at world size 1.
- Ray rollout workers (`rollout.engine: ray`): `rollout.workers` is the run's, a multiple of the
  world size; each rank's engine owns its share of the workers, samples its prompts through
  them and pushes its weights to them. The ranks share one Ray, whose address rank 0 posts in
  the process group's store (`Ranks.share`); rank 0 stops the Ray it started only once the
  others are done with it (`Ranks.main_last`). `engines/ray_engine.py` has the details.
- Loss normalisers: the step's valid-token and sequence counts, summed over ranks once per step
  (`algorithms.aggregation.loss_counts` with `Ranks.sum`), so every micro-batch of every rank
  divides by the same numbers.
- Gradients: DDP (`Ranks.wrap`) with a comm hook that *sums* (each rank's loss already divides
  by the global count, so the sum over ranks is the single-process gradient over the union
  batch), and `no_sync` on all but the last micro-batch of an update (`Ranks.gradient_sync`).
  That last backward is the update's only gradient collective, so ranks may hold different
  numbers of micro-batches; a rank with none (DAPO kept none of its groups) runs one
  zero-weight forward and backward (`Ranks.join_backward`) so the all-reduce never waits on it.
  A step with no sequence on any rank skips the update on every rank alike.
- Metrics: the update's sums are all-reduced; the rollout metrics are computed from every rank's
  rollouts (`Ranks.gather`), so rank 0 logs the step's figures, not its share's.
- Compute: each rank's ledger counts its own share; `training.loop.TrainingLoop` logs,
  checkpoints and summarises the run's (`ComputeLedger.merged`: tokens and FLOPs summed, a
  stage's seconds the slowest rank's), so `compute/*` are the whole run's on any N.
- Side effects on rank 0 only: the run directory, metrics.jsonl, rollouts.jsonl (rank 0's
  first rollouts, which are the single process's first ones), TensorBoard, evaluation,
  checkpoints, the final model, plots, summary.json. Other ranks hold a `FollowerRun`: rank 0's
  directory and the checkpoint it resumes from, and nothing written or printed. On resume every
  rank loads that checkpoint (weights, optimizer, scheduler, and rank 0's RNG state: sampling
  seeds are explicit, so no rank's rollouts depend on it).

Batch units: `rollout.prompts_per_step` is the whole step's (a multiple of the world size),
`micro_batch_size` is per rank (it must divide each rank's prompts × samples).

Sharded parameters (`distributed.strategy: fsdp`): `Ranks.wrap` applies FSDP2 to each decoder
layer and the root in place, with sum reductions (`_shard`), so the same gradient arithmetic
holds. `gradient_sync` becomes `set_requires_gradient_sync`; since FSDP gathers in every forward
and backward, `Ranks.joins` pads every rank to the busiest rank's micro-batch count with zero-weight
ones. Generation, the old log-probs and evaluation run inside `Ranks.full_weights` (every unit
unsharded, resharding off), so ranks running different numbers of forwards gather nothing.
The reference model is a plain copy made before sharding. Checkpoints and the final model are
gathered to rank 0 (`Ranks.full_state`, torch.distributed.checkpoint.state_dict, full state dict
on CPU) in the DDP format; every rank loads them into its shards (`Ranks.load_full_state`).

Why a summing comm hook rather than scaling each loss by the world size: the loss each rank
logs and checks stays its true share, and nothing is multiplied and divided again (exact for
any N, not only powers of two).

Not yet: PPO (the critic loop), PivotRL with FSDP, FSDP with rollout workers outside the process (Ray,
vLLM) or with LoRA, sharded (torch.distributed.checkpoint) checkpoints for models too large to
gather on rank 0, ranks launched by Ray (the ranks drive Ray rollout workers, but Ray does not
start the ranks), a sharded reference model,
sharded evaluation (rank 0 evaluates alone while the others wait at their next collective, so an
evaluation must finish within torch.distributed's timeout, 30 minutes by default) and the
other ranks' reward-error lines in summary.json (their counts are in the per-step `rewards/*`
metrics). NCCL takes the same code path but has not been run here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from rich.console import Console
from torch import nn

from posttrain.config import ConfigError, DistributedConfig
from posttrain.run import Run


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run; `Ranks()` is the single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"  # `distributed.strategy`: ddp | fsdp

    @classmethod
    def current(cls, strategy: str = "ddp") -> "Ranks":
        """The ranks of the initialised process group, else the single process."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        rank = dist.get_rank()
        return cls(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)), strategy)

    @property
    def sharded(self) -> bool:
        """Whether the parameters are sharded over the ranks (FSDP2)."""
        return self.distributed and self.strategy == "fsdp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------------------ data

    def shard(self, items: Sequence) -> list:
        """This rank's contiguous block of `items` (their count must divide by the world size)."""
        if len(items) % self.world_size:
            raise ValueError(f"{len(items)} items do not split evenly over {self.world_size} ranks")
        size = len(items) // self.world_size
        return list(items[self.rank * size:(self.rank + 1) * size])

    def seed(self, base: int) -> int:
        """A seed distinct per rank for the same `base`; `base` itself at world size 1."""
        return base * self.world_size + self.rank

    # ----------------------------------------------------------------------- collectives

    def _device(self) -> torch.device:
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def sum(self, values: Sequence[float]) -> list[float]:
        """`values` summed element-wise over the ranks (float64), as a list on every rank."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj: Any) -> list:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` (picklable) on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    # The two below go through the process group's key-value store (the file store of spawned
    # ranks, torchrun's TCP store), not a collective: no rank is matched with another's call, so
    # they work inside `main_first` (where a broadcast would wait on ranks held at its barrier)
    # and on a path only some ranks take. Every key is set once per run.

    def share(self, key: str, value: str | None) -> str:
        """Rank 0's `value` (a string) on every rank: rank 0 posts it and goes on, the others
        wait for it (up to the process group's timeout). One process: `value`."""
        if not self.distributed:
            return value
        store = _store()
        if self.is_main:
            store.set(key, value)
            return value
        return store.get(key).decode("utf-8")

    def main_last(self, key: str, timeout_s: float) -> bool:
        """Rank 0 passes this point only after every other rank has reached it, or after
        `timeout_s` (then False); the others pass at once. For what rank 0 must tear down only
        when the others are done with it (the Ray it started)."""
        if not self.distributed:
            return True
        store = _store()
        if not self.is_main:
            store.set(f"{key}/{self.rank}", "1")
            return True
        try:
            store.wait([f"{key}/{rank}" for rank in range(1, self.world_size)], timedelta(seconds=timeout_s))
        except RuntimeError:  # torch's DistStoreError on the timeout
            return False
        return True

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (building what is cached on disk: the tiny model, task
        files), then the others, which then only read it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    # ------------------------------------------------------------------------- gradients

    def wrap(self, model: nn.Module) -> nn.Module:
        """What the update's forward passes run through: `model` in one process; over several
        ranks a DDP wrapper whose gradient all-reduce sums (see the module docstring), or with
        `strategy: fsdp` `model` itself, sharded in place (`_shard`). Buffers are not
        re-broadcast in the forward: that would be a collective in every forward, and ranks may
        run different numbers of them (the causal LM's buffers are constants)."""
        if not self.distributed:
            return model
        if self.sharded:
            return _shard(model)
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      forward_sync_buffers=False)
        ddp.register_comm_hook(None, _sum_gradients)
        return ddp

    @contextlib.contextmanager
    def gradient_sync(self, trainer: nn.Module, sync: bool) -> Iterator[None]:
        """The block's backward reduces the accumulated gradients over the ranks when `sync` (the
        last micro-batch of an update), else only accumulates them locally (DDP's `no_sync`,
        FSDP2's `set_requires_gradient_sync(False)`)."""
        if self.sharded:
            trainer.set_requires_gradient_sync(sync)
            yield
            return
        if sync or not hasattr(trainer, "no_sync"):
            yield
            return
        with trainer.no_sync():
            yield

    def joins(self, micro_batches: int) -> int:
        """How many zero-weight micro-batches (`join_backward`) this rank runs after its own
        `micro_batches` of an update, so that the ranks' gradient collectives pair up: DDP has one,
        in the last backward, so only a rank with none joins (once); FSDP all-gathers in every
        forward and backward, so every rank runs as many as the busiest one (a collective)."""
        if not self.sharded:
            return int(self.distributed and micro_batches == 0)
        return max(self.gather(micro_batches)) - micro_batches

    def join_backward(self, trainer: nn.Module, token_id: int = 0) -> None:
        """A zero-weight forward and backward through `trainer` (one two-token row): this rank
        adds zero gradients to the update's all-reduce it has no sequences for."""
        device = next(trainer.parameters()).device
        ids = torch.full((1, 2), token_id, dtype=torch.long, device=device)
        logits = trainer(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        (logits.float().sum() * 0.0).backward()

    # ------------------------------------------------------------------ sharded parameters

    @contextlib.contextmanager
    def full_weights(self, model: nn.Module) -> Iterator[None]:
        """Every FSDP unit of `model` unsharded for the block (every rank enters it: the
        all-gathers), so its forwards run no collective: generation, where ranks sample
        different numbers of tokens, and rank 0's evaluation. The identity unless sharded."""
        units = _units(model) if self.sharded else []
        if not units:
            yield
            return
        for unit in units:
            unit.unshard()
        units[0].set_reshard_after_forward(False)  # recursive: no unit frees its weights meanwhile
        try:
            yield
        finally:
            units[0].set_reshard_after_forward(True)
            for unit in units:
                unit.reshard()

    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple:
        """Sharded: the whole model's state dict and the optimizer's (in `optimizer.state_dict()`'s
        own format, so a checkpoint is the DDP one), gathered to rank 0's CPU (empty on the other
        ranks; every rank calls it). Not sharded: (None, None), the modules save themselves."""
        if not self.sharded:
            return None, None
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        if optimizer is None:
            return weights, None
        state = get_optimizer_state_dict(model, optimizer, options=options)
        if not self.is_main:
            return weights, None
        ids = {name: i for i, name in enumerate(_optimizer_names(model, optimizer))}
        return weights, {"state": {ids[name]: value for name, value in state["state"].items()},
                         "param_groups": [{**group, "params": [ids[name] for name in group["params"]]}
                                          for group in state["param_groups"]]}

    def load_full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                        weights: dict[str, torch.Tensor], optimizer_state: dict | None) -> None:
        """`full_state`'s inverse on every rank: each keeps its shard of the whole `weights` and
        `optimizer_state` (`optimizer.state_dict()`'s format). Tied weights may be missing."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, weights, options=options)
        if optimizer is not None and optimizer_state is not None:
            names = _optimizer_names(model, optimizer)
            state = {"state": {names[i]: value for i, value in optimizer_state["state"].items()},
                     "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                      for group in optimizer_state["param_groups"]]}
            set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def save_gathered(model: nn.Module, weights: dict[str, torch.Tensor], tokenizer: Any, out_dir: Path) -> Path:
    """A sharded `model` saved as `models.loading.save_model` saves a whole one (standard HF
    format), from its gathered `weights` (`Ranks.full_state`, rank 0)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=dict(weights))  # a copy: HF pops from it
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _shard(model: nn.Module) -> nn.Module:
    """FSDP2 in place: each decoder layer (`model.model.layers`) a unit, the root the rest
    (embeddings, tied head, final norm). Reductions are plain sums: every rank's loss already
    divides by the global count, as with DDP's summing hook. FSDP2 averages by default, and a
    divide factor of 1 alone becomes ReduceOp.PREMUL_SUM(1.0), which gloo lacks (as it lacks
    AVG); with sum-only comms forced it is ReduceOp.SUM and no division (torch 2.13:
    `_fsdp_collectives._get_gradient_divide_factors`). The divide factor is per unit."""
    from torch.distributed.fsdp import fully_shard

    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"distributed.strategy=fsdp shards decoder layers at model.model.layers; "
                         f"{type(model).__name__} has none")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    for unit in _units(model):
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return model


def _units(model: nn.Module) -> list:
    """The FSDP units of `model`, root first."""
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]


def _optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter names in `optimizer.state_dict()`'s id order (a tied weight: its first name)."""
    names = {}
    for name, param in model.named_parameters():
        names.setdefault(id(param), name)
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def _store() -> "torch.distributed.Store":
    """The default process group's key-value store (torch has no public accessor for it)."""
    return torch.distributed.distributed_c10d._get_default_store()


def _sum_gradients(state, bucket):  # no annotations: DDP checks them, and these would be strings
    """A DDP comm hook: all-reduce SUM (DDP's default hook averages over the ranks)."""
    work = torch.distributed.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


# ----------------------------------------------------------------------------------- run directory


class FollowerRun(Run):
    """A rank > 0's view of the run: rank 0's directory, config and resume checkpoint (every
    rank loads it), `check_finite` (every rank stops alike); it writes and prints nothing."""

    is_main = False

    def __init__(self, run_dir: Path, config: dict[str, Any], resume_checkpoint: Path | None) -> None:
        from posttrain import checkpoint as ckpt

        self.dir = run_dir
        self.name = run_dir.name
        self.config = config
        self.report_to = ()
        self.console = Console(quiet=True, force_terminal=False)
        self.resume_checkpoint = resume_checkpoint
        self.resume_step = ckpt.checkpoint_step(resume_checkpoint) if resume_checkpoint else None
        self.started = time.time()
        self._closed = False

    def log(self, step: int, metrics: Any) -> None:
        pass

    def log_rollouts(self, step: int, records: Any) -> None:
        pass

    def save_checkpoint(self, step: int, **kwargs: Any) -> Path:
        raise RuntimeError("only rank 0 writes checkpoints")

    def write_summary(self, summary: Any) -> Path:
        return self.dir / "summary.json"

    def close(self, *, failed: bool = False) -> None:
        self._closed = True


def share_run(ranks: Ranks, start: Callable[[], Run]) -> Run:
    """Rank 0 starts (or resumes) the run directory with `start()`; every other rank waits for it
    and gets a `FollowerRun` of the same directory and resume checkpoint. One process: `start()`."""
    if not ranks.distributed:
        return start()
    if ranks.is_main:
        run = start()
        ranks.broadcast((str(run.dir), run.config, str(run.resume_checkpoint or "")))
        return run
    run_dir, config, resume = ranks.broadcast(None)
    return FollowerRun(Path(run_dir), config, Path(resume) if resume else None)


# ------------------------------------------------------------------------------------------ launch


def launcher_world_size() -> int:
    """WORLD_SIZE of a launcher such as torchrun (1 when none set it)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def world_size(cfg: DistributedConfig) -> int:
    """The run's world size: the launcher's when one started this process, else the config's."""
    launched = launcher_world_size()
    if launched > 1 and cfg.world_size not in (1, launched):
        raise ConfigError(f"distributed.world_size={cfg.world_size} but the launcher (torchrun) started "
                          f"{launched} ranks: set it to 1 or {launched}")
    return launched if launched > 1 else cfg.world_size


def launch(entry: Callable[[Any], dict], cfg: Any) -> dict:
    """Run `entry(cfg)` (a recipe's `train`) on every rank the config asks for; returns rank 0's
    summary (read back from its summary.json when posttrain spawned the ranks).

    `entry` and `cfg` must be picklable (a module-level function, a config dataclass) for the
    spawned ranks. In a process already in a group, or at world size 1, it is just `entry(cfg)`."""
    dist_cfg: DistributedConfig = cfg.distributed
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return entry(cfg)
    if launcher_world_size() > 1:
        world_size(dist_cfg)  # checks the config agrees
        backend = _backend(cfg, int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend, init_method="env://")
        try:
            return entry(cfg)
        finally:
            torch.distributed.destroy_process_group()
    if dist_cfg.world_size == 1:
        return entry(cfg)
    import torch.multiprocessing as mp

    store = Path(tempfile.mkdtemp(prefix="posttrain-ranks-"))
    try:
        mp.start_processes(_rank_main, args=(entry, cfg, dist_cfg.world_size, str(store / "rendezvous")),
                           nprocs=dist_cfg.world_size, join=True, start_method="spawn")
    finally:
        shutil.rmtree(store, ignore_errors=True)
    summary = Path(cfg.run.output_dir) / cfg.run.name / "summary.json"
    return json.loads(summary.read_text(encoding="utf-8"))


def _backend(cfg: Any, local_rank: int) -> str:
    """`distributed.backend`; auto: NCCL when the model goes to a GPU, else gloo. NCCL ranks take
    cuda:LOCAL_RANK as their current device (where `model.device: auto` or `cuda` then puts the model)."""
    from posttrain.models.loading import resolve_device

    backend = cfg.distributed.backend
    if backend == "auto":
        backend = "nccl" if resolve_device(cfg.model.device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    return backend


def _rank_main(rank: int, entry: Callable[[Any], dict], cfg: Any, world: int, store: str) -> None:
    """One spawned rank: the environment torchrun would give it (reward workers and anything
    else reading RANK see it too), its share of the CPU's threads unless OMP_NUM_THREADS says
    otherwise, the process group, the recipe, the group torn down."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    if "OMP_NUM_THREADS" not in os.environ:  # N ranks with every core each would oversubscribe the CPU
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    backend = _backend(cfg, rank)
    torch.distributed.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        entry(cfg)
    finally:
        torch.distributed.destroy_process_group()
