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
