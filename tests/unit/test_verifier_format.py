"""Format rewards and extractors."""

import pytest

from posttrain.verifiers.format import extract_boxed, extract_tag, tag_format_reward


def test_extract_tag_takes_the_last_complete_block():
    text = "I will write <answer>draft</answer> then\n<answer>\n 42 \n</answer> and stop"
    assert extract_tag(text) == "42"
    assert extract_tag("<answer>unclosed") is None
    assert extract_tag("<think>a</think>", "think") == "a"
    with pytest.raises(ValueError, match="tag"):
        extract_tag("x", "a b")


@pytest.mark.parametrize(
    "completion, kwargs, expected",
    [
        ("<answer>5</answer>", {}, 1.0),
        ("<think>2+3</think>\n<answer>5</answer>", {}, 1.0),
        ("<think>2+3</think><answer>5</answer>", {"require_think": True}, 1.0),
        ("<answer>5</answer>", {"require_think": True}, 0.0),  # think required but missing
        ("<answer>5</answer><think>late</think>", {}, 0.0),  # think must come first
        ("<think>a</think><think>b</think><answer>5</answer>", {}, 0.0),  # two think blocks
        ("<answer>5</answer><answer>6</answer>", {}, 0.0),  # answer twice
        ("<answer>  </answer>", {}, 0.0),  # empty answer
        ("</answer>5<answer>", {}, 0.0),  # closed before opened
        ("5", {}, 0.0),
        ("The result: <answer>5</answer>", {}, 1.0),
        ("The result: <answer>5</answer>", {"strict": True}, 0.0),  # text outside the blocks
        (" <think>x</think>\n<answer>5</answer>\n", {"strict": True}, 1.0),
        ("<final>5</final>", {"tag": "final", "think_tag": None}, 1.0),
    ],
)
def test_tag_format_reward(completion, kwargs, expected):
    assert tag_format_reward("prompt", completion, **kwargs) == expected


def test_tag_format_reward_ignores_dataset_columns():
    assert tag_format_reward("p", "<answer>1</answer>", answer="1", tests=[]) == 1.0


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{1} then \boxed{ 2 }", "2"),  # the last one, stripped
        (r"\fbox{x^{2}}", "x^{2}"),
        (r"answer: \boxed 7$", "7"),  # brace-less form
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not count
        (r"\boxed{3", None),  # unclosed
        ("no box here", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected
