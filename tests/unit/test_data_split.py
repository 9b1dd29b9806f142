"""One held-out split for every recipe (SFT, preference pairs, KTO, RL prompts)."""

import json
import random

import pytest

from posttrain.config import DataConfig
from posttrain.data.split import held_out_count, hold_out
from posttrain.recipes.prompt_data import load_prompt_sets
from posttrain.recipes.sft_data import load_file_splits


class CharTokenizer:
    bos_token_id = eos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) % 100 for ch in text]}


def old_sft_split(items, fraction, seed):
    """The copy that `load_file_splits` and the KTO loader held before `hold_out` (commit 22d965e)."""
    train, held_out = list(items), []
    if fraction > 0 and len(train) > 1:
        shuffled = list(train)
        random.Random(seed).shuffle(shuffled)
        cut = max(1, int(len(shuffled) * fraction))
        held_out, train = shuffled[:cut], shuffled[cut:]
    return train, held_out


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 20, 101])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.05, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 1234])
def test_same_rows_as_the_sft_and_dpo_splits_before(n, fraction, seed):
    items = [f"row{i}" for i in range(n)]
    assert hold_out(items, fraction, seed) == old_sft_split(items, fraction, seed)


def test_a_small_set_still_gets_one_held_out_item():
    assert held_out_count(5, 0.05) == 1 and held_out_count(100, 0.05) == 5
    assert held_out_count(1, 0.5) == 0 and held_out_count(5, 0.0) == 0
    train, held_out = hold_out(list(range(5)), 0.05, seed=0)
    assert len(held_out) == 1 and sorted(train + held_out) == list(range(5))


def test_nothing_held_out_keeps_the_order_and_bad_fractions_are_named():
    assert hold_out([3, 1, 2], 0.0, seed=0) == ([3, 1, 2], [])
    with pytest.raises(ValueError, match=r"data.eval_fraction must be in \[0, 1\), got 1.0"):
        hold_out([1, 2], 1.0, seed=0, name="data.eval_fraction")


def test_rl_prompts_and_sft_rows_split_a_file_alike(tmp_path):
    # Before the fix a 10-row prompt file with eval_fraction 0.05 got no held-out prompt in RL
    # (int(10 * 0.05) == 0) while SFT held one out.
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1), "answer": str(i + 1)}) + "\n"
                            for i in range(10)))
    cfg = DataConfig(train=str(path), eval_fraction=0.05)
    train, held_out = load_prompt_sets(cfg, CharTokenizer(), seed=3)
    assert (len(train), len(held_out)) == (9, 1)
    sft_train, sft_held_out = load_file_splits(cfg, "sft", 3)
    assert [row["prompt"] for row in held_out.rows] == [ex.prompt for ex in sft_held_out.examples]
    assert [row["prompt"] for row in train.rows] == [ex.prompt for ex in sft_train.examples]
