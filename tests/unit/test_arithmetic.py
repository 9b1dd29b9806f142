"""The arithmetic demo task: splits, determinism, answers and the reward."""

import random

import pytest

from posttrain.envs.arithmetic import (
    ArithmeticTask,
    arithmetic_reward,
    evaluate,
    extract_integer,
    near_miss,
    preference_rows,
    sft_rows,
    split_of,
)


def content(row):
    return row["prompt"][0]["content"]


def test_row_format_and_answers_are_correct():
    rows = ArithmeticTask().problems(50, seed=0)
    for row in rows:
        assert row["prompt"][0]["role"] == "user" and len(row["prompt"]) == 1
        a, b = content(row).rstrip("=").split("+")
        assert content(row).endswith("=") and 0 <= int(a) <= 99 and 0 <= int(b) <= 99
        assert row["answer"] == str(int(a) + int(b))


def test_train_and_test_are_disjoint_and_distinct():
    task = ArithmeticTask()
    train = {content(r) for r in task.problems(5000, seed=1)}
    test = {content(r) for r in task.problems(500, seed=1, split="test")}
    assert len(train) == 5000 and len(test) == 500  # no repeats inside a split
    assert not train & test
    assert all(split_of(c.rstrip("=")) == "test" for c in test)


def test_deterministic_for_a_seed():
    task = ArithmeticTask(ops=("+", "-"))
    assert task.problems(20, seed=3) == task.problems(20, seed=3)
    assert task.problems(20, seed=3) != task.problems(20, seed=4)
    assert task.problems(20, seed=3, split="test") == task.problems(20, seed=3, split="test")


def test_small_space_train_repeats_with_warning_test_refuses():
    task = ArithmeticTask(min_operand=0, max_operand=3)  # 16 problems in all
    n_test = sum(split_of(f"{a}+{b}") == "test" for a in range(4) for b in range(4))
    n_train = 16 - n_test
    with pytest.warns(UserWarning, match=f"only {n_train} are distinct"):
        rows = task.problems(40, seed=0)
    assert len(rows) == 40
    assert len({content(r) for r in rows}) == n_train  # every distinct train problem appears
    with pytest.raises(ValueError, match=f"only {n_test} distinct"):
        task.problems(n_test + 1, seed=0, split="test")


def test_large_space_uses_sampling_and_keeps_splits():
    task = ArithmeticTask(max_operand=999, num_terms=3, ops=("+", "*"))  # 10^9 * 4 expressions
    rows = task.problems(200, seed=0, split="test")
    expressions = [content(r).rstrip("=") for r in rows]
    assert len(set(expressions)) == 200 and all(split_of(e) == "test" for e in expressions)
    assert rows == task.problems(200, seed=0, split="test")


def test_evaluate_precedence_and_template():
    # 2+3*4 = 2+12 = 14;  10-2*3-1 = 10-6-1 = 3;  5*6 = 30
    assert evaluate((2, 3, 4), ("+", "*")) == 14
    assert evaluate((10, 2, 3, 1), ("-", "*", "-")) == 3
    assert evaluate((5, 6), ("*",)) == 30
    row = ArithmeticTask(template="What is {expr}?").problems(1, seed=0)[0]
    assert content(row).startswith("What is ") and content(row).endswith("?")


def test_invalid_task_settings():
    with pytest.raises(ValueError, match="ops"):
        ArithmeticTask(ops=("/",))
    with pytest.raises(ValueError, match="num_terms"):
        ArithmeticTask(num_terms=1)
    with pytest.raises(ValueError, match="expr"):
        ArithmeticTask(template="no placeholder")
    with pytest.raises(ValueError, match="min_operand"):
        ArithmeticTask(min_operand=5, max_operand=1)


def test_sft_rows():
    problems = [{"prompt": [{"role": "user", "content": "1+2="}], "answer": "3"}]
    assert sft_rows(problems) == [{"messages": [{"role": "user", "content": "1+2="},
                                                {"role": "assistant", "content": "3"}]}]


@pytest.mark.parametrize("text, value", [
    ("46", 46),
    ("  46", 46),
    ("\n-7 is it", -7),
    ("The answer is 12.", 12),
    ("12-5", 12),          # the first integer, not an expression
    ("\u22123", -3),       # Unicode minus sign
    ("3.5", None),         # first number is not an integer
    ("no digits", None),
    ("", None),
])
def test_extract_integer(text, value):
    assert extract_integer(text) == value


@pytest.mark.parametrize("completion, answer, reward", [
    ("46", "46", 1.0),
    (" 46<|im_end|>", "46", 1.0),
    ("46 or 47", "46", 1.0),
    ("47", "46", 0.0),
    ("4", "46", 0.0),
    ("-5", "-5", 1.0),
    ("5", "-5", 0.0),
    ("", "46", 0.0),
    ("forty-six", "46", 0.0),
    ([{"role": "assistant", "content": "46"}], "46", 1.0),  # conversational completion
    ("46", 46, 1.0),                                         # integer answer column
])
def test_reward_table(completion, answer, reward):
    assert arithmetic_reward([{"role": "user", "content": "x"}], completion, answer, extra_column="ignored") == reward


def test_label_noise_replaces_that_share_of_answers_with_near_misses():
    problems = ArithmeticTask(max_operand=49).problems(2000, seed=0)
    clean = sft_rows(problems)
    noisy = sft_rows(problems, label_noise=0.3, seed=0)
    assert noisy == sft_rows(problems, label_noise=0.3, seed=0)  # seeded
    answers = [int(p["answer"]) for p in problems]
    given = [int(row["messages"][-1]["content"]) for row in noisy]
    wrong = [(a, g) for a, g in zip(answers, given) if a != g]
    assert 0.26 < len(wrong) / len(problems) < 0.34
    assert [row["messages"][:-1] for row in noisy] == [row["messages"][:-1] for row in clean]
    with pytest.raises(ValueError, match="label_noise"):
        sft_rows(problems, label_noise=1.0)


def test_near_miss_is_always_wrong_and_close():
    rng = random.Random(0)
    for answer in [0, 7, 10, 46, 98, 150, -12]:
        for _ in range(50):
            miss = near_miss(answer, rng)
            assert miss != answer
            assert abs(miss - answer) <= 10 or len(str(abs(miss))) == len(str(abs(answer)))


def test_preference_rows_prefer_the_correct_answer():
    problems = ArithmeticTask(max_operand=9).problems(20, seed=1)
    rows = preference_rows(problems, seed=1)
    assert rows == preference_rows(problems, seed=1)
    for problem, row in zip(problems, rows):
        assert row["prompt"] == problem["prompt"] and row["chosen"] == problem["answer"]
        assert row["rejected"] != row["chosen"] and arithmetic_reward(None, row["rejected"], row["answer"]) == 0.0
