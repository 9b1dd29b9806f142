"""Prompt rows for RL and evaluation: `{"prompt": ..., <other columns>}` plus their token ids.

Without `data.eval`, a seeded `data.eval_fraction` of the training prompts is held out by
`posttrain.data.split.hold_out`, the split the SFT and preference recipes use too. Given the
rewards, `load_prompt_sets` checks that every row has the columns they need
(`posttrain.rewards.check_reward_columns`), so a file without e.g. ``answer`` stops the run with
the file and column named instead of failing inside the first reward call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from posttrain.config import DataConfig
from posttrain.data.examples import LoadedExamples, load_examples
from posttrain.data.split import hold_out
from posttrain.data.tokenize import tokenize_prompt
from posttrain.envs.registry import builtin_prompt_rows, is_builtin_source
from posttrain.recipes.sft_data import BUILTIN_ARITHMETIC, arithmetic_task
from posttrain.rewards import Rewards, check_reward_columns, named_rewards


@dataclass
class PromptSet:
    rows: list[dict]
    prompt_ids: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def _rows(loaded: LoadedExamples, cfg: DataConfig) -> list[dict]:
    """Prompt rows; a dataset's answer column (`data.answer_field`) is renamed `answer`, which
    the rewards read, before the reward columns are checked."""
    rows = [{"prompt": ex.prompt, **ex.extras} for ex in loaded.examples]
    if cfg.answer_field != "answer":
        for row in rows:
            if cfg.answer_field in row:
                row["answer"] = row.pop(cfg.answer_field)
    return rows


def _checked(rows: list[dict], rewards: Rewards | None, source: str, cfg: DataConfig,
             row_numbers: list[int] | None = None, console=None) -> list[dict]:
    """`rows` without those that lack a column the rewards need (data.on_bad_row=skip), or a
    DataError naming `source` and the column."""
    if rewards is None:
        return rows
    keep = check_reward_columns(rewards, rows, source=source, row_numbers=row_numbers, on_bad_row=cfg.on_bad_row)
    if len(keep) < len(rows):
        if console is not None:
            console.print(f"[yellow]data: {source}: skipped {len(rows) - len(keep)} rows without a column "
                          f"the rewards need[/yellow]")
        rows = [rows[i] for i in keep]
    return rows


def load_prompt_sets(cfg: DataConfig, tokenizer, *, seed: int, console=None, rewards: Rewards | None = None,
                     eval_rewards: Rewards | None = None,
                     source_rows: Callable[[str, str, int], list[dict] | None] | None = None
                     ) -> tuple[PromptSet, PromptSet]:
    """Training and held-out prompts. Prompts longer than `cfg.max_length` tokens are bad rows.

    `rewards` (reward names such as ``cfg.reward.functions``, name -> function, or a
    `RewardRunner`) are checked against the training rows, `eval_rewards` (default: `rewards`)
    against the held-out ones: a row without a column a reward needs is a bad row (DataError
    naming the file and column, or skipped and counted under ``data.on_bad_row=skip``); a
    column that no row has always raises.

    `source_rows(source, split, seed)`: an environment's own loader (`EnvironmentSpec.rows`); when
    it returns rows for `data.train` (its generated tasks, a task file it reads), those are used.
    The held-out rows are all of `data.eval` (split "eval"), else the source's own "test" split,
    else (a source without one returns None) a seeded `data.eval_fraction` of the training rows.
    """
    eval_rewards = rewards if eval_rewards is None else eval_rewards
    own = source_rows(cfg.train, "train", seed) if source_rows is not None else None
    if own is not None:
        held = source_rows(cfg.eval, "eval", seed) if cfg.eval else source_rows(cfg.train, "test", seed)
        if held is None and cfg.eval:
            raise ValueError(f"data.eval {cfg.eval!r}: the environment cannot read it (data.train {cfg.train!r} "
                             "is the environment's, so the held-out tasks must be too)")
        if held is None:  # a source without its own test split (a task file): hold some of it out
            own, held = hold_out(own, cfg.eval_fraction, seed, name="data.eval_fraction")
        train_rows = _checked(own, rewards, cfg.train, cfg, console=console)
        eval_rows = _checked(held, eval_rewards, cfg.eval or cfg.train + "/test", cfg, console=console)
    elif cfg.train == BUILTIN_ARITHMETIC:
        task = arithmetic_task(cfg)
        train_rows = task.problems(cfg.arithmetic.num_train, seed=seed, split="train")
        eval_rows = task.problems(cfg.arithmetic.num_eval, seed=seed, split="test")
        train_rows = _checked(train_rows, rewards, cfg.train, cfg, console=console)
        eval_rows = _checked(eval_rows, eval_rewards, cfg.train + "/test", cfg, console=console)
    elif is_builtin_source(cfg.train):
        gym = cfg.reasoning_gym
        options = {**gym.options, "test_percent": gym.test_percent}
        train_rows = builtin_prompt_rows(cfg.train, gym.num_train, seed, "train", options)
        eval_rows = builtin_prompt_rows(cfg.train, gym.num_eval, seed, "test", options)
        train_rows = _checked(train_rows, rewards, cfg.train, cfg, console=console)
        eval_rows = _checked(eval_rows, eval_rewards, cfg.train + "/test", cfg, console=console)
    else:
        loaded = load_examples(cfg.train, "prompt", on_bad_row=cfg.on_bad_row, split=cfg.split, limit=cfg.limit,
                               prompt_field=cfg.prompt_field)
        if loaded.summary() and console is not None:
            console.print(f"[yellow]data: {loaded.summary()}[/yellow]")
        train_rows = _rows(loaded, cfg)
        line_numbers = [ex.row for ex in loaded.examples]
        if cfg.eval:
            train_rows = _checked(train_rows, rewards, cfg.train, cfg, line_numbers, console)
            held = load_examples(cfg.eval, "prompt", on_bad_row=cfg.on_bad_row, prompt_field=cfg.prompt_field)
            eval_rows = _checked(_rows(held, cfg), eval_rewards, cfg.eval, cfg, [ex.row for ex in held.examples], console)
        else:
            # Both splits come from this file: check it against every reward before splitting.
            both = rewards if eval_rewards is rewards else _both(rewards, eval_rewards)
            train_rows = _checked(train_rows, both, cfg.train, cfg, line_numbers, console)
            train_rows, eval_rows = hold_out(train_rows, cfg.eval_fraction, seed, name="data.eval_fraction")
        if cfg.prompt_field != "prompt":
            for row in train_rows + eval_rows:
                row["prompt"] = row.pop(cfg.prompt_field, row.get("prompt"))

    sets = []
    for rows in (train_rows, eval_rows):
        kept, ids = [], []
        for row in rows:
            prompt_ids = tokenize_prompt(row["prompt"], tokenizer, tools=row.get("tools"))  # tool-use states
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


def _both(rewards: Rewards | None, eval_rewards: Rewards | None) -> dict | None:
    """Both sets as one mapping name -> reward, for rows that feed both splits."""
    pairs = [pair for group in (rewards, eval_rewards) if group is not None for pair in named_rewards(group)]
    return dict(pairs) if pairs else None
