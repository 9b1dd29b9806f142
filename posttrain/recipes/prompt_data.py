"""Prompt rows for RL and evaluation: `{"prompt": ..., <other columns>}` plus their token ids."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from posttrain.config import DataConfig
from posttrain.data.examples import LoadedExamples, load_examples
from posttrain.data.tokenize import tokenize_prompt
from posttrain.envs.registry import builtin_prompt_rows, is_builtin_source
from posttrain.recipes.sft_data import BUILTIN_ARITHMETIC, arithmetic_task


@dataclass
class PromptSet:
    rows: list[dict]
    prompt_ids: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def _rows(loaded: LoadedExamples) -> list[dict]:
    return [{"prompt": ex.prompt, **ex.extras} for ex in loaded.examples]


def load_prompt_sets(cfg: DataConfig, tokenizer, *, seed: int, console=None) -> tuple[PromptSet, PromptSet]:
    """Training and held-out prompts. Prompts longer than `cfg.max_length` tokens are bad rows."""
    if cfg.train == BUILTIN_ARITHMETIC:
        task = arithmetic_task(cfg)
        train_rows = task.problems(cfg.arithmetic.num_train, seed=seed, split="train")
        eval_rows = task.problems(cfg.arithmetic.num_eval, seed=seed, split="test")
    elif is_builtin_source(cfg.train):
        gym = cfg.reasoning_gym
        options = {**gym.options, "test_percent": gym.test_percent}
        train_rows = builtin_prompt_rows(cfg.train, gym.num_train, seed, "train", options)
        eval_rows = builtin_prompt_rows(cfg.train, gym.num_eval, seed, "test", options)
    else:
        loaded = load_examples(cfg.train, "prompt", on_bad_row=cfg.on_bad_row, split=cfg.split, limit=cfg.limit,
                               prompt_field=cfg.prompt_field)
        if loaded.summary() and console is not None:
            console.print(f"[yellow]data: {loaded.summary()}[/yellow]")
        train_rows = _rows(loaded)
        if cfg.eval:
            eval_rows = _rows(load_examples(cfg.eval, "prompt", on_bad_row=cfg.on_bad_row,
                                            prompt_field=cfg.prompt_field))
        else:
            random.Random(seed).shuffle(train_rows)
            cut = int(len(train_rows) * cfg.eval_fraction) if len(train_rows) > 1 else 0
            eval_rows, train_rows = train_rows[:cut], train_rows[cut:]
        if cfg.prompt_field != "prompt":
            for row in train_rows + eval_rows:
                row["prompt"] = row.pop(cfg.prompt_field, row.get("prompt"))
    sets = []
    for rows in (train_rows, eval_rows):
        kept, ids = [], []
        for row in rows:
            prompt_ids = tokenize_prompt(row["prompt"], tokenizer)
            if len(prompt_ids) > cfg.max_length:
                if cfg.on_bad_row == "error":
                    raise ValueError(f"{cfg.train}: a prompt has {len(prompt_ids)} tokens, more than "
                                     f"data.max_length={cfg.max_length} (set data.on_bad_row=skip to drop such rows)")
                continue
            kept.append(row)
            ids.append(prompt_ids)
        sets.append(PromptSet(kept, ids))
    if console is not None:
        console.print(f"data: {len(sets[0])} training and {len(sets[1])} held-out prompts")
    return sets[0], sets[1]
