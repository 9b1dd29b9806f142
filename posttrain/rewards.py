"""Reward functions by name.

A reward function is a plain callable `(prompt, completion, **row) -> float | None`; `row`
holds the dataset's other columns (`answer`, `tests`, ...). Configs name one either by a
built-in name, by `reward_model:/path/to/dir` (a reward model trained with `posttrain
reward-model`), or by an import path `package.module:function`, so a user plugs in their own
without touching posttrain.
"""

from __future__ import annotations

from typing import Callable, Optional

from posttrain.import_path import is_import_path, resolve_import_path

RewardFn = Callable[..., Optional[float]]

BUILTIN_REWARDS = {
    "arithmetic": "posttrain.envs.arithmetic:arithmetic_reward",
    "math": "posttrain.verifiers.math:math_reward",
    "code": "posttrain.verifiers.code:code_reward",
    "tag_format": "posttrain.verifiers.format:tag_format_reward",
    "reasoning_gym": "posttrain.envs.reasoning_gym:reasoning_gym_reward",
}


REWARD_MODEL_PREFIX = "reward_model:"  # `reward_model:/path/to/dir`: a trained reward model's score


def resolve_reward(name: str) -> RewardFn:
    """A built-in reward by name, a reward model by `reward_model:<dir>`, or any callable by import path."""
    if name.startswith(REWARD_MODEL_PREFIX):  # checked before import paths, which also contain ':'
        from posttrain.verifiers.reward_model import reward_model_reward  # loads torch models: import lazily

        return reward_model_reward(name)
    if name in BUILTIN_REWARDS:
        return resolve_import_path(BUILTIN_REWARDS[name], "reward")
    if is_import_path(name):
        return resolve_import_path(name, "reward")
    raise ValueError(f"unknown reward {name!r}; built-in rewards: {sorted(BUILTIN_REWARDS)}, "
                     "'reward_model:/path/to/dir', or an import path 'package.module:function'")
