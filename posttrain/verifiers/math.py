"""Math answers checked with `math_verify` (Hugging Face's Math-Verify), in worker processes.

`math_verify.verify(gold, pred)` is not symmetric (an assignment such as ``x = 2`` is simplified
on the prediction side only, and intervals vs. inequalities are compared one way), so the gold
answer always goes FIRST. Both sides are parsed with `math_verify.parse`, which finds boxed
answers, LaTeX and plain expressions in free text.

Timeouts: math_verify bounds its own work with `signal.alarm`, which fails outside the main
thread and cannot stop C code. We switch that off (``parsing_timeout=None``,
``timeout_seconds=None``) and run the scoring in a `WorkerPool` instead; a hung item is
killed, scored 0.0 and counted in `MathVerifier.counts["timed_out"]`.

Scores: 1.0 if the completion's answer equals the gold answer, 0.0 if it differs or nothing
parsable is found in the completion, None ("not scorable", excluded and counted by the
caller) if the *gold* answer cannot be parsed -- a data problem, not the model's fault.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import Counter
from typing import Any, Callable, Sequence

from posttrain.verifiers.workers import Outcome, WorkerPool


def _parse(text: str) -> list:
    from math_verify import parse  # imported here: SymPy takes ~0.4 s to import

    return parse(text, parsing_timeout=None)


def parse_gold(answer: Any) -> list:
    """Parse a gold answer; bare LaTeX like ``x^2+1`` is retried inside ``$...$``.

    Returns math_verify's list of candidate forms (SymPy objects and strings); empty if nothing
    could be parsed.
    """
    text = str(answer).strip()
    gold = _parse(text)
    if not gold and "$" not in text:
        gold = _parse(f"${text}$")
    return gold


def score_math(completion: str, answer: Any) -> float | None:
    """Score one completion in this process, with no timeout (see `MathVerifier` for that).

    Returns:
        1.0 / 0.0, or None if the gold `answer` cannot be parsed.
    """
    from math_verify import verify

    gold = parse_gold(answer)
    if not gold:
        return None
    pred = _parse(str(completion))
    if not pred:
        return 0.0
    return 1.0 if verify(gold, pred, timeout_seconds=None) else 0.0


def _init_math_worker() -> None:
    """Import math_verify before the first call, so start-up never counts against a timeout."""
    # The "timeout is disabled" warning is expected here: the pool enforces the timeout.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    score_math(r"$\frac{1}{2}$", "0.5")  # also warms up the LaTeX parser


class MathVerifier:
    """Math reward with a per-item timeout, run in reusable worker processes.

    Args:
        timeout_s: seconds one item may take before its worker is killed and it scores 0.0.
        num_workers: worker processes; a batch is spread across them.
        scorer: ``(completion, answer) -> float | None`` run in the workers (picklable);
            defaults to `score_math`.
        mp_context: multiprocessing start method (see `WorkerPool`).

    As a reward function: ``verifier(prompt, completion, answer=..., **row)``. For many items
    use `score_batch` (or `batch`, which `RewardRunner` calls): one pool serves them all.
    ``counts`` accumulates "scored", "timed_out", "errors" and "unscorable" over its lifetime.
    """

    required_columns = ("answer",)  # the dataset column it needs (see `posttrain.rewards.check_reward_columns`)

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        num_workers: int = 1,
        scorer: Callable[[str, Any], float | None] = score_math,
        mp_context: str = "spawn",
    ) -> None:
        initializer = _init_math_worker if scorer is score_math else None
        self._pool = WorkerPool(
            scorer, num_workers=num_workers, timeout_s=timeout_s, initializer=initializer, mp_context=mp_context
        )
        self.counts: Counter[str] = Counter()
        self.first_error: str | None = None

    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes."""
        self._pool.close()

    def batch(self, prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict]) -> list[Outcome]:
        """Raw outcomes for `RewardRunner`: timeouts and errors are reported, not yet scored."""
        if not len(prompts) == len(completions) == len(rows):
            raise ValueError(
                f"prompts, completions and rows differ in length: {len(prompts)}, {len(completions)}, {len(rows)}"
            )
        for i, row in enumerate(rows):
            if "answer" not in row:
                raise ValueError(f"row {i} has no 'answer' field (fields: {sorted(row)})")
        return self._pool.map([((completion, row["answer"]), {}) for completion, row in zip(completions, rows)])

    def score_batch(self, completions: Sequence[str], answers: Sequence[Any]) -> list[float | None]:
        """Scores in order; a timed-out or failed item scores 0.0 and is counted."""
        if len(completions) != len(answers):
            raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
        outcomes = self._pool.map([((c, a), {}) for c, a in zip(completions, answers)])
        return [self._score(outcome) for outcome in outcomes]

    def __call__(self, prompt: Any, completion: str, answer: Any = None, **row: Any) -> float | None:
        if answer is None:
            raise ValueError(f"math reward needs an 'answer' field in the row (fields: {sorted(row)})")
        return self._score(self._pool.call(completion, answer))

    def _score(self, outcome: Outcome) -> float | None:
        if outcome.status == "ok":
            self.counts["scored" if outcome.value is not None else "unscorable"] += 1
            return outcome.value
        self.counts["timed_out" if outcome.status == "timeout" else "errors"] += 1
        if self.first_error is None:
            self.first_error = outcome.error
        return 0.0


_default: MathVerifier | None = None
_default_lock = threading.Lock()


def default_math_verifier() -> MathVerifier:
    """The shared verifier behind `math_reward`: one worker, 5 s timeout, started on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathVerifier()
            atexit.register(_default.close)
        return _default


def math_reward(prompt: Any, completion: str, answer: Any = None, **row: Any) -> float | None:
    """Reward function: 1.0 if `completion`'s final answer equals `answer`, else 0.0.

    Runs in the shared worker process of `default_math_verifier` (5 s timeout per item). None
    if `answer` cannot be parsed. Build your own `MathVerifier` for other timeouts or more
    workers.
    """
    return default_math_verifier()(prompt, completion, answer, **row)


def _math_reward_batch(prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict]) -> list[Outcome]:
    return default_math_verifier().batch(prompts, completions, rows)


# `RewardRunner` looks for a `batch` attribute and, when present, scores a whole batch at once.
math_reward.batch = _math_reward_batch  # type: ignore[attr-defined]
# The dataset column it needs (`posttrain.rewards.check_reward_columns` checks prompt files for it).
math_reward.required_columns = ("answer",)  # type: ignore[attr-defined]
