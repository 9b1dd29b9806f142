"""Math rewards: math_verify with gold first, parse failures score 0, hangs are killed."""

import time

import pytest

from posttrain.verifiers.math import MathVerifier, final_answer_text, math_lenient_reward, math_reward, parse_gold, score_math


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        (r"so the answer is $\boxed{\frac{3}{4}}$", "0.75", 1.0),  # fraction vs decimal
        (r"The answer is $\boxed{0.5}$.", r"\frac{1}{2}", 1.0),  # decimal vs bare LaTeX fraction
        (r"$\boxed{\frac{6}{8}}$", "3/4", 1.0),  # unreduced fraction vs plain expression
        (r"$\boxed{(x+1)^2}$", "x^2+2x+1", 1.0),  # bare gold is retried inside $...$
        (r"\boxed{\sqrt{2}}", r"\sqrt{2}", 1.0),
        (r"I think it is $\boxed{4}$", "3", 0.0),  # wrong answer
        (r"$\boxed{0.333}$", "1/3", 0.0),  # close is not equal
        ("asdf qwer zxcv", "12", 0.0),  # garbage: nothing to parse scores 0
        ("", "12", 0.0),
        (r"The answer is 7", 7, 1.0),  # numeric dataset column
    ],
)
def test_score_math(completion, answer, expected):
    assert score_math(completion, answer) == expected


# Strict final-answer rules (the module docstring): each row is (completion, gold, strict score,
# lenient score), the lenient column being math_verify on the whole completion.
TRAPS = [
    # hedges: several final answers offered
    ("The answer is 3 or 4", "4", 0.0, 0.0),
    ("Adding them up, so 3 or 4", "4", 0.0, 1.0),
    ("Either 4 or 5.", "4", 0.0, 0.0),
    (r"\boxed{3 \text{ or } 4}", "4", 0.0, 0.0),
    (r"\boxed{3} or \boxed{4}", "4", 0.0, 0.0),
    (r"\boxed{3}, \boxed{4}", "4", 0.0, 0.0),
    (r"$\boxed{x \lor y}$", "x", 0.0, 0.0),
    # an empty box is no answer, whatever the prose says after it
    (r"\boxed{} so it is 4", "4", 0.0, 1.0),
    # several boxes: the last one is the answer
    (r"\boxed{3} wait, no: 2 + 2 is \boxed{4}", "4", 1.0, 0.0),
    (r"\boxed{4} hmm, actually \boxed{3}", "4", 0.0, 0.0),
    (r"\boxed{\boxed{4}}", "4", 1.0, 1.0),  # nested
    (r"the sum is \boxed{4", "4", 1.0, 0.0),  # unclosed: runs to the end
    # without a box: after the last "answer is", else the last sentence
    ("2 + 2 makes 4. So the answer is: 4", "4", 1.0, 1.0),
    ("It is 4, not 3.", "4", 0.0, 0.0),
    ("x = 4", "4", 1.0, 1.0),
    # math_verify's equivalences, kept in both modes
    (r"\boxed{3/4}", "0.75", 1.0, 1.0),
    (r"\boxed{1,000}", "1000", 1.0, 1.0),  # thousands separator
    (r"\boxed{50\%}", "0.5", 1.0, 1.0),  # percent as a fraction...
    (r"\boxed{50\%}", "50", 1.0, 1.0),  # ...and as its number
    ("\\boxed{\u22123}", "-3", 1.0, 1.0),  # unicode minus
    (r"\boxed{10 \text{ cm}}", "10", 1.0, 1.0),  # units
    (r"\boxed{(1, 2]}", "(1,2]", 1.0, 1.0),  # intervals by their bounds
    (r"\boxed{[1, 2]}", "(1,2]", 0.0, 0.0),
    (r"\boxed{3, 2}", "$2, 3$", 1.0, 1.0),  # a set of solutions is a list, not a disjunction
]


@pytest.mark.parametrize("completion, answer, strict, lenient", TRAPS)
def test_final_answer_traps(completion, answer, strict, lenient):
    assert score_math(completion, answer) == strict
    assert score_math(completion, answer, strict=False) == lenient


def test_the_final_answer_is_the_last_box_or_the_answer_sentence():
    assert final_answer_text(r"\boxed{1} then \boxed{\boxed{ 2 }}") == ("2", False)
    assert final_answer_text(r"\boxed{1} or \boxed{2}") == ("2", True)
    assert final_answer_text(r"\boxed{ }") == (None, False)
    assert final_answer_text("We add. The answer is 5 or so") == ("5 or so", True)
    assert final_answer_text("First 2.\nThen 7") == ("Then 7", False)
    assert final_answer_text("") == (None, False)


def test_the_lenient_reward_is_registered_and_keeps_the_old_reading():
    from posttrain.rewards import resolve_reward

    assert resolve_reward("math_lenient") is math_lenient_reward
    assert math_lenient_reward(None, r"\boxed{} so it is 4", answer="4") == 1.0
    assert math_reward(None, r"\boxed{} so it is 4", answer="4") == 0.0


def test_gold_goes_first():
    """math_verify is asymmetric: with gold `1<x<2` a predicted interval `(1,2)` is accepted,
    but with gold `(1,2)` a predicted inequality is not (set-relation comparison is allowed
    only when the prediction is the set). Swapping the arguments would flip both results."""
    assert score_math("$(1,2)$", "$1<x<2$") == 1.0
    assert score_math("$1<x<2$", "$(1,2)$") == 0.0


def test_unparsable_gold_is_not_scorable():
    assert parse_gold("") == []
    assert score_math(r"\boxed{1}", "") is None


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(timeout_s=1.0) as v:
        yield v


def test_batch_scores_in_order(verifier):
    completions = [r"\boxed{2}", r"\boxed{3}", "no idea", r"\boxed{\frac{1}{2}}"]
    answers = ["2", "2", "2", "0.5"]
    assert verifier.score_batch(completions, answers) == [1.0, 0.0, 0.0, 1.0]
    assert verifier.counts["scored"] >= 4


def test_hung_item_is_killed_scored_zero_and_counted(verifier):
    # SymPy tries to evaluate 9^(9^(9^9)) exactly and never returns (checked: > 20 s).
    before = verifier.counts["timed_out"]
    start = time.monotonic()
    scores = verifier.score_batch([r"\boxed{9^{9^{9^{9}}}}", r"\boxed{5}"], ["1", "5"])
    assert scores == [0.0, 1.0]
    assert verifier.counts["timed_out"] == before + 1
    assert "1 s" in verifier.first_error
    assert time.monotonic() - start < 15  # 1 s timeout + a worker restart


def test_reward_function_contract(verifier):
    assert verifier("What is 1+1?", r"$\boxed{2}$", answer="2", level="easy") == 1.0
    assert math_reward("What is 1+1?", r"$\boxed{3}$", answer="2") == 0.0
    with pytest.raises(ValueError, match="'answer'"):
        verifier("prompt", "completion", solution="2")
    outcomes = verifier.batch(["p"], [r"\boxed{2}"], [{"answer": 2}])
    assert outcomes[0].status == "ok" and outcomes[0].value == 1.0
    with pytest.raises(ValueError, match="row 0 has no 'answer'"):
        verifier.batch(["p"], ["x"], [{"solution": 2}])


def test_runner_scores_math_and_format_together(verifier):
    """total = 1.0 * math + 0.1 * format:
    item 0: correct and well formed -> 1.0 + 0.1 = 1.1; item 1: wrong, well formed -> 0.1;
    item 2: correct answer, no tags -> 1.0 + 0.0 = 1.0."""
    from posttrain.verifiers.combine import RewardRunner
    from posttrain.verifiers.format import tag_format_reward

    runner = RewardRunner({"math": verifier, "format": tag_format_reward}, {"math": 1.0, "format": 0.1})
    completions = [r"<answer>$\boxed{4}$</answer>", r"<answer>$\boxed{5}$</answer>", r"$\boxed{4}$"]
    report = runner(["2+2?"] * 3, completions, [{"answer": "4"}] * 3)
    assert report.per_reward["math"] == [1.0, 0.0, 1.0]
    assert report.total == pytest.approx([1.1, 0.1, 1.0])
