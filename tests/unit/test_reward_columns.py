"""Rewards declare the dataset columns they need; a prompt file without one stops the run with the
file and the column named (a DataError), not with a TypeError inside the first reward call."""

import json

import pytest

from posttrain.config import ArithmeticConfig, DataConfig, EvalConfig
from posttrain.data.readers import DataError
from posttrain.envs.arithmetic import arithmetic_reward
from posttrain.recipes.prompt_data import load_prompt_sets
from posttrain.recipes.sft_data import load_sft_data
from posttrain.rewards import check_reward_columns, required_columns, resolve_reward
from posttrain.verifiers.combine import RewardRunner, safe_reward


class CharTokenizer:
    """One id per character: enough for prompt rows."""

    bos_token_id = eos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) % 100 for ch in text]}


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_builtin_rewards_declare_their_columns():
    assert required_columns(resolve_reward("arithmetic")) == ("answer",)   # from the signature
    assert required_columns(resolve_reward("math")) == ("answer",)         # declared
    assert required_columns(resolve_reward("code")) == ("tests",)          # declared (tests=None in the signature)
    assert required_columns(resolve_reward("tag_format")) == ()
    assert required_columns(safe_reward(arithmetic_reward)) == ("answer",)  # through the wrapper

    def mine(prompt, completion, *, gold, hint=None, **row):
        return 0.0

    class Scorer:
        def __call__(self, prompt, completion, reference, **row):
            return 0.0

    assert required_columns(mine) == ("gold",)
    assert required_columns(Scorer()) == ("reference",)
    mine.required_columns = ("gold", "extra")
    assert required_columns(mine) == ("gold", "extra")


def test_a_column_no_row_has_names_the_file_column_and_reward(tmp_path):
    path = write(tmp_path / "prompts.jsonl", [{"prompt": "1+1=", "solution": "2"}] * 3)
    with pytest.raises(DataError, match=r"prompts.jsonl, field 'answer': missing from every row, and reward "
                                        r"'arithmetic' needs it \(the rows have the columns \['prompt', 'solution'\]"):
        check_reward_columns(["arithmetic"], [{"prompt": "1+1=", "solution": "2"}] * 3, source=path)


def test_rows_missing_a_column_name_the_line_or_are_skipped():
    rows = [{"prompt": "a", "answer": 1}, {"prompt": "b"}, {"prompt": "c", "answer": 3}, {"prompt": "d"}]
    with pytest.raises(DataError, match=r"p.jsonl, line 5, field 'answer': missing; reward 'arithmetic' needs it "
                                        r"\(2 of 4 rows lack"):
        check_reward_columns({"arithmetic": arithmetic_reward}, rows, source="p.jsonl", row_numbers=[1, 5, 6, 9])
    assert check_reward_columns(["arithmetic"], rows, source="p.jsonl", on_bad_row="skip") == [0, 2]
    with RewardRunner({"arithmetic": arithmetic_reward}) as runner:  # a runner works too
        assert check_reward_columns(runner, rows[:1], source="p.jsonl") == [0]
    assert check_reward_columns(["reward_model:/nowhere", "tag_format"], rows, source="p.jsonl") == [0, 1, 2, 3]


def test_load_prompt_sets_checks_the_file_against_the_rewards(tmp_path):
    # Before the fix this file loaded fine and the run died in evaluation with a bare TypeError.
    path = write(tmp_path / "prompts.jsonl", [{"prompt": f"{i}+1=", "solution": str(i + 1)} for i in range(10)])
    cfg = DataConfig(train=path, eval_fraction=0.2)
    with pytest.raises(DataError, match=r"prompts.jsonl, field 'answer': missing from every row, and reward "
                                        r"'arithmetic'"):
        load_prompt_sets(cfg, CharTokenizer(), seed=0, rewards=["arithmetic"])
    train, held_out = load_prompt_sets(cfg, CharTokenizer(), seed=0, rewards=["tag_format"])
    assert (len(train), len(held_out)) == (8, 2)
    # The eval reward is checked against the separate eval file.
    good = write(tmp_path / "good.jsonl", [{"prompt": "1+1=", "answer": "2"}] * 4)
    cfg = DataConfig(train=good, eval=path)
    with pytest.raises(DataError, match=r"prompts.jsonl, field 'answer'"):
        load_prompt_sets(cfg, CharTokenizer(), seed=0, rewards=["arithmetic"])
    load_prompt_sets(cfg, CharTokenizer(), seed=0, rewards=["arithmetic"], eval_rewards=["tag_format"])


def test_load_prompt_sets_skips_rows_without_the_column_when_asked(tmp_path):
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2="}, {"prompt": "3+3=", "answer": "6"}]
    path = write(tmp_path / "prompts.jsonl", rows)
    with pytest.raises(DataError, match=r"prompts.jsonl, line 2, field 'answer': missing"):
        load_prompt_sets(DataConfig(train=path, eval_fraction=0.0), CharTokenizer(), seed=0, rewards=["arithmetic"])
    train, _ = load_prompt_sets(DataConfig(train=path, eval_fraction=0.0, on_bad_row="skip"), CharTokenizer(),
                                seed=0, rewards=["arithmetic"])
    assert [row["prompt"] for row in train.rows] == ["1+1=", "3+3="]


def test_builtin_sources_are_checked_too():
    cfg = DataConfig(arithmetic=ArithmeticConfig(num_train=4, num_eval=2))
    with pytest.raises(DataError, match=r"builtin:arithmetic, field 'tests': missing from every row, "
                                        r"and reward 'code'"):
        load_prompt_sets(cfg, CharTokenizer(), seed=0, rewards=["code"])


def test_sft_evaluation_prompts_are_checked_against_eval_reward(tmp_path):
    prompts = write(tmp_path / "eval_prompts.jsonl", [{"prompt": "1+1=", "solution": "2"}])
    cfg = DataConfig(arithmetic=ArithmeticConfig(num_train=4, num_eval=2))
    with pytest.raises(DataError, match=r"eval_prompts.jsonl, field 'answer': missing from every row"):
        load_sft_data(cfg, CharTokenizer(), eval_cfg=EvalConfig(reward="arithmetic", prompts=prompts), seed=0)
