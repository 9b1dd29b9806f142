"""Generation-based accuracy: one greedy completion per prompt, several sampled ones when asked."""

import pytest

from posttrain.engines.base import Completion
from posttrain.envs.arithmetic import arithmetic_reward
from posttrain.evaluation import evaluate_accuracy


class CountingEngine:
    """Prompt i's k-th sample answers "i" for k < i + 1, else "-1" (wrong), whatever the temperature."""

    def __init__(self):
        self.calls = []

    def generate(self, prompt_ids, sampling):
        self.calls.append(sampling)
        return [[Completion(i, [1], [0.0], str(i) if k <= i else "-1", "stop") for k in range(sampling.n)]
                for i in range(len(prompt_ids))]


ROWS = [{"prompt": "a", "answer": "0"}, {"prompt": "b", "answer": "1"}]


def test_sampled_accuracy_averages_over_samples_per_prompt():
    engine = CountingEngine()
    # n = 3: prompt 0 gets 1 right of 3, prompt 1 gets 2 of 3 -> 3/6.
    result = evaluate_accuracy(engine, ROWS, [[1], [2]], arithmetic_reward, max_new_tokens=4, temperature=1.0,
                               samples_per_prompt=3)
    assert result.accuracy == pytest.approx(0.5) and len(result.completions) == 6 and result.num_prompts == 2
    assert engine.calls[-1].n == 3


def test_greedy_takes_one_completion_per_prompt():
    engine = CountingEngine()
    result = evaluate_accuracy(engine, ROWS, [[1], [2]], arithmetic_reward, max_new_tokens=4, temperature=0.0,
                               samples_per_prompt=3)
    assert engine.calls[-1].n == 1 and result.accuracy == 1.0
    with pytest.raises(ValueError, match="samples_per_prompt"):
        evaluate_accuracy(engine, ROWS, [[1], [2]], arithmetic_reward, max_new_tokens=4, temperature=1.0,
                          samples_per_prompt=0)


# ----------------------------------------------------------------------------- scoring through a RewardRunner

import math  # noqa: E402
import time  # noqa: E402

from posttrain.compute import ComputeLedger  # noqa: E402
from posttrain.config import EvalConfig, load_config  # noqa: E402
from posttrain.evaluation import eval_config_runner, eval_reward_runner, task_accuracy  # noqa: E402
from posttrain.recipes.prompt_data import PromptSet  # noqa: E402
from posttrain.recipes.rl.config import RLConfig  # noqa: E402
from posttrain.recipes.rl.evaluation import evaluate_prompts, rl_eval_reward_runner  # noqa: E402
from posttrain.verifiers.combine import RewardError, RewardRunner  # noqa: E402
from reward_fixtures import hangs_on_prompt_b  # noqa: E402  (light module: fast worker starts)


def test_a_hanging_reward_is_stopped_by_the_runners_timeout_and_counted():
    engine = CountingEngine()
    with RewardRunner({"hangs": hangs_on_prompt_b}, timeout_s=0.5) as runner:
        start = time.monotonic()
        result = evaluate_accuracy(engine, ROWS, [[1], [2]], runner, max_new_tokens=4, temperature=0.0)
        assert time.monotonic() - start < 10
    # Prompt "a" is right; "b" timed out and scores 0.0 (on_error "zero"): 1 of 2, 1 error.
    assert result.accuracy == 0.5 and result.num_errors == 1 and "no result after 0.5 s" in result.first_error


def test_rl_evaluation_applies_reward_timeout_s_when_eval_reward_is_unset():
    # Before the fix evaluation called reward.functions[0] directly: a 20 s hang per item.
    cfg = load_config(RLConfig, None, ["reward.functions=[reward_fixtures:hangs_on_prompt_b]",
                                       "reward.timeout_s=0.5", "eval.num_samples=2", "rollout.temperature=1.0"])
    prompts = PromptSet(list(ROWS), [[1], [2]])
    start = time.monotonic()
    with rl_eval_reward_runner(cfg) as runner:
        metrics = evaluate_prompts(CountingEngine(), prompts, runner, cfg, ComputeLedger(), 10)
    assert time.monotonic() - start < 15
    assert metrics["eval/accuracy_greedy"] == 0.5 and metrics["eval/reward_errors_greedy"] == 1.0
    assert metrics["eval/reward_errors"] == 2.0  # greedy + sampled


def test_rl_evaluation_with_a_plain_function_still_gets_the_reward_sections_limits():
    cfg = load_config(RLConfig, None, ["reward.timeout_s=0.5", "eval.num_samples=2"])
    start = time.monotonic()
    metrics = evaluate_prompts(CountingEngine(), PromptSet(list(ROWS), [[1], [2]]), hangs_on_prompt_b, cfg,
                               ComputeLedger(), 10)
    assert time.monotonic() - start < 15
    assert metrics["eval/reward_errors_greedy"] == 1.0


def test_a_nan_reward_is_counted_never_a_silent_null_accuracy():
    cfg = load_config(RLConfig, None, ["reward.functions=[reward_fixtures:nan_reward]", "eval.num_samples=2"])
    with rl_eval_reward_runner(cfg) as runner:
        metrics = evaluate_prompts(CountingEngine(), PromptSet(list(ROWS), [[1], [2]]), runner, cfg,
                                   ComputeLedger(), 10)
    # on_error "zero": the NaNs score 0.0 and are counted; the accuracy is a number.
    assert metrics["eval/accuracy_greedy"] == 0.0 and metrics["eval/reward_errors_greedy"] == 2.0
    cfg = load_config(RLConfig, None, ["reward.functions=[reward_fixtures:nan_reward]", "reward.on_error=none",
                                       "eval.num_samples=2"])
    with rl_eval_reward_runner(cfg) as runner:
        metrics = evaluate_prompts(CountingEngine(), PromptSet(list(ROWS), [[1], [2]]), runner, cfg,
                                   ComputeLedger(), 10)
    # on_error "none": nothing is scorable, so the accuracy is NaN -- with the counts that say why.
    assert math.isnan(metrics["eval/accuracy_greedy"])
    assert metrics["eval/reward_errors_greedy"] == 2.0 and metrics["eval/unscorable_greedy"] == 2.0
    cfg = load_config(RLConfig, None, ["reward.functions=[reward_fixtures:nan_reward]", "reward.on_error=raise"])
    with rl_eval_reward_runner(cfg) as runner, pytest.raises(RewardError, match="nan_reward"):
        evaluate_prompts(CountingEngine(), PromptSet(list(ROWS), [[1], [2]]), runner, cfg, ComputeLedger(), 10)


def test_rl_eval_runner_picks_the_reward_and_the_limits():
    cfg = load_config(RLConfig, None, ["reward.functions=[arithmetic, tag_format]", "reward.timeout_s=7",
                                       "reward.on_error=none"])
    with rl_eval_reward_runner(cfg) as runner:
        assert list(runner.rewards) == ["arithmetic"]  # accuracy: the first function, not the weighted total
        assert runner.rewards["arithmetic"].on_error == "none"
        assert runner.rewards["arithmetic"]._pool.timeout_s == 7.0
    cfg = load_config(RLConfig, None, ["eval.reward=tag_format", "eval.timeout_s=3", "eval.on_error=raise"])
    with rl_eval_reward_runner(cfg) as runner:
        assert list(runner.rewards) == ["tag_format"] and runner.rewards["tag_format"].on_error == "raise"
        assert runner.rewards["tag_format"]._pool.timeout_s == 3.0


def test_rl_eval_runner_shares_the_training_runners_reward():
    cfg = load_config(RLConfig, None, [])
    with RewardRunner({"arithmetic": arithmetic_reward}, timeout_s=5.0) as train:
        with rl_eval_reward_runner(cfg, share=train) as runner:
            assert runner.rewards["arithmetic"] is train.rewards["arithmetic"]


def test_task_accuracy_scores_through_a_runner_and_reports_errors():
    warnings = []
    eval_cfg = EvalConfig(reward="reward_fixtures:hangs_on_prompt_b", num_samples=2, temperature=0.0,
                          timeout_s=0.5)
    with eval_config_runner(eval_cfg, warn=warnings.append) as runner:
        assert runner.rewards["reward_fixtures:hangs_on_prompt_b"]._pool.timeout_s == 0.5
        metrics = task_accuracy(CountingEngine(), ROWS, [[1], [2]], runner, eval_cfg, seed=0)
    assert metrics["eval/accuracy_greedy"] == 0.5 and metrics["eval/reward_errors"] == 1.0
    assert len(warnings) == 1 and "timed out" in warnings[0]
    assert eval_config_runner(EvalConfig()) is None  # no eval.reward: no runner
    # A reward name (or function) still works: wrapped for the call under eval.timeout_s.
    metrics = task_accuracy(CountingEngine(), ROWS, [[1], [2]], eval_cfg.reward, eval_cfg, seed=0)
    assert metrics["eval/reward_errors_greedy"] == 1.0


def test_eval_reward_runner_resolves_names():
    with eval_reward_runner("arithmetic", timeout_s=2.0) as runner:
        report = runner(["a"], ["4"], [{"answer": "4"}])
    assert report.total == [1.0]
