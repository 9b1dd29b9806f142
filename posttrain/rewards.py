"""Reward functions by name.

A reward function is a plain callable `(prompt, completion, **row) -> float | None`; `row`
holds the dataset's other columns (`answer`, `tests`, ...). Configs name one either by a
built-in name, by `reward_model:/path/to/dir` (a reward model trained with `posttrain
reward-model`), or by an import path `package.module:function`, so a user plugs in their own
without touching posttrain.

A reward names the dataset columns it cannot work without through `required_columns`: its
``required_columns`` attribute when it has one (the built-in `math` and `code` rewards declare
``("answer",)`` and ``("tests",)``), else the parameters after ``(prompt, completion)`` that have
no default (``arithmetic_reward(prompt, completion, answer, **row)`` needs ``answer``).
`check_reward_columns` checks loaded rows against them, so a prompt file without the column
stops the run with the file and the column named, before any generation.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from posttrain.data.readers import DataError
from posttrain.import_path import lookup, resolve_import_path

RewardFn = Callable[..., Optional[float]]

BUILTIN_REWARDS = {
    "arithmetic": "posttrain.envs.arithmetic:arithmetic_reward",
    "math": "posttrain.verifiers.math:math_reward",
    "math_lenient": "posttrain.verifiers.math:math_lenient_reward",
    "code": "posttrain.verifiers.code:code_reward",
    "tag_format": "posttrain.verifiers.format:tag_format_reward",
    "reasoning_gym": "posttrain.envs.reasoning_gym:reasoning_gym_reward",
    "spreadsheet": "posttrain.envs.spreadsheet.environment:spreadsheet_reward",
}


REWARD_MODEL_PREFIX = "reward_model:"  # `reward_model:/path/to/dir`: a trained reward model's score


def resolve_reward(name: str) -> RewardFn:
    """A built-in reward by name, a reward model by `reward_model:<dir>`, or any callable by import path."""
    if name.startswith(REWARD_MODEL_PREFIX):  # checked before import paths, which also contain ':'
        from posttrain.verifiers.reward_model import reward_model_reward  # loads torch models: import lazily

        return reward_model_reward(name)
    # Built-in entries are import paths themselves, resolved only when used (they import heavy verifiers).
    target = lookup(BUILTIN_REWARDS, name, "reward", also="'reward_model:/path/to/dir'")
    return resolve_import_path(target, "reward") if isinstance(target, str) else target


Rewards = Union[Mapping[str, Union[RewardFn, str]], Iterable[Union[RewardFn, str]], Any]


def required_columns(fn: RewardFn) -> tuple[str, ...]:
    """The dataset columns reward `fn` needs in every row.

    Its ``required_columns`` attribute when it has one; else the parameters after the first two
    positional ones (prompt, completion) that have no default, e.g. ``answer`` of
    ``arithmetic_reward(prompt, completion, answer, **row)``. A `SafeReward` answers for the
    function it wraps. Callables whose signature cannot be read need nothing.
    """
    declared = getattr(fn, "required_columns", None)
    if declared is None and isinstance(fn, functools.partial):  # partial(code_reward, mode=...) keeps its columns
        declared = getattr(fn.func, "required_columns", None)
    if declared is not None:
        return (declared,) if isinstance(declared, str) else tuple(declared)
    from posttrain.verifiers.combine import SafeReward  # combine imports nothing from here; keep it lazy anyway

    if isinstance(fn, SafeReward):
        return required_columns(fn.fn)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins and some C callables have no readable signature
        return ()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    skip = {p.name for p in positional[:2]}  # prompt, completion
    return tuple(p.name for p in params
                 if p.name not in skip and p.default is p.empty
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def named_rewards(rewards: Rewards) -> list[tuple[str, RewardFn | None]]:
    """(name, function) pairs from a `RewardRunner`, a mapping name -> function or reward name,
    or a list of functions / reward names. Names are resolved, except `reward_model:` ones (a
    reward model needs no column, and loading it here would cost a model load)."""
    inner = getattr(rewards, "rewards", None)  # a RewardRunner
    if isinstance(inner, Mapping):
        rewards = inner
    items = rewards.items() if isinstance(rewards, Mapping) else [(None, r) for r in rewards]
    out = []
    for name, fn in items:
        if isinstance(fn, str):
            name, fn = name or fn, None if fn.startswith(REWARD_MODEL_PREFIX) else resolve_reward(fn)
        out.append((name or getattr(fn, "__name__", type(fn).__name__), fn))
    return out


def check_reward_columns(rewards: Rewards, rows: Sequence[Mapping[str, Any]], *, source: str,
                         row_numbers: Sequence[int] | None = None, on_bad_row: str = "error") -> list[int]:
    """Check that every row has the columns the rewards need (`required_columns`).

    Args:
        rewards: a `RewardRunner`, a mapping name -> reward function (or reward name), or a list
            of reward functions / names (as in ``reward.functions``).
        rows: the loaded rows, ``{"prompt": ..., <other columns>}``.
        source: the file or built-in source the rows came from, for the message.
        row_numbers: each row's number in `source` (JSONL: 1-based line; else 0-based row), as
            `DataError` reports it; without it the message counts rows as loaded.
        on_bad_row: "error" raises for the first row that lacks a column; "skip" leaves such
            rows out of the returned indices (a column that no row has raises either way).

    Returns:
        The indices of the rows to keep (all of them unless `on_bad_row` is "skip").

    Raises:
        DataError: naming `source`, the column and the reward that needs it.
    """
    needs = [(name, column) for name, fn in named_rewards(rewards) if fn is not None
             for column in required_columns(fn)]
    keep = list(range(len(rows)))
    if not needs or not rows:
        return keep
    lacking: dict[int, tuple[str, str]] = {}
    for i, row in enumerate(rows):
        for name, column in needs:
            if column not in row:
                lacking[i] = (name, column)
                break
    if not lacking:
        return keep
    for name, column in needs:
        if all(column not in row for row in rows):
            present = sorted(rows[0])
            raise DataError(source, None, column,
                            f"missing from every row, and reward {name!r} needs it (the rows have the columns "
                            f"{present}); add the column, or use a reward that fits this data")
    if on_bad_row == "skip":
        return [i for i in keep if i not in lacking]
    first = min(lacking)
    name, column = lacking[first]
    count = f"{len(lacking)} of {len(rows)} rows lack a column a reward needs; data.on_bad_row=skip drops them"
    if row_numbers is not None:
        raise DataError(source, row_numbers[first], column, f"missing; reward {name!r} needs it ({count})")
    raise DataError(source, None, column,
                    f"missing in loaded row {first} (0-based); reward {name!r} needs it ({count})")
