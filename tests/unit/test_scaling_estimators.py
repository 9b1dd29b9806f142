"""The test-time-scaling estimators against values worked out by hand (posttrain/scaling)."""

import itertools
import math

import pytest

from posttrain.scaling import (Sample, best_of_k, bootstrap_interval, bucket_answers, majority_at_k, pass_at_k,
                               pass_hat_k, weighted_majority_at_k)


def test_pass_at_k_by_hand():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # k = 1: the fraction correct
    assert pass_at_k(4, 0, 3) == 0.0 and pass_at_k(4, 4, 1) == 1.0  # none, all correct
    assert pass_at_k(5, 2, 4) == 1.0  # n - c < k: every 4-subset holds a correct one
    assert pass_at_k(3, 1, 3) == 1.0  # n = k: any correct sample passes
    assert pass_at_k(200, 3, 100) == pytest.approx(1 - math.comb(197, 100) / math.comb(200, 100))


def test_pass_hat_k_by_hand():
    assert pass_hat_k(5, 3, 2) == pytest.approx(3 / 10)  # C(3,2)/C(5,2)
    assert pass_hat_k(5, 1, 2) == 0.0 and pass_hat_k(5, 5, 5) == 1.0
    assert pass_hat_k(4, 3, 4) == 0.0  # n = k: all must be correct


@pytest.mark.parametrize("args", [(3, 1, 0), (3, 1, 4), (3, 4, 1), (3, -1, 1)])
def test_bad_counts_are_refused(args):
    with pytest.raises(ValueError):
        pass_at_k(*args)


def test_pass_at_k_matches_the_subset_average():
    correct = [1, 0, 1, 0, 0, 0]
    for k in range(1, 7):
        subsets = list(itertools.combinations(correct, k))
        assert pass_at_k(6, 2, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
        assert pass_hat_k(6, 2, k) == pytest.approx(sum(all(s) for s in subsets) / len(subsets))


def right(answer, weight=None):
    return Sample(answer, 1.0, weight)


def wrong(answer, weight=None):
    return Sample(answer, 0.0, weight)


def test_majority_uses_the_verifiers_equivalence():
    samples = [wrong("5"), right("3/4"), right("0.75"), wrong("5"), right("0.750")]
    same = lambda a, b: float(eval(a)) == float(eval(b))  # noqa: E731 - a stand-in for math-verify
    assert bucket_answers([s.answer for s in samples], same) == [0, 1, 1, 0, 1]
    assert majority_at_k(samples, 5, equivalent=same) == 1.0  # 3 votes for 3/4 against 2 for 5
    assert majority_at_k(samples, 5) == 0.0  # as plain strings: "5" has 2 votes, the rest 1 each


def test_majority_ties_count_as_the_expected_tie_break():
    assert majority_at_k([right("4"), wrong("3")], 2) == 0.5
    assert majority_at_k([right("4"), wrong("3"), wrong("2")], 3) == pytest.approx(1 / 3)


def test_majority_at_k_below_n_averages_the_subsets():
    samples = [right("a"), right("a"), wrong("b")]
    # k=1: the fraction correct. k=2: subsets {a,a}=1, {a,b}=0.5 (tie) twice -> (1+.5+.5)/3
    assert majority_at_k(samples, 1) == pytest.approx(2 / 3)
    assert majority_at_k(samples, 2) == pytest.approx(2 / 3)
    assert majority_at_k(samples, 3) == 1.0


def test_unscorable_and_answerless_samples():
    # no answer abstains: the one vote for "4" wins; an unscorable sample is never correct
    assert majority_at_k([Sample(None, 0.0), Sample(None, 0.0), right("4")], 3) == 1.0
    assert majority_at_k([Sample(None, None), Sample(None, None)], 2) == 0.0
    assert majority_at_k([Sample("4", None), Sample("4", None)], 2) == 0.0
    assert pass_at_k(2, sum(s.score == 1.0 for s in [Sample("4", None), right("4")]), 2) == 1.0


def test_weighted_majority_by_hand():
    samples = [wrong("3", 0.2), wrong("3", 0.2), right("4", 0.9)]
    assert majority_at_k(samples, 3) == 0.0  # two votes for 3
    assert weighted_majority_at_k(samples, 3) == 1.0  # 0.9 against 0.4
    assert weighted_majority_at_k([wrong("3", 0.5), right("4", 0.5)], 2) == 0.5  # tie
    with pytest.raises(ValueError, match="sample 1: .*non-negative weight"):
        weighted_majority_at_k([right("4", 1.0), right("4", -1.0)], 2)


def test_best_of_k_exact_against_enumeration():
    samples = [right("a", 0.9), wrong("b", 0.9), wrong("c", 0.1), right("d", 0.5), wrong("e", 0.0)]
    for k in range(1, 6):
        expected = []
        for subset in itertools.combinations(samples, k):
            top = max(s.weight for s in subset)
            tied = [s for s in subset if s.weight == top]
            expected.append(sum(s.score for s in tied) / len(tied))
        assert best_of_k(samples, k) == pytest.approx(sum(expected) / len(expected)), k
    assert best_of_k(samples, 5) == 0.5  # the two 0.9s tie: one right, one wrong
    assert best_of_k(samples, 1) == pytest.approx(2 / 5)  # k = 1: the fraction correct


def test_votes_over_many_subsets_are_estimated_with_a_seed():
    samples = [right("a")] * 14 + [wrong("b")] * 10  # C(24, 12) subsets: too many to enumerate
    first = majority_at_k(samples, 12, seed=1)
    assert first == majority_at_k(samples, 12, seed=1)  # deterministic
    # exactly, by the hypergeometric law: P(more than 6 a's) + 0.5 P(6 a's, a tie)
    exact = (sum(math.comb(14, a) * math.comb(10, 12 - a) for a in range(7, 13))
             + 0.5 * math.comb(14, 6) * math.comb(10, 6)) / math.comb(24, 12)
    assert abs(first - exact) < 0.04  # 2000 subsets: a standard error of ~0.01
    assert majority_at_k(samples, 24) == 1.0


def test_bootstrap_interval():
    values = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_interval(values, seed=0)
    assert lo < 0.3 < hi and hi - lo < 0.25  # the binomial standard error is ~0.046: about ±0.09
    assert bootstrap_interval(values, seed=0) == (lo, hi)
    assert bootstrap_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_interval([])
