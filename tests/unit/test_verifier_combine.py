"""Combining rewards and counting their failures."""

import math
import time

import pytest

from posttrain.verifiers.combine import RewardError, RewardRunner, safe_reward, weighted_sum
from posttrain.verifiers.workers import Outcome


def length_reward(prompt, completion, **row):
    """len(completion) / 10."""
    return len(completion) / 10


def contains_answer(prompt, completion, answer=None, **row):
    """1.0 if the answer appears in the completion; None when the row has no answer."""
    if answer is None:
        return None
    return float(str(answer) in completion)


def broken_reward(prompt, completion, **row):
    raise KeyError("no such column")


def slow_reward(prompt, completion, delay=0.0, **row):
    time.sleep(delay)
    return 1.0


def test_weighted_sum_by_hand():
    # "42 apples": length 9 -> 0.9; contains "42" -> 1.0.  0.5 * 0.9 + 2.0 * 1.0 = 2.45.
    # "7 pears": length 7 -> 0.7; no "42" -> 0.0.           0.5 * 0.7 + 2.0 * 0.0 = 0.35.
    fn = weighted_sum({"len": length_reward, "ans": contains_answer}, {"len": 0.5, "ans": 2.0})
    assert math.isclose(fn("q", "42 apples", answer="42"), 2.45)
    assert math.isclose(fn("q", "7 pears", answer="42"), 0.35)
    assert fn("q", "42 apples") is None  # one part not scorable -> the sum is not scorable


def test_weighted_sum_checks_names():
    with pytest.raises(ValueError, match=r"missing \['ans'\], unknown \['answer'\]"):
        weighted_sum({"len": length_reward, "ans": contains_answer}, {"len": 1.0, "answer": 1.0})


@pytest.mark.parametrize("on_error, expected", [("zero", 0.0), ("none", None)])
def test_safe_reward_scores_and_counts_errors(on_error, expected):
    safe = safe_reward(broken_reward, on_error=on_error)
    assert safe("q", "c") == expected
    assert safe("q", "c") == expected
    assert safe.stats.calls == 2 and safe.stats.raised == 2
    assert "KeyError: 'no such column'" in safe.stats.first_error


def test_safe_reward_raise_mode_names_the_function():
    with pytest.raises(RewardError, match="'broken_reward' failed"):
        safe_reward(broken_reward, on_error="raise")("q", "c")


@pytest.mark.parametrize("bad", ["1.0", float("nan"), [1.0]])
def test_non_numbers_are_errors_not_scores(bad):
    safe = safe_reward(lambda p, c, **r: bad)
    assert safe("q", "c") == 0.0 and safe.stats.raised == 1


def test_runner_reports_scores_totals_and_failures():
    # Items: ("42 apples", answer 42), ("7 pears", answer 42), ("x", no answer).
    # len:  0.9, 0.7, 0.1.  ans: 1.0, 0.0, None.  broken: raises -> 0.0 each (counted).
    # total = 1*len + 2*ans + 1*broken: 0.9 + 2 = 2.9; 0.7 + 0 = 0.7; None (ans is None).
    runner = RewardRunner({"len": length_reward, "ans": contains_answer, "broken": broken_reward},
                          {"len": 1.0, "ans": 2.0, "broken": 1.0})
    report = runner(["q"] * 3, ["42 apples", "7 pears", "x"],
                    [{"answer": 42, "prompt": "dataset column that must not collide"}, {"answer": 42}, {}])
    assert report.per_reward["len"] == pytest.approx([0.9, 0.7, 0.1])
    assert report.per_reward["ans"] == [1.0, 0.0, None]
    assert report.per_reward["broken"] == [0.0, 0.0, 0.0]
    assert report.total[:2] == pytest.approx([2.9, 0.7]) and report.total[2] is None
    metrics = report.metrics()
    assert metrics["rewards/broken/raised"] == 3.0
    assert metrics["rewards/ans/unscorable"] == 1.0
    assert metrics["rewards/total/mean"] == pytest.approx((2.9 + 0.7) / 2)
    assert set(report.errors()) == {"broken"}


def test_runner_enforces_timeouts_in_a_worker_process():
    # Item 1 sleeps 30 s, far past the 0.5 s limit: killed, scored 0.0, counted.
    with RewardRunner({"slow": slow_reward}, timeout_s=0.5) as runner:
        start = time.monotonic()
        report = runner(["q"] * 3, ["a", "b", "c"], [{"delay": 0.0}, {"delay": 30.0}, {"delay": 0.0}])
        assert time.monotonic() - start < 10
    assert report.per_reward["slow"] == [1.0, 0.0, 1.0]
    assert report.stats["slow"].timed_out == 1 and report.stats["slow"].raised == 0
    assert report.metrics()["rewards/slow/timed_out"] == 1.0


def test_runner_uses_a_batch_method_and_counts_its_timeouts():
    class Batched:
        calls = 0

        def __call__(self, prompt, completion, **row):
            raise AssertionError("the runner should call batch()")

        def batch(self, prompts, completions, rows):
            self.calls += 1
            assert all("prompt" not in row for row in rows)
            return [Outcome("ok", value=1.0), Outcome("timeout", error="killed"), Outcome("ok", value=None)]

    fn = Batched()
    report = RewardRunner({"b": fn})(["q"] * 3, ["a", "b", "c"], [{"prompt": "x"}, {}, {}])
    assert fn.calls == 1
    assert report.per_reward["b"] == [1.0, 0.0, None]
    assert (report.stats["b"].timed_out, report.stats["b"].none) == (1, 1)


def test_runner_checks_lengths():
    with pytest.raises(ValueError, match="differ in length: 2, 1, 1"):
        RewardRunner({"len": length_reward})(["q", "q"], ["a"], [{}])
