r"""Math answers checked with `math_verify` (Hugging Face's Math-Verify), in worker processes.

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

What the final answer is (strict, the default; `final_answer_text`):
- when the completion has any ``\boxed{...}`` (or ``\fbox``): the LAST box, unwrapped when
  boxes are nested. Earlier boxes are drafts: ``\boxed{3} ... no, \boxed{4}`` answers 4, as
  most graders read it. An empty last box is no answer (an empty ``\boxed{}`` followed by the
  right number in prose scores 0).
- otherwise: the text after the last "answer is" / "answer:", else the last sentence.
- a final answer that offers alternatives is a hedge and scores 0: "or" / "either" / ``\lor``
  inside it ("the answer is 3 or 4", "so 3 or 4", ``\boxed{3 \text{ or } 4}``), or a last box
  joined to the one before by "or" or nothing but punctuation (``\boxed{3} or \boxed{4}``).
  An RL policy learns to hedge when hedging pays; a set of solutions is written as a list
  (``\boxed{2, 3}``), which math_verify compares as a set.
Lenient mode (`math_lenient` reward, `strict=False`) is math_verify on the whole completion,
with none of these rules. Both keep math_verify's own equivalences: 3/4 = 0.75, "1,000" = 1000,
a unicode minus, units in ``\text{}`` dropped, a percent equal to its number or its fraction
(``50\%`` matches both 50 and 0.5), intervals by their bounds.
"""

from __future__ import annotations

import atexit
import functools
import logging
import re
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


_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HEDGE = re.compile(r"\b(?:or|either)\b|\\lor\b|\\vee\b", re.IGNORECASE)
_ANSWER_MARK = re.compile(r"answer\s*(?:is|:)", re.IGNORECASE)
_JOINER = re.compile(r"^[\s$.,;:]*(?:or\b)?[\s$.,;:]*$", re.IGNORECASE)


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Top-level boxes as (start, end, content), braces matched (an unclosed box runs to the end)."""
    found, at = [], 0
    while (match := _BOX.search(text, at)) is not None:
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        found.append((match.start(), i, text[match.end():i - 1 if depth == 0 else i]))
        at = i
    return found


def final_answer_text(completion: str) -> tuple[str | None, bool]:
    """(the final answer's text, hedged) under the strict rules of the module docstring; the text
    is None when the completion gives no answer (an empty last box)."""
    text, hedged, _ = _final_answer(completion)
    return text, hedged


def _final_answer(completion: str) -> tuple[str | None, bool, bool]:
    """`final_answer_text` plus whether the answer came from a box."""
    boxes = _boxes(completion)
    if boxes:
        start, _, content = boxes[-1]
        while (inner := _boxes(content)) and len(inner) == 1 and not content[:inner[0][0]].strip():
            content = inner[0][2]  # \boxed{\boxed{4}}
        joined = len(boxes) > 1 and bool(_JOINER.match(completion[boxes[-2][1]:start]))
        content = content.strip()
        return (content or None), joined or bool(_HEDGE.search(content)), True
    marks = list(_ANSWER_MARK.finditer(completion))
    if marks:
        segment = completion[marks[-1].end():]
    else:
        sentences = [p for p in re.split(r"(?<=[.!?])\s+|\n+", completion.strip()) if p.strip()]
        segment = sentences[-1] if sentences else ""
    segment = segment.strip()
    return (segment or None), bool(_HEDGE.search(segment)), False


def score_math(completion: str, answer: Any, *, strict: bool = True) -> float | None:
    """Score one completion in this process, with no timeout (see `MathVerifier` for that).

    Args:
        strict: the final-answer rules of the module docstring (last box, no hedging); False
            parses the whole completion with math_verify.

    Returns:
        1.0 / 0.0, or None if the gold `answer` cannot be parsed.
    """
    from math_verify import verify

    gold = parse_gold(answer)
    if not gold:
        return None
    text = str(completion)
    if strict:
        final, hedged, boxed = _final_answer(text)
        if final is None or hedged:
            return 0.0
        # The box's content alone, inside $...$ so bare LaTeX parses; prose keeps its sentence.
        text = f"${final}$" if boxed else final
    pred = _parse(text)
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
            defaults to `score_math` (strict, or lenient with ``strict=False``).
        strict: the final-answer rules of the module docstring, for the default scorer.
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
        scorer: Callable[[str, Any], float | None] | None = None,
        strict: bool = True,
        mp_context: str = "spawn",
    ) -> None:
        initializer = _init_math_worker if scorer is None else None
        scorer = scorer or (score_math if strict else functools.partial(score_math, strict=False))
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


_defaults: dict[bool, MathVerifier] = {}
_default_lock = threading.Lock()


def default_math_verifier(strict: bool = True) -> MathVerifier:
    """The shared verifier behind `math_reward` (strict) or `math_lenient_reward`: one worker,
    5 s timeout, started on first use."""
    with _default_lock:
        if strict not in _defaults:
            _defaults[strict] = MathVerifier(strict=strict)
            atexit.register(_defaults[strict].close)
        return _defaults[strict]


def math_reward(prompt: Any, completion: str, answer: Any = None, **row: Any) -> float | None:
    """Reward function: 1.0 if `completion`'s final answer (strict rules: the last box, no
    hedging) equals `answer`, else 0.0.

    Runs in the shared worker process of `default_math_verifier` (5 s timeout per item). None
    if `answer` cannot be parsed. Build your own `MathVerifier` for other timeouts or more
    workers.
    """
    return default_math_verifier()(prompt, completion, answer, **row)


def math_lenient_reward(prompt: Any, completion: str, answer: Any = None, **row: Any) -> float | None:
    """`math_reward` without the strict final-answer rules: math_verify on the whole completion
    (hedges and empty boxes can pay; for evaluating other graders' conventions, not for RL)."""
    return default_math_verifier(strict=False)(prompt, completion, answer, **row)


def _math_reward_batch(prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict]) -> list[Outcome]:
    return default_math_verifier().batch(prompts, completions, rows)


def _math_lenient_batch(prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict]) -> list[Outcome]:
    return default_math_verifier(strict=False).batch(prompts, completions, rows)


# `RewardRunner` looks for a `batch` attribute and, when present, scores a whole batch at once.
math_reward.batch = _math_reward_batch  # type: ignore[attr-defined]
math_lenient_reward.batch = _math_lenient_batch  # type: ignore[attr-defined]
# The dataset column it needs (`posttrain.rewards.check_reward_columns` checks prompt files for it).
math_reward.required_columns = ("answer",)  # type: ignore[attr-defined]
math_lenient_reward.required_columns = ("answer",)  # type: ignore[attr-defined]
