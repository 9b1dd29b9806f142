"""Combining rewards and counting their failures."""

import math
import time

import pytest

from posttrain.verifiers.combine import DEFAULT_TIMEOUT_S, RewardError, RewardRunner, safe_reward, weighted_sum
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


def flaky_reward(prompt, completion, **row):
    """Raises on "boom", NaN on "nan", 1.0 otherwise."""
    if completion == "boom":
        raise KeyError("answer")
    return float("nan") if completion == "nan" else 1.0


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
    assert safe("q", "c") == 0.0 and safe.stats.invalid == 1 and safe.stats.raised == 0
    assert safe.stats.failed == 1


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


def test_runner_warns_once_with_counts_and_the_first_traceback():
    warnings = []
    runner = RewardRunner({"flaky": flaky_reward, "len": length_reward}, warn=warnings.append)
    runner(["q"] * 2, ["ok", "fine"], [{}, {}])
    assert warnings == []  # no failure, no warning
    runner(["q"] * 3, ["boom", "nan", "ok"], [{}, {}, {}])
    assert len(warnings) == 1
    message = warnings[0]
    assert "'flaky'" in message and "1 raised" in message and "1 invalid" in message and "of 3 calls" in message
    assert "KeyError: 'answer'" in message and "Traceback" in message  # the whole first traceback
    assert "scored 0.0" in message and "'len'" not in message
    runner(["q"], ["boom"], [{}])
    assert len(warnings) == 1  # later failures are counted, not repeated


def test_runner_summary_adds_up_the_whole_run():
    runner = RewardRunner({"flaky": flaky_reward, "len": length_reward})
    runner(["q"] * 2, ["ok", "fine"], [{}, {}])
    assert runner.summary() is None  # nothing failed
    runner(["q"] * 3, ["boom", "nan", "nan"], [{}, {}, {}])
    runner(["q"] * 2, ["boom", "ok"], [{}, {}])
    summary = runner.summary()
    assert summary == "reward errors: 'flaky' 2 raised, 2 invalid (NaN, inf or not a number) of 7 calls " \
                      "(first: KeyError: 'answer')", summary
    assert runner.total_stats().calls == 14 and runner.totals["flaky"].raised == 2


def test_summary_counts_timeouts():
    with RewardRunner({"slow": slow_reward}, timeout_s=0.5) as runner:
        runner(["q"] * 2, ["a", "b"], [{"delay": 0.0}, {"delay": 30.0}])
    assert runner.summary().startswith("reward errors: 'slow' 1 timed out of 2 calls (first: no result after 0.5 s")


def test_runner_rejects_a_non_positive_timeout():
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        RewardRunner({"len": length_reward}, timeout_s=0)


def test_a_timeout_needs_a_module_level_function_and_says_which_reward():
    with pytest.raises(TypeError, match="reward 'anon': a timeout runs it in a worker process"):
        RewardRunner({"anon": lambda p, c, **r: 1.0}, timeout_s=1.0)


def test_shared_safe_rewards_are_not_closed_by_a_second_runner():
    train = RewardRunner({"len": length_reward}, timeout_s=5.0)
    try:
        evaluation = RewardRunner({"len": train.rewards["len"]})
        assert evaluation.rewards["len"] is train.rewards["len"]
        assert evaluation(["q"], ["abc"], [{}]).total == [pytest.approx(0.3)]
        evaluation.close()
        assert train.rewards["len"]._pool._workers  # still running for the training runner
        assert train(["q"], ["abcd"], [{}]).total == [pytest.approx(0.4)]
    finally:
        train.close()


def test_every_reward_call_has_a_timeout_by_default():
    # Before the fix reward.timeout_s defaulted to null: a hanging reward hung the run.
    from posttrain.config import ConfigError, EvalConfig, load_config
    from posttrain.recipes.rl.config import RewardConfig, RLConfig

    cfg = load_config(RLConfig, None, [])
    assert cfg.reward.timeout_s == RewardConfig().timeout_s == DEFAULT_TIMEOUT_S == 30.0
    for bad in ("0", "-1", "null"):
        with pytest.raises(ConfigError, match="reward.timeout_s"):
            load_config(RLConfig, None, [f"reward.timeout_s={bad}"])
    assert load_config(RLConfig, None, ["reward.timeout_s=2.5"]).reward.timeout_s == 2.5
    # eval.timeout_s: null = the reward section's value (RL), 30 s (SFT, DPO); else positive.
    assert EvalConfig().timeout_s is None and cfg.eval.on_error is None
    with pytest.raises(ConfigError, match="eval.timeout_s"):
        load_config(RLConfig, None, ["eval.timeout_s=0"])
    # What the recipe builds from it: plain functions run in a worker process under that limit.
    with RewardRunner({"len": length_reward}, timeout_s=cfg.reward.timeout_s) as runner:
        assert runner.rewards["len"]._pool.timeout_s == 30.0
