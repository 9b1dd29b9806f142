"""Combining reward functions, and calling them over a batch without hiding failures.

A reward function is a plain callable ``(prompt, completion, **row) -> float | None``; None
means "not scorable". Trainers call rewards through a `RewardRunner`, which

* calls each named function over the batch -- through its ``batch(prompts, completions, rows)
  -> list[Outcome]`` method when it has one (`MathVerifier`, `CodeVerifier`, `math_reward`,
  `code_reward`), else one item at a time;
* scores an item whose function raised, timed out or returned something that is not a finite
  number according to ``on_error``: "zero" (default: 0.0), "none" (not scorable) or "raise";
* COUNTS every such event per function (and keeps the first traceback), so that the caller's
  metrics show a broken reward instead of a silent run of zeros.

Timeouts (``timeout_s``) run a plain function in a `WorkerPool` process: the only way to stop
a hung Python call. The price: the function must be picklable (defined at module level), each
item costs a pickle round trip (~0.1 ms), the pool's first use costs a process start (~0.1-1 s),
and every timeout costs a restart. Without ``timeout_s`` functions run in this process at no
extra cost. Functions with a ``batch`` method enforce their own timeouts.

The recipes' configs (``reward.timeout_s``, ``eval.timeout_s``) default to
`DEFAULT_TIMEOUT_S` = 30 s, so a hung reward costs at most that per item instead of the run.
Why 30 s: a legitimate call of the built-in rewards takes microseconds (arithmetic, format) to a
few seconds (math-verify on a hard expression, which `MathVerifier` itself stops after 5 s; the
`code` reward, whose sandbox kills its own process group after 10 s); 30 s stays well above all
of them -- above the sandbox's limit in particular, so its own clean-up always runs first -- and
still ends a hang. `RewardRunner` itself defaults to no timeout (in-process), so that library
users may pass lambdas and closures.

A runner given ``warn`` calls it once, with the counts and the first traceback, the first time a
reward raises, times out or returns a non-number; `RewardRunner.summary` gives the one-line
account for the end of a run.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

from posttrain.verifiers.workers import Outcome, WorkerPool

RewardFn = Callable[..., "float | None"]
OnError = Literal["zero", "none", "raise"]
_RESERVED = ("prompt", "completion")
# Seconds per reward call that the recipes' configs default to (see the module doc for why).
DEFAULT_TIMEOUT_S = 30.0


class RewardError(RuntimeError):
    """A reward function failed and ``on_error="raise"`` was asked for."""


def _columns(row: Mapping[str, Any]) -> dict[str, Any]:
    """Dataset columns to pass as keywords: a column named 'prompt' or 'completion' would
    collide with the positional arguments, so it is left out."""
    return {k: v for k, v in row.items() if k not in _RESERVED}


def _as_score(value: Any) -> float | None:
    """Check a reward's return value: None, or a finite real number (bools count as 0/1)."""
    if value is None:
        return None
    try:  # accepts bool, int, float and one-element numpy / torch values
        if isinstance(value, (str, bytes)):
            raise TypeError
        score = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"reward returned {value!r} ({type(value).__name__}); expected a float or None") from None
    if not math.isfinite(score):
        raise ValueError(f"reward returned {score}; rewards must be finite")
    return score


def weighted_sum(rewards: Mapping[str, RewardFn], weights: Mapping[str, float]) -> RewardFn:
    """``sum(weights[k] * rewards[k](...))`` as one reward function; None if any part is None.

    No error handling here: use `RewardRunner` to count failures per component.
    """
    _check_names(rewards, weights)
    parts = [(name, rewards[name], float(weights[name])) for name in rewards]

    def combined(prompt: Any, completion: str, **row: Any) -> float | None:
        total = 0.0
        for _name, fn, weight in parts:
            score = _as_score(fn(prompt, completion, **row))
            if score is None:
                return None
            total += weight * score
        return total

    combined.__name__ = "weighted_sum_" + "_".join(rewards)
    return combined


def _check_names(rewards: Mapping[str, RewardFn], weights: Mapping[str, float]) -> None:
    if not rewards:
        raise ValueError("no reward functions given")
    missing, extra = set(rewards) - set(weights), set(weights) - set(rewards)
    if missing or extra:
        raise ValueError(f"weights must name exactly the rewards {sorted(rewards)}: "
                         f"missing {sorted(missing)}, unknown {sorted(extra)}")
    for name, fn in rewards.items():
        if not callable(fn):
            raise TypeError(f"reward {name!r} is {fn!r}, which is not callable")


@dataclass
class RewardStats:
    """Counts for one reward function.

    Attributes:
        calls: items scored.
        raised: items whose call raised (or whose worker died).
        timed_out: items stopped by the timeout.
        invalid: items whose call returned something that is not a finite number or None
            (NaN, inf, a string, ...).
        none: items the function itself called not scorable (returned None).
        first_error: the first traceback or reason seen, for the log.
    """

    calls: int = 0
    raised: int = 0
    timed_out: int = 0
    invalid: int = 0
    none: int = 0
    first_error: str | None = None

    @property
    def failed(self) -> int:
        """Items scored per ``on_error``: raised, timed out or invalid."""
        return self.raised + self.timed_out + self.invalid

    def add(self, other: "RewardStats") -> None:
        self.calls += other.calls
        self.raised += other.raised
        self.timed_out += other.timed_out
        self.invalid += other.invalid
        self.none += other.none
        self.first_error = self.first_error or other.first_error

    def describe(self) -> str:
        """E.g. "3 raised, 1 timed out, 2 invalid (NaN, inf or not a number) of 640 calls"."""
        parts = [f"{n} {label}" for n, label in ((self.raised, "raised"), (self.timed_out, "timed out"),
                                                 (self.invalid, "invalid (NaN, inf or not a number)")) if n]
        return f"{', '.join(parts) or 'no failures'} of {self.calls} calls"


class SafeReward:
    """A reward function that never crashes the caller; see `safe_reward`."""

    def __init__(self, fn: RewardFn, *, on_error: OnError = "zero", timeout_s: float | None = None,
                 name: str | None = None, mp_context: str = "spawn") -> None:
        if on_error not in ("zero", "none", "raise"):
            raise ValueError(f"on_error must be 'zero', 'none' or 'raise', got {on_error!r}")
        if not callable(fn):
            raise TypeError(f"reward {name or fn!r} is not callable")
        self.fn, self.on_error = fn, on_error
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.stats = RewardStats()  # over this object's lifetime
        has_batch = callable(getattr(fn, "batch", None))
        self._pool = None
        if timeout_s is not None and not has_batch:
            try:
                self._pool = WorkerPool(fn, timeout_s=timeout_s, mp_context=mp_context)
            except TypeError as err:  # not picklable: say which reward, and why it has to be
                raise TypeError(f"reward {self.name!r}: a timeout runs it in a worker process, so it must be "
                                f"a module-level function: {err}") from err

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def outcomes(self, prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[Mapping]) -> list[Outcome]:
        """Raw outcomes, one per item, nothing scored or counted yet."""
        columns = [_columns(row) for row in rows]
        batch = getattr(self.fn, "batch", None)
        if callable(batch):
            try:
                outcomes = list(batch(prompts, completions, columns))
            except Exception:  # noqa: BLE001 - the whole batch failed: report it on every item
                return [Outcome("error", error=traceback.format_exc())] * len(completions)
            if len(outcomes) != len(completions):
                error = f"{self.name}.batch returned {len(outcomes)} outcomes for {len(completions)} items"
                return [Outcome("error", error=error)] * len(completions)
            return outcomes
        if self._pool is not None:
            return self._pool.map([((p, c), kw) for p, c, kw in zip(prompts, completions, columns)])
        results = []
        for p, c, kw in zip(prompts, completions, columns):
            try:
                results.append(Outcome("ok", value=self.fn(p, c, **kw)))
            except Exception:  # noqa: BLE001 - counted and reported, per on_error
                results.append(Outcome("error", error=traceback.format_exc()))
        return results

    def score(self, prompts: Sequence[Any], completions: Sequence[str],
              rows: Sequence[Mapping]) -> tuple[list[float | None], RewardStats]:
        """Scores for a batch and this batch's counts (also added to ``self.stats``)."""
        stats = RewardStats()
        scores = [self._resolve(outcome, stats) for outcome in self.outcomes(prompts, completions, rows)]
        self.stats.add(stats)
        return scores, stats

    def __call__(self, prompt: Any, completion: str, **row: Any) -> float | None:
        return self.score([prompt], [completion], [row])[0][0]

    def _resolve(self, outcome: Outcome, stats: RewardStats) -> float | None:
        stats.calls += 1
        status, error = outcome.status, outcome.error
        if status == "ok":
            try:
                score = _as_score(outcome.value)
            except (TypeError, ValueError) as err:
                status, error = "invalid", str(err)
            else:
                stats.none += score is None
                return score
        if status == "timeout":
            stats.timed_out += 1
        elif status == "invalid":
            stats.invalid += 1
        else:
            stats.raised += 1
        stats.first_error = stats.first_error or error
        if self.on_error == "raise":
            raise RewardError(f"reward {self.name!r} failed ({status}):\n{error}")
        return 0.0 if self.on_error == "zero" else None


def safe_reward(fn: RewardFn, *, on_error: OnError = "zero", timeout_s: float | None = None,
                name: str | None = None, mp_context: str = "spawn") -> SafeReward:
    """Wrap `fn` so that a raise, a timeout or a bad return value is scored per `on_error`
    ("zero" -> 0.0, "none" -> not scorable, "raise" -> `RewardError`) and counted in
    ``.stats``. With `timeout_s`, plain functions run in a worker process (see module doc)."""
    return SafeReward(fn, on_error=on_error, timeout_s=timeout_s, name=name, mp_context=mp_context)


@dataclass
class RewardReport:
    """Scores of one batch.

    Attributes:
        total: weighted sum per item; None where any component was None (not scorable).
        per_reward: each function's scores, by name.
        stats: each function's counts for this batch, by name.
    """

    total: list[float | None]
    per_reward: dict[str, list[float | None]]
    stats: dict[str, RewardStats] = field(default_factory=dict)

    def metrics(self, prefix: str = "rewards") -> dict[str, float]:
        """Flat numbers for a metrics log: means over scorable items, and failure counts."""
        out: dict[str, float] = {}
        for name, scores in {**self.per_reward, "total": self.total}.items():
            valid = [s for s in scores if s is not None]
            out[f"{prefix}/{name}/mean"] = sum(valid) / len(valid) if valid else float("nan")
            out[f"{prefix}/{name}/unscorable"] = float(len(scores) - len(valid))
        for name, st in self.stats.items():
            out[f"{prefix}/{name}/raised"] = float(st.raised)
            out[f"{prefix}/{name}/timed_out"] = float(st.timed_out)
            out[f"{prefix}/{name}/invalid"] = float(st.invalid)
        return out

    @property
    def failed(self) -> int:
        """Items of this batch, summed over functions, that raised, timed out or were invalid."""
        return sum(st.failed for st in self.stats.values())

    def errors(self) -> dict[str, str]:
        """The first traceback of each function that failed in this batch."""
        return {name: st.first_error for name, st in self.stats.items() if st.first_error}


def _last_line(error: str) -> str:
    """The last non-blank line of a traceback ("KeyError: 'answer'"), for one-line summaries."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return lines[-1] if lines else error


class RewardRunner:
    """Score batches with several named reward functions and a weighted total.

    Args:
        rewards: name -> reward function. A `SafeReward` is used as it is (its own on_error and
            timeout) and is not closed by `close`, so several runners may share one.
        weights: name -> weight; default 1.0 each.
        on_error, timeout_s, mp_context: passed to `safe_reward` for each function. `timeout_s`
            None (the default here) runs plain functions in this process without a timeout;
            the recipes pass their config's ``timeout_s`` (`DEFAULT_TIMEOUT_S` unless set).
        warn: called once, with a readable message (reward, counts, on_error, the first
            traceback), the first time a call raises, times out or returns a non-number.

    `totals` accumulates each function's counts over the runner's lifetime; `summary()` turns
    them into one line for the end of a run.
    """

    def __init__(self, rewards: Mapping[str, RewardFn], weights: Mapping[str, float] | None = None, *,
                 on_error: OnError = "zero", timeout_s: float | None = None, mp_context: str = "spawn",
                 warn: Callable[[str], None] | None = None) -> None:
        weights = dict(weights) if weights is not None else {name: 1.0 for name in rewards}
        _check_names(rewards, weights)
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds (or None: no timeout), got {timeout_s}")
        self.weights = {name: float(w) for name, w in weights.items()}
        self.on_error = on_error
        self.warn = warn
        self._owned: list[SafeReward] = []
        self.rewards: dict[str, SafeReward] = {}
        for name, fn in rewards.items():
            if isinstance(fn, SafeReward):
                self.rewards[name] = fn
            else:
                self.rewards[name] = safe_reward(fn, on_error=on_error, timeout_s=timeout_s, name=name,
                                                 mp_context=mp_context)
                self._owned.append(self.rewards[name])
        self.totals: dict[str, RewardStats] = {name: RewardStats() for name in self.rewards}
        self._warned = False

    def __enter__(self) -> "RewardRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes of the rewards this runner wrapped (not of shared `SafeReward`s)."""
        for reward in self._owned:
            reward.close()

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str],
                 rows: Sequence[Mapping[str, Any]] | None = None) -> RewardReport:
        """Score ``completions[i]`` (answering ``prompts[i]``, with dataset columns ``rows[i]``)."""
        rows = list(rows) if rows is not None else [{} for _ in completions]
        if not len(prompts) == len(completions) == len(rows):
            raise ValueError(f"prompts, completions and rows differ in length: "
                             f"{len(prompts)}, {len(completions)}, {len(rows)}")
        per_reward, stats = self._score_each(prompts, completions, rows)
        for name in self.rewards:
            self.totals[name].add(stats[name])
        total = []
        for i in range(len(completions)):
            parts = [per_reward[name][i] for name in self.rewards]
            total.append(None if any(p is None for p in parts)
                         else sum(self.weights[name] * p for name, p in zip(self.rewards, parts)))
        report = RewardReport(total=total, per_reward=per_reward, stats=stats)
        if self.warn is not None and not self._warned and report.failed:
            self._warned = True
            self.warn(self._first_failure_message(stats))
        return report

    def _score_each(self, prompts: Sequence[Any], completions: Sequence[str], rows: list[Mapping[str, Any]]
                    ) -> tuple[dict[str, list[float | None]], dict[str, RewardStats]]:
        """Each function's scores and this batch's counts, by name: the one step a runner that
        scores elsewhere (`posttrain.verifiers.ray_rewards`) replaces; weighting, totals and the
        warning stay in `__call__`."""
        per_reward, stats = {}, {}
        for name, reward in self.rewards.items():
            per_reward[name], stats[name] = reward.score(prompts, completions, rows)
        return per_reward, stats

    def _scored_as(self, name: str) -> str:
        on_error = self.rewards[name].on_error
        return {"zero": "scored 0.0", "none": "left out as not scorable"}.get(on_error, "raised")

    def _first_failure_message(self, stats: Mapping[str, RewardStats]) -> str:
        lines = []
        for name, st in stats.items():
            if st.failed:
                lines.append(f"reward {name!r} failed on {st.describe()} in this batch; such items are "
                             f"{self._scored_as(name)} (on_error={self.rewards[name].on_error!r}) and counted "
                             f"in the metrics. First error:\n{(st.first_error or '').rstrip()}")
        return "\n".join(lines) + "\n(further failures are only counted; the run's end prints the totals)"

    def total_stats(self) -> RewardStats:
        """All functions' lifetime counts added up (``first_error``: the first failing function's)."""
        out = RewardStats()
        for st in self.totals.values():
            out.add(st)
        return out

    def summary(self) -> str | None:
        """One line for the end of a run, e.g. "reward errors: 'arithmetic' 3 raised, 1 timed out
        of 640 calls (first: KeyError: 'answer')", or None when no call failed."""
        parts = []
        for name, st in self.totals.items():
            if st.failed:
                first = f" (first: {_last_line(st.first_error)})" if st.first_error else ""
                parts.append(f"{name!r} {st.describe()}{first}")
        return "reward errors: " + "; ".join(parts) if parts else None
