"""Prompt rows for RL and evaluation: `{"prompt": ..., <other columns>}` plus their token ids.

Without `data.eval`, a seeded `data.eval_fraction` of the training prompts is held out by
`posttrain.data.split.hold_out`, the split the SFT and preference recipes use too; with it, it
is the held-out set whatever `data.train` is. Prompt files may be benchmark files as published
(HumanEval, GSM8K, MATH: `data.format`, `posttrain.data.benchmarks`). Given the
rewards, `load_prompt_sets` checks that every row has the columns they need
(`posttrain.rewards.check_reward_columns`), so a file without e.g. ``answer`` stops the run with
the file and column named instead of failing inside the first reward call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from posttrain.config import DataConfig
from posttrain.data.benchmarks import is_benchmark_source, load_prompt_examples
from posttrain.data.examples import LoadedExamples
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


def _rows(loaded: LoadedExamples, cfg: DataConfig, fmt: str) -> list[dict]:
    """Prompt rows; in posttrain's own format a dataset's answer column (`data.answer_field`) is
    renamed `answer`, which the rewards read, before the reward columns are checked (benchmark
    rows already name their columns as the rewards want them)."""
    rows = [{**ex.extras, "prompt": ex.prompt} for ex in loaded.examples]
    if fmt == "prompt" and cfg.answer_field != "answer":
        for row in rows:
            if cfg.answer_field in row:
                row["answer"] = row.pop(cfg.answer_field)
    return rows


def _file_rows(source: str, cfg: DataConfig, console, *, split=None, limit=None) -> tuple[list[dict], list[int]]:
    """The rows of a prompt file or benchmark (read as `data.format` says) and their row numbers."""
    loaded, fmt = load_prompt_examples(source, cfg.format, on_bad_row=cfg.on_bad_row, split=split, limit=limit,
                                       prompt_field=cfg.prompt_field)
    if loaded.summary() and console is not None:
        console.print(f"[yellow]data: {loaded.summary()}[/yellow]")
    return _rows(loaded, cfg, fmt), [ex.row for ex in loaded.examples]


def _training_source(cfg: DataConfig, seed: int, console) -> tuple[list[dict], list[int] | None, list[dict] | None]:
    """(rows, their row numbers in the file or None, the source's own test split or None) of data.train."""
    if cfg.train == BUILTIN_ARITHMETIC:
        task = arithmetic_task(cfg)
        return (task.problems(cfg.arithmetic.num_train, seed=seed, split="train"), None,
                task.problems(cfg.arithmetic.num_eval, seed=seed, split="test"))
    if is_builtin_source(cfg.train) and not is_benchmark_source(cfg.train):
        gym, options = cfg.reasoning_gym, {**cfg.reasoning_gym.options, "test_percent": cfg.reasoning_gym.test_percent}
        return (builtin_prompt_rows(cfg.train, gym.num_train, seed, "train", options), None,
                builtin_prompt_rows(cfg.train, gym.num_eval, seed, "test", options))
    rows, numbers = _file_rows(cfg.train, cfg, console, split=cfg.split, limit=cfg.limit)
    return rows, numbers, None


def _eval_source(cfg: DataConfig, seed: int, console) -> tuple[list[dict], list[int] | None]:
    """The rows of data.eval: a built-in task's test split, or all of a file or benchmark."""
    if cfg.eval == BUILTIN_ARITHMETIC:
        return arithmetic_task(cfg).problems(cfg.arithmetic.num_eval, seed=seed, split="test"), None
    if is_builtin_source(cfg.eval) and not is_benchmark_source(cfg.eval):
        gym = cfg.reasoning_gym
        return builtin_prompt_rows(cfg.eval, gym.num_eval, seed, "test",
                                   {**gym.options, "test_percent": gym.test_percent}), None
    return _file_rows(cfg.eval, cfg, console)


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
                     source_rows: Callable[[str, str, int], list[dict] | None] | None = None,
                     held_out_only: bool = False) -> tuple[PromptSet, PromptSet]:
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
    Files are read as `data.format` says: posttrain's prompt rows or a benchmark's
    (`posttrain.data.benchmarks`), `builtin:humaneval` among them.

    `held_out_only`: with `data.eval` set, data.train is not read and the training set is empty
    (for evaluation, which uses only the held-out prompts).
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
    else:
        # With data.eval given, it is the held-out set whatever data.train is (a built-in task's own
        # test split is used only without one).
        skip_train = held_out_only and bool(cfg.eval)
        train_rows, numbers, test_rows = ([], None, None) if skip_train else _training_source(cfg, seed, console)
        if cfg.eval:
            train_rows = _checked(train_rows, rewards, cfg.train, cfg, numbers, console)
            held, held_numbers = _eval_source(cfg, seed, console)
            eval_rows = _checked(held, eval_rewards, cfg.eval, cfg, held_numbers, console)
        elif test_rows is not None:
            train_rows = _checked(train_rows, rewards, cfg.train, cfg, numbers, console)
            eval_rows = _checked(test_rows, eval_rewards, cfg.train + "/test", cfg, console=console)
        else:
            # Both splits come from this file: check it against every reward before splitting.
            both = rewards if eval_rewards is rewards else _both(rewards, eval_rewards)
            train_rows = _checked(train_rows, both, cfg.train, cfg, numbers, console)
            train_rows, eval_rows = hold_out(train_rows, cfg.eval_fraction, seed, name="data.eval_fraction")

    sets = []
    for rows, source in ((train_rows, cfg.train), (eval_rows, cfg.eval or cfg.train)):
        kept, ids = [], []
        for row in rows:
            prompt_ids = tokenize_prompt(row["prompt"], tokenizer, tools=row.get("tools"))  # tool-use states
            if len(prompt_ids) > cfg.max_length:
                if cfg.on_bad_row == "error":
                    raise ValueError(f"{source}: a prompt has {len(prompt_ids)} tokens, more than "
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
