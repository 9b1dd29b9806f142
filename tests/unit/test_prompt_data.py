"""Prompt sources for RL: built-in reasoning-gym families through the config, with task options."""

import pytest

pytest.importorskip("reasoning_gym")

from posttrain.config import ConfigError, DataConfig, load_config  # noqa: E402
from posttrain.envs.reasoning_gym import reasoning_gym_reward  # noqa: E402
from posttrain.models.loading import load_tokenizer  # noqa: E402
from posttrain.models.build import resolve_model_path  # noqa: E402
from posttrain.recipes.prompt_data import load_prompt_sets  # noqa: E402
from posttrain.recipes.rl.config import RLConfig  # noqa: E402


def test_reasoning_gym_source_with_options_from_overrides():
    cfg = load_config(RLConfig, None, [
        "data.train=builtin:reasoning_gym/basic_arithmetic", "data.reasoning_gym.num_train=12",
        "data.reasoning_gym.num_eval=4", "data.reasoning_gym.options.min_terms=2",
        "data.reasoning_gym.options.max_terms=2", "data.reasoning_gym.options.max_digits=1",
        "reward.functions=[reasoning_gym]",
    ])
    assert cfg.data.reasoning_gym.options == {"min_terms": 2, "max_terms": 2, "max_digits": 1}
    tokenizer = load_tokenizer(resolve_model_path("tiny"))
    train, held_out = load_prompt_sets(cfg.data, tokenizer, seed=0)
    assert (len(train), len(held_out)) == (12, 4)
    questions = [row["prompt"][-1]["content"] for row in train.rows]
    assert not set(questions) & {row["prompt"][-1]["content"] for row in held_out.rows}
    for row, ids in zip(train.rows, train.prompt_ids):
        assert row["rg_task"] == "basic_arithmetic" and ids
        # Two one-digit terms, as the options asked.
        columns = {k: v for k, v in row.items() if k != "prompt"}
        assert reasoning_gym_reward(row["prompt"], f"<answer>{row['answer']}</answer>", **columns) == 1.0


def test_unknown_reasoning_gym_task_and_bad_options_are_named():
    tokenizer = load_tokenizer(resolve_model_path("tiny"))
    with pytest.raises(ValueError, match="unknown reasoning-gym task 'basic_arithmetc'.*basic_arithmetic"):
        load_prompt_sets(DataConfig(train="builtin:reasoning_gym/basic_arithmetc"), tokenizer, seed=0)
    cfg = load_config(DataConfig, None, ["train=builtin:reasoning_gym/basic_arithmetic",
                                         "reasoning_gym.options.no_such_option=3"])
    with pytest.raises(ValueError, match="no_such_option"):
        load_prompt_sets(cfg, tokenizer, seed=0)


def test_options_must_be_a_mapping():
    with pytest.raises(ConfigError, match="reasoning_gym.options"):
        load_config(DataConfig, None, ["reasoning_gym.options=3"])


def test_a_dataset_answer_column_is_read_under_its_own_name(tmp_path):
    import json as _json

    from transformers import AutoTokenizer

    from posttrain.config import DataConfig
    from posttrain.models.tiny import build_tiny_model
    from posttrain.recipes.prompt_data import load_prompt_sets

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    path = tmp_path / "p.jsonl"
    path.write_text("".join(_json.dumps({"prompt": f"{i}+1=", "solution": str(i + 1)}) + "\n" for i in range(10)))
    cfg = DataConfig(train=str(path), answer_field="solution", eval_fraction=0.2)
    train, held = load_prompt_sets(cfg, tokenizer, seed=0, rewards=["arithmetic"])
    assert len(train) == 8 and len(held) == 2
    assert all(row["answer"] == str(int(row["prompt"].split("+")[0]) + 1) and "solution" not in row
               for row in train.rows + held.rows)
