"""Reward functions by name.

A reward function is a plain callable `(prompt, completion, **row) -> float | None`; `row`
holds the dataset's other columns (`answer`, `tests`, ...). Configs name one either by a
built-in name or by an import path `package.module:function`, so a user plugs in their own
without touching posttrain.
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional

RewardFn = Callable[..., Optional[float]]

BUILTIN_REWARDS = {
    "arithmetic": "posttrain.envs.arithmetic:arithmetic_reward",
    "math": "posttrain.verifiers.math:math_reward",
    "code": "posttrain.verifiers.code:code_reward",
}


def import_object(path: str, *, what: str = "object"):
    """Import `package.module:attribute` (or `package.module.attribute`)."""
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"{what} {path!r} is not an import path like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r}: {err}") from err
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attribute!r}") from None


def resolve_reward(name: str) -> RewardFn:
    """A built-in reward by name, or any callable by import path."""
    target = BUILTIN_REWARDS.get(name)
    if target is None and ":" not in name and "." not in name:
        raise ValueError(f"unknown reward {name!r}; built-in rewards: {sorted(BUILTIN_REWARDS)}, "
                         "or give an import path 'package.module:function'")
    fn = import_object(target or name, what="reward")
    if not callable(fn):
        raise ValueError(f"reward {name!r} resolved to {fn!r}, which is not callable")
    return fn
