"""RayRewardRunner: `reward.workers` — a `RewardRunner` whose batches are scored by N Ray actors.

Code and math verification are CPU-bound; one process scores a batch one item after another. Here
one ``__call__``:

1. splits the batch into ``workers`` contiguous chunks (sizes differing by at most one,
   `split_contiguous`, as the Ray engine splits prompts);
2. scores chunk ``i`` in actor ``i``, which holds a `RewardRunner` of its own over the same
   functions — resolved inside the actor by name (`posttrain.rewards.resolve_reward`), so only
   names, weights and the batch cross to it — with the same ``weights``, ``on_error`` and
   ``timeout_s`` (so a plain function still runs in a `WorkerPool` process inside the actor);
3. puts each function's scores back in batch order and adds the chunks' counts (`RewardStats.add`),
   and from there `RewardRunner.__call__` goes on as for one process: the weighted total, the
   lifetime `totals`, the first-failure warning. The report equals the in-process runner's, counts
   included (``first_error``: the first failing chunk's, i.e. the first failing item's).

Deadlines: every ``ray.get`` has one. A chunk of ``n`` items under ``f`` functions may take
``n × f × timeout_s + margin_s`` seconds from when it was sent: each call may use its whole
``timeout_s``, and ``margin_s`` (default 60 s) covers what is not a reward call — the batch's
transfer, the pool process that each timeout inside the actor restarts (~0.1-1 s each) and a reward
with a ``batch`` method that enforces its own, shorter, limits. Actors are built, and waited for,
before the first batch (``start_timeout_s``), so a slow start never eats a batch's deadline.

Faults: an actor that dies (``RayActorError``) or misses its chunk's deadline is reported (a
``RuntimeWarning`` with Ray's error text, which names the exit or the timeout), killed, replaced by a
fresh actor, and its chunk retried once; a second failure raises a ``RuntimeError`` naming the
worker and both errors (that actor is replaced too: a stalled one would keep its CPU). ``restarts``
counts the replacements, and `summary` mentions them. An
exception raised by the scoring itself is not a fault of the worker and is raised as it is: with
``on_error="raise"``, the `RewardError` (same type and message) that one process would raise.

The driver holds the functions too (``rewards``, resolved here, nothing started): the recipes read
them (the columns a reward needs, a reward model's eval mode), and an evaluation runner may share
them and score in this process. A reward model is therefore loaded once here and once per actor.

Ray: as `posttrain.engines.ray_engine` — a Ray already initialised is used; else the cluster at
``RAY_ADDRESS``; else a local Ray (``num_cpus``: default ``workers``; no dashboard, worker logs not
forwarded, namespace ``posttrain``), which `close` shuts down again. Each actor takes one CPU.

Not yet: several training ranks (``distributed.world_size`` > 1) — each would need the engine's
shared-Ray handshake; the runner refuses to start there.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

from posttrain.rewards import resolve_reward  # the engine module is imported where used: ~1 s an actor
from posttrain.verifiers.combine import DEFAULT_TIMEOUT_S, OnError, RewardRunner, RewardStats

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
except ImportError as err:  # pragma: no cover - exercised only without ray installed
    raise ImportError("reward.workers needs Ray: pip install 'posttrain[ray]'") from err

__all__ = ["RayRewardRunner"]

DEFAULT_MARGIN_S = 60.0


class _Scorer:
    """One reward worker: a `RewardRunner` over the named rewards (runs inside a Ray actor)."""

    def __init__(self, names: list[str], weights: dict[str, float], on_error: OnError,
                 timeout_s: float | None) -> None:
        self.runner = RewardRunner({name: resolve_reward(name) for name in names}, weights, on_error=on_error,
                                   timeout_s=timeout_s)

    def score(self, prompts: list, completions: list[str], rows: list[dict]
              ) -> tuple[dict[str, list[float | None]], dict[str, RewardStats]]:
        report = self.runner(prompts, completions, rows)
        return report.per_reward, report.stats

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.runner.close()


class RayRewardRunner(RewardRunner):
    """A `RewardRunner` over reward names that scores each batch in ``workers`` Ray actors (module doc).

    Args:
        names: reward names or import paths (``reward.functions``), resolved here and in each actor.
        weights: name -> weight; default 1.0 each.
        workers: actors (``reward.workers``), >= 1.
        on_error, timeout_s, warn: as in `RewardRunner`; ``timeout_s`` applies inside the actors and
            sets the deadlines, so it must be set (default `DEFAULT_TIMEOUT_S`).
        margin_s: seconds added to each chunk's deadline (module doc).
        start_timeout_s: seconds an actor may take to start (import, resolve its rewards).
        num_cpus: CPUs of the local Ray this runner starts when none is running (default ``workers``).
    """

    def __init__(self, names: Sequence[str], weights: Mapping[str, float] | None = None, *, workers: int,
                 on_error: OnError = "zero", timeout_s: float = DEFAULT_TIMEOUT_S,
                 warn: Callable[[str], None] | None = None, margin_s: float = DEFAULT_MARGIN_S,
                 start_timeout_s: float = 300.0, num_cpus: int | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"RayRewardRunner: workers (reward.workers) must be an int >= 1, got {workers!r}")
        if timeout_s is None:
            raise ValueError("RayRewardRunner: timeout_s must be set: it bounds every remote call")
        from posttrain.training.distributed import Ranks

        if Ranks.current().distributed:
            raise ValueError("reward.workers >= 1 runs in one training process for now; with several ranks "
                             "(distributed.world_size > 1) set reward.workers=0")
        super().__init__({name: resolve_reward(name) for name in names}, weights, on_error=on_error,
                         timeout_s=timeout_s, warn=warn)
        self.names, self.workers = list(names), workers
        self.timeout_s, self.margin_s, self.start_timeout_s = float(timeout_s), float(margin_s), float(start_timeout_s)
        self.restarts = 0
        self._actors: list = []
        self._started_ray = False
        from posttrain.engines.ray_engine import NAMESPACE

        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init(address=os.environ["RAY_ADDRESS"], namespace=NAMESPACE, log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus or workers, include_dashboard=False, log_to_driver=False,
                         namespace=NAMESPACE)
            self._started_ray = True
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0)(_Scorer)
        self._actor_args = (self.names, self.weights, on_error, self.timeout_s)  # a replacement's too
        try:
            self._actors = [self._actor_class.remote(*self._actor_args) for _ in range(workers)]
            ray.get([actor.pid.remote() for actor in self._actors], timeout=self.start_timeout_s)
        except (GetTimeoutError, RayActorError, RayTaskError) as err:
            self.close()
            raise RuntimeError(f"RayRewardRunner: the {workers} reward worker(s) did not start within "
                               f"{self.start_timeout_s:g} s: {err}") from err

    def deadline_s(self, items: int) -> float:
        """Seconds a chunk of `items` items may take: items × functions × timeout_s + margin_s."""
        return items * len(self.rewards) * self.timeout_s + self.margin_s

    def _score_each(self, prompts: Sequence[Any], completions: Sequence[str], rows: list[Mapping[str, Any]]
                    ) -> tuple[dict[str, list[float | None]], dict[str, RewardStats]]:
        from posttrain.engines.ray_engine import split_contiguous

        if not self._actors:
            raise RuntimeError("RayRewardRunner: the runner is closed")
        per_reward = {name: [] for name in self.rewards}
        stats = {name: RewardStats() for name in self.rewards}
        if not completions:
            return per_reward, stats
        chunks = [(list(prompts[lo:hi]), list(completions[lo:hi]), [dict(r) for r in rows[lo:hi]])
                  for lo, hi in split_contiguous(len(completions), self.workers)]
        sent = time.monotonic()
        pending = [self._actors[i].score.remote(*chunk) for i, chunk in enumerate(chunks)]
        for i, (chunk, ref) in enumerate(zip(chunks, pending)):
            deadline = sent + self.deadline_s(len(chunk[1]))
            try:
                scores, counts = self._get(ref, max(0.0, deadline - time.monotonic()))
            except (GetTimeoutError, RayActorError) as err:
                scores, counts = self._retry(i, chunk, err)
            for name in self.rewards:
                per_reward[name].extend(scores[name])
                stats[name].add(counts[name])
        return per_reward, stats

    @staticmethod
    def _get(ref, timeout: float):
        try:
            return ray.get(ref, timeout=timeout)
        except RayTaskError as err:  # the scoring raised (on_error="raise"): the exception itself
            raise err.cause from None

    def _retry(self, index: int, chunk: tuple, err: Exception):
        """Replace worker `index` after `err` and score its chunk on the new one, once."""
        warnings.warn(f"RayRewardRunner: reward worker {index} failed on a chunk of {len(chunk[1])} items "
                      f"({type(err).__name__}: {err}); restarting it and retrying the chunk once",
                      RuntimeWarning, stacklevel=4)
        self._replace(index)
        try:
            ray.get(self._actors[index].pid.remote(), timeout=self.start_timeout_s)
            return self._get(self._actors[index].score.remote(*chunk), self.deadline_s(len(chunk[1])))
        except (GetTimeoutError, RayActorError) as again:
            self._replace(index)  # a stalled actor would hold its CPU; the next batch gets a fresh one
            raise RuntimeError(f"RayRewardRunner: reward worker {index} failed on a chunk of {len(chunk[1])} items "
                               f"({type(err).__name__}: {err}) and again after a restart "
                               f"({type(again).__name__}: {again}); the chunk's deadline is "
                               f"{self.deadline_s(len(chunk[1])):g} s (items × functions × reward.timeout_s "
                               f"{self.timeout_s:g} s + {self.margin_s:g} s)") from again

    def _replace(self, index: int) -> None:
        """Kill worker `index` (dead, stalled or hung) and start a fresh one in its place."""
        self.restarts += 1
        ray.kill(self._actors[index], no_restart=True)
        self._actors[index] = self._actor_class.remote(*self._actor_args)

    def summary(self) -> str | None:
        line = super().summary()
        if not self.restarts:
            return line
        restarts = f"reward workers restarted {self.restarts} time(s)"
        return f"{line}; {restarts}" if line else restarts

    def close(self) -> None:
        """Stop the actors (and this process's reward pools); shut down the Ray this runner started.
        Idempotent."""
        actors, self._actors = self._actors, []
        if actors:
            try:
                ray.get([actor.close.remote() for actor in actors], timeout=5)
            except Exception:  # noqa: BLE001 - a dead or hung actor is killed below anyway
                pass
            for actor in actors:
                ray.kill(actor, no_restart=True)
        super().close()
        if self._started_ray:
            self._started_ray = False
            ray.shutdown()
