"""Reward functions are found by built-in name or import path, with clear errors otherwise."""

import pytest

from posttrain.envs.arithmetic import arithmetic_reward
from posttrain.rewards import BUILTIN_REWARDS, resolve_reward


def test_builtin_names_resolve_to_callables():
    assert resolve_reward("arithmetic") is arithmetic_reward
    for name in BUILTIN_REWARDS:
        assert callable(resolve_reward(name))


def test_import_path():
    assert resolve_reward("posttrain.envs.arithmetic:arithmetic_reward") is arithmetic_reward


@pytest.mark.parametrize("name, message", [
    ("arithmetik", "unknown reward 'arithmetik'"),
    ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
    ("posttrain.envs.arithmetic:nope", "has no attribute 'nope'"),
])
def test_unknown_rewards_fail_clearly(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_reward(name)
