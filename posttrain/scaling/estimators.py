"""Parallel test-time-scaling estimators: from n scored samples per prompt, the accuracy a
strategy would get with k of them (k <= n), for several k from one pass.

All are pure functions of the samples, so a `samples.jsonl` can be re-scored without generating
again. Conventions (the tests pin each one):

* A sample's ``score`` is its verifier reward; ``>= threshold`` (default 1.0) counts as correct.
  An unscorable sample (score None: the reward raised, timed out or returned NaN) is incorrect.
* A sample's ``answer`` is the extracted final answer, or None when there is none; a sample
  without an answer abstains from votes.
* Answers are bucketed by an equivalence the caller gives (the verifier's own, so ``3/4`` and
  ``0.75`` are one answer); the default is plain equality of the answer strings.
* Ties (two buckets with the same vote, two samples with the same reranker weight) are broken
  uniformly at random, and the estimators return the EXPECTED accuracy under that rule -- e.g.
  a tie between a correct and a wrong bucket is worth 0.5 -- so results are deterministic.
* With k < n, maj@k, weighted majority and best-of-k are the expectation over the k-subsets of
  the n samples: exact for best-of-k (order statistics), by enumeration for votes when there are
  at most `MAX_ENUMERATED` subsets, else a seeded Monte-Carlo estimate over as many.

pass@k and pass^k use the unbiased estimators of Chen et al. 2021 ("Evaluating Large Language
Models Trained on Code", the Codex paper) and of Yao et al. 2024 (tau-bench's pass^k).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Callable, Hashable, Optional, Sequence

MAX_ENUMERATED = 2000

Equivalent = Callable[[Hashable, Hashable], bool]


@dataclass(frozen=True)
class Sample:
    """One scored sample of a prompt.

    Attributes:
        answer: the extracted final answer (any hashable; None = no answer).
        score: the verifier's reward (None = unscorable).
        weight: a non-negative reranking / voting weight (e.g. a reward model's score mapped to
            >= 0), used by weighted majority and best-of-N; None where there is none.
    """

    answer: Optional[Hashable] = None
    score: Optional[float] = None
    weight: Optional[float] = None


def _check_k(n: int, k: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of samples n={n}, got k={k}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: the chance that at least one of k samples drawn without replacement from
    n, c of them correct, is correct: 1 - C(n-c, k) / C(n, k)."""
    _check_k(n, k)
    if not 0 <= c <= n:
        raise ValueError(f"c must be between 0 and n={n}, got {c}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # exact integers, one correctly rounded division


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Unbiased pass^k: the chance that ALL of k samples drawn from n (c correct) are correct,
    C(c, k) / C(n, k) -- the reliability figure agent benchmarks report."""
    _check_k(n, k)
    if not 0 <= c <= n:
        raise ValueError(f"c must be between 0 and n={n}, got {c}")
    return math.comb(c, k) / math.comb(n, k)


def is_correct(sample: Sample, threshold: float = 1.0) -> bool:
    return sample.score is not None and not math.isnan(sample.score) and sample.score >= threshold


def bucket_answers(answers: Sequence[Optional[Hashable]], equivalent: Optional[Equivalent] = None) -> list[Optional[int]]:
    """A bucket id per answer (None for no answer): an answer joins the first earlier bucket whose
    first answer is `equivalent` to it. Equal answers share a bucket without asking."""
    representatives: list[Hashable] = []
    by_value: dict[Hashable, int] = {}
    ids: list[Optional[int]] = []
    for answer in answers:
        if answer is None:
            ids.append(None)
            continue
        if answer in by_value:
            ids.append(by_value[answer])
            continue
        found = None
        if equivalent is not None:
            found = next((i for i, rep in enumerate(representatives) if equivalent(rep, answer)), None)
        if found is None:
            found = len(representatives)
            representatives.append(answer)
        by_value[answer] = found
        ids.append(found)
    return ids


def _vote(buckets: Sequence[Optional[int]], correct: Sequence[bool], weights: Sequence[float]) -> float:
    """Expected correctness of the winning bucket (uniform tie-break); 0 when nobody voted."""
    totals: dict[int, float] = {}
    for bucket, weight in zip(buckets, weights):
        if bucket is not None:
            totals[bucket] = totals.get(bucket, 0.0) + weight
    if not totals:
        return 0.0
    best = max(totals.values())
    winners = [b for b, total in totals.items() if total == best]
    # A bucket is correct when its samples are: the verifier scored each, and equivalent answers
    # score alike; should they not, the bucket counts as correct by the share of its samples that are.
    def bucket_correct(b: int) -> float:
        members = [c for bucket, c in zip(buckets, correct) if bucket == b]
        return sum(members) / len(members)

    return sum(bucket_correct(b) for b in winners) / len(winners)


def _subsets(n: int, k: int, seed: int) -> list[tuple[int, ...]]:
    if math.comb(n, k) <= MAX_ENUMERATED:
        return list(itertools.combinations(range(n), k))
    rng = random.Random(seed)
    return [tuple(sorted(rng.sample(range(n), k))) for _ in range(MAX_ENUMERATED)]


def _expected_vote(samples: Sequence[Sample], k: int, weights: Sequence[float], equivalent: Optional[Equivalent],
                   threshold: float, seed: int) -> float:
    _check_k(len(samples), k)
    buckets = bucket_answers([s.answer for s in samples], equivalent)
    correct = [is_correct(s, threshold) for s in samples]
    subsets = _subsets(len(samples), k, seed)
    return sum(_vote([buckets[i] for i in subset], [correct[i] for i in subset], [weights[i] for i in subset])
               for subset in subsets) / len(subsets)


def majority_at_k(samples: Sequence[Sample], k: int, *, equivalent: Optional[Equivalent] = None,
                  threshold: float = 1.0, seed: int = 0) -> float:
    """maj@k: accuracy of the most frequent answer among k samples (expected over k-subsets)."""
    return _expected_vote(samples, k, [1.0] * len(samples), equivalent, threshold, seed)


def _weights(samples: Sequence[Sample]) -> list[float]:
    weights = []
    for i, s in enumerate(samples):
        if s.weight is None or math.isnan(s.weight) or s.weight < 0:
            raise ValueError(f"sample {i}: weighted strategies need a non-negative weight, got {s.weight!r}")
        weights.append(float(s.weight))
    return weights


def weighted_majority_at_k(samples: Sequence[Sample], k: int, *, equivalent: Optional[Equivalent] = None,
                           threshold: float = 1.0, seed: int = 0) -> float:
    """Weighted majority over k samples: the answer whose samples' weights sum highest."""
    return _expected_vote(samples, k, _weights(samples), equivalent, threshold, seed)


def best_of_k(samples: Sequence[Sample], k: int, *, threshold: float = 1.0) -> float:
    """Best-of-k: the correctness of the highest-weight sample among k, expected over k-subsets,
    exactly: the sorted weights' order statistics (ties: the tied samples share the chance)."""
    weights = _weights(samples)
    n = len(samples)
    _check_k(n, k)
    correct = [is_correct(s, threshold) for s in samples]
    total = math.comb(n, k)
    expected = 0.0
    for w in sorted(set(weights)):
        tied = [i for i in range(n) if weights[i] == w]
        below = sum(weight < w for weight in weights)
        # subsets whose maximum weight is w: k from (below + tied) minus those with none of the tied
        with_max_w = math.comb(below + len(tied), k) - math.comb(below, k)
        if with_max_w:
            # by symmetry each tied sample is the (random) pick equally often
            expected += with_max_w / total * sum(correct[i] for i in tied) / len(tied)
    return expected


def bootstrap_interval(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 1000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-prompt `values`, resampling prompts."""
    if not values:
        raise ValueError("bootstrap_interval needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    lo = means[min(resamples - 1, int(math.floor(tail * resamples)))]
    hi = means[min(resamples - 1, int(math.ceil((1 - tail) * resamples)) - 1)]
    return lo, hi
