"""Sequential scaling by revision: after a wrong attempt the model is told so and answers again.

    attempt 0 -> verifier: wrong -> "Your answer 53 is incorrect. Try again." -> attempt 1 -> ...

Up to `rounds` revisions per prompt, and only prompts still wrong are revised -- how a user with
feedback would work. The verifier decides which attempts are wrong, so the curve this gives
(accuracy after 0..r revisions against cumulative tokens) is an ORACLE UPPER BOUND: a deployed
model has no verifier telling it when it is wrong, and a wrong attempt can only improve. It
measures how well a model uses feedback, not a strategy one can ship. The feedback names the
model's own answer, never the right one (the recipe's templates may only use ``{answer}``).

Batched: each round is ONE ``engine.generate`` over every prompt still wrong. The context only
grows: the attempt's ids as sampled (its stop token included), then the follow-up ids the caller
builds (the chat template's glue, the feedback as a user turn and the next assistant header; or
plain appended text), never the conversation re-rendered and tokenised again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional, Sequence

from posttrain.engines.base import Completion, Engine, SamplingParams

__all__ = ["Attempt", "RevisionTrace", "Verdict", "revise", "revision_curve"]


@dataclass(frozen=True)
class Verdict:
    """The verifier on one attempt: right or not, the answer it extracted, its score."""

    correct: bool
    answer: Optional[Hashable] = None
    score: Optional[float] = None


# (prompt indices, their completions) -> a verdict per completion; batched because scoring goes
# through a reward runner.
Judge = Callable[[list[int], list[Completion]], list[Verdict]]
# (the wrong completion, its verdict) -> (feedback text, ids to append after the attempt).
FollowUp = Callable[[Completion, Verdict], tuple[str, list[int]]]


@dataclass
class Attempt:
    """One answer of one prompt.

    Attributes:
        tokens: tokens the model generated for it (its stop token included).
        text: the engine's text of it.
        answer, correct, score: the verifier's verdict.
        feedback: the feedback that followed it ("" when none did: it was right, or the last).
        feedback_tokens: the ids appended after it (template glue and feedback), 0 when none.
    """

    tokens: int
    text: str
    answer: Optional[Hashable]
    correct: bool
    score: Optional[float] = None
    feedback: str = ""
    feedback_tokens: int = 0


@dataclass
class RevisionTrace:
    prompt_index: int
    prompt_tokens: int
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def solved_at(self) -> Optional[int]:
        """The revision (0 = the first attempt) that was right, or None."""
        return next((t for t, a in enumerate(self.attempts) if a.correct), None)


def revise(engine: Engine, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams, *, rounds: int,
           judge: Judge, follow_up: FollowUp) -> list[RevisionTrace]:
    """The first attempt of every prompt and up to `rounds` revisions of those still wrong.

    Round t samples with ``sampling.seed + t`` (``n`` must be 1), so revisions are fresh draws
    when the temperature is above 0.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"revise: rounds must be an int >= 0, got {rounds!r}")
    if sampling.n != 1:
        raise ValueError("revise samples one attempt per prompt and round")
    traces = [RevisionTrace(i, len(p)) for i, p in enumerate(prompt_ids)]
    contexts = [list(p) for p in prompt_ids]
    live = list(range(len(traces)))
    for t in range(rounds + 1):
        seed = None if sampling.seed is None else sampling.seed + t
        outputs = engine.generate([contexts[i] for i in live], dataclasses.replace(sampling, seed=seed))
        completions = [group[0] for group in outputs]
        verdicts = judge(live, completions)
        wrong = []
        for i, completion, verdict in zip(live, completions, verdicts):
            attempt = Attempt(len(completion.token_ids), completion.text, verdict.answer, bool(verdict.correct),
                              verdict.score)
            traces[i].attempts.append(attempt)
            if not attempt.correct and t < rounds:
                # Feedback only where a revision follows: a last wrong attempt costs no feedback.
                attempt.feedback, ids = follow_up(completion, verdict)
                attempt.feedback_tokens = len(ids)
                contexts[i] += list(completion.token_ids) + list(ids)
                wrong.append(i)
        live = wrong
        if not live:
            break
    return traces


def revision_curve(traces: Sequence[RevisionTrace], rounds: int) -> list[dict[str, list[float]]]:
    """Per revision count t = 0..rounds, per prompt: ``correct`` (1.0 when an attempt up to t was
    right: monotone in t, since right prompts are not revised), ``generated`` (the model's tokens
    over attempts 0..t) and ``context`` (prompt + those attempts + the feedback between them: what
    the model read and wrote, the figure parallel strategies are drawn against)."""
    curve = []
    for t in range(rounds + 1):
        correct, generated, context = [], [], []
        for trace in traces:
            done = trace.attempts[: t + 1]
            solved = trace.solved_at
            correct.append(float(solved is not None and solved <= t))
            made = sum(a.tokens for a in done)
            generated.append(float(made))
            context.append(float(trace.prompt_tokens + made + sum(a.feedback_tokens for a in done[:-1])))
        curve.append({"correct": correct, "generated": generated, "context": context})
    return curve
