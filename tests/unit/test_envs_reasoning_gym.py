"""reasoning-gym rows and rewards, and the builtin: prompt sources."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("reasoning_gym")

from posttrain.envs.base import SingleTurnEnv, run_episode  # noqa: E402
from posttrain.envs.reasoning_gym import (decode_entry, encode_entry, extract_final_answer,  # noqa: E402
                                          reasoning_gym_reward, reasoning_gym_rows)
from posttrain.envs.registry import builtin_prompt_rows, is_builtin_source  # noqa: E402

def columns(row):
    """The row's columns other than the prompt, as the RL recipe passes them to a reward."""
    return {k: v for k, v in row.items() if k != "prompt"}


FAMILIES = [("basic_arithmetic", {}), ("leg_counting", {}), ("spell_backward", {"min_word_len": 4})]


@pytest.mark.parametrize("task,kwargs", FAMILIES)
def test_rows_are_deterministic_and_json_safe(task, kwargs):
    rows = reasoning_gym_rows(task, 4, seed=11, **kwargs)
    assert rows == reasoning_gym_rows(task, 4, seed=11, **kwargs)
    assert rows != reasoning_gym_rows(task, 4, seed=12, **kwargs)
    assert json.loads(json.dumps(rows)) == rows  # survives a JSONL round trip unchanged
    for row in rows:
        entry = decode_entry(row["rg_entry"])
        assert row["prompt"] == [{"role": "user", "content": entry["question"]}]
        assert row["answer"] == entry["answer"] and row["rg_task"] == task
        assert json.loads(row["rg_config"]) == kwargs


@pytest.mark.parametrize("task,kwargs", FAMILIES)
def test_correct_answer_scores_one_and_wrong_scores_zero(task, kwargs):
    for row in reasoning_gym_rows(task, 3, seed=5, **kwargs):
        json_row = json.loads(json.dumps(row))
        right = f"Let me think.\n<answer>{row['answer']}</answer>"
        assert reasoning_gym_reward(row["prompt"], right, **columns(json_row)) == 1.0
        assert reasoning_gym_reward(row["prompt"], "<answer>zzz-not-it</answer>", **columns(json_row)) == 0.0


def test_reward_falls_back_to_whole_completion_and_accepts_messages():
    row = reasoning_gym_rows("basic_arithmetic", 1, seed=3)[0]
    assert reasoning_gym_reward(row["prompt"], f"  {row['answer']}\n", **columns(row)) == 1.0
    messages = [{"role": "assistant", "content": f"<answer>{row['answer']}</answer>"}]
    assert reasoning_gym_reward(row["prompt"], messages, **columns(row)) == 1.0


def test_single_turn_env_drives_a_reasoning_gym_row():
    row = reasoning_gym_rows("leg_counting", 1, seed=2)[0]

    class Turn:
        text = f"<answer>{row['answer']}</answer>"
        token_ids = [1, 2, 3]
        logprobs = [-1.0, -1.0, -1.0]

    traj = run_episode(SingleTurnEnv(reasoning_gym_reward), row, lambda m: Turn(), lambda h, new: [0] * 5)
    assert traj.reward == 1.0 and traj.loss_mask == [0] * 5 + [1] * 3


def test_extract_final_answer_takes_the_last_tag():
    assert extract_final_answer("<answer>1</answer> no, <answer> 2 </answer>") == "2"
    assert extract_final_answer("  42 ") == "42"


def test_entry_encoding_round_trips_tuples():
    # arc_agi's scorer compares tuple grids; plain JSON would turn them into lists and score 0.05.
    entry = {"question": "q", "answer": "a", "metadata": {"grid": ((1, 2), (3, 4)), "xs": [1, (2,)]}}
    assert decode_entry(encode_entry(entry)) == entry
    assert decode_entry(entry) is entry


def test_unknown_task_and_bad_options_are_named():
    with pytest.raises(ValueError, match=r"unknown reasoning-gym task 'basic_arithmatic'; did you mean basic_arithmetic"):
        reasoning_gym_rows("basic_arithmatic", 1, seed=0)
    with pytest.raises(ValueError, match=r"bad options \['no_such_field'\].*valid options: \[.*min_terms"):
        reasoning_gym_rows("basic_arithmetic", 1, seed=0, no_such_field=1)
    with pytest.raises(ValueError, match=r"\['size'\] are set by posttrain"):
        reasoning_gym_rows("basic_arithmetic", 1, seed=0, size=3)


def test_builtin_reasoning_gym_splits_are_disjoint_and_deterministic():
    source = "builtin:reasoning_gym/basic_arithmetic"
    train = builtin_prompt_rows(source, 30, seed=1, split="train", options={})
    test = builtin_prompt_rows(source, 30, seed=1, split="test", options={})
    assert train == builtin_prompt_rows(source, 30, seed=1, split="train", options={})
    questions = lambda rows: {r["prompt"][0]["content"] for r in rows}  # noqa: E731
    assert len(questions(train)) == 30 and len(questions(test)) == 30
    assert not questions(train) & questions(test)


def test_builtin_splits_avoid_both_ways_seeds_alone_would_leak():
    questions = lambda rows: {r["prompt"][0]["content"] for r in rows}  # noqa: E731
    # 1. reasoning-gym seeds entry i with seed + i, so adjacent seeds share 9 of 10 entries.
    seed0, seed1 = (questions(reasoning_gym_rows("basic_arithmetic", 10, seed=s)) for s in (0, 1))
    assert len(seed0 & seed1) == 9
    # 2. In a small space (1-digit, 2-term sums: a few hundred questions) far-apart seeds still
    #    collide (birthday effect); only the hash split of the question keeps test out of train.
    small = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    far = [questions(reasoning_gym_rows("basic_arithmetic", 60, seed=s, **small)) for s in (1234567, 7654321)]
    source = "builtin:reasoning_gym/basic_arithmetic"
    train = builtin_prompt_rows(source, 60, seed=0, split="train", options=dict(small))
    test = builtin_prompt_rows(source, 60, seed=0, split="test", options=dict(small, test_percent=50))
    assert far[0] & far[1], "premise: independent draws of this space overlap"
    assert len(questions(train)) == len(questions(test)) == 60
    assert not questions(train) & questions(test)


def test_builtin_arithmetic_and_errors():
    train = builtin_prompt_rows("builtin:arithmetic", 5, seed=0, split="train", options={"ops": ["+", "*"]})
    test = builtin_prompt_rows("builtin:arithmetic", 5, seed=0, split="test", options={"ops": ["+", "*"]})
    assert len(train) == len(test) == 5
    assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in test}
    assert is_builtin_source("builtin:arithmetic") and not is_builtin_source("data/train.jsonl")
    with pytest.raises(ValueError, match=r"builtin:arithmetic: unknown options \['digits'\]"):
        builtin_prompt_rows("builtin:arithmetic", 1, seed=0, split="train", options={"digits": 2})
    with pytest.raises(ValueError, match="unknown built-in data source 'builtin:nope'"):
        builtin_prompt_rows("builtin:nope", 1, seed=0, split="train", options={})
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        builtin_prompt_rows("builtin:arithmetic", 1, seed=0, split="eval", options={})
    with pytest.raises(ValueError, match=r"builtin:reasoning_gym/nope: unknown reasoning-gym task"):
        builtin_prompt_rows("builtin:reasoning_gym/nope", 1, seed=0, split="train", options={})


def test_exhausted_small_space_raises_for_test_and_repeats_for_train():
    # Sums of two 1-digit operands without parentheses or negation: a handful of hundred questions
    # at most, so 800 distinct ones cannot fit in either half of the split.
    tiny = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"],
            "allow_parentheses": False, "allow_negation": False}
    source = "builtin:reasoning_gym/basic_arithmetic"
    with pytest.raises(ValueError, match=r"basic_arithmetic.*distinct test questions.*fewer than the 800"):
        builtin_prompt_rows(source, 800, seed=0, split="test", options=dict(tiny))
    with pytest.warns(UserWarning, match="repeating them to make 800 rows"):
        train = builtin_prompt_rows(source, 800, seed=0, split="train", options=dict(tiny))
    assert len(train) == 800 and len({r["prompt"][0]["content"] for r in train}) < 800
