"""Every example config in examples/ loads and validates against its recipe's config."""

from pathlib import Path

import pytest

from posttrain.cli import RECIPES, _recipe
from posttrain.config import load_config

EXAMPLES = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))
RECIPE_BY_PREFIX = {"sft": "sft", "rl": "rl", "demo": "demo", "dpo": "dpo", "reward": "reward-model", "ppo": "rl",
                    "pivotrl": "pivotrl", "eval": "eval"}


def test_there_are_examples_for_each_recipe_command():
    prefixes = {path.name.split("_")[0].split(".")[0] for path in EXAMPLES}
    commands = {RECIPE_BY_PREFIX.get(prefix, prefix) for prefix in prefixes}
    assert set(RECIPES) <= commands, set(RECIPES) - commands


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_is_valid(path):
    recipe = RECIPE_BY_PREFIX[path.name.split("_")[0].split(".")[0]]
    config_cls, _ = _recipe(recipe)
    load_config(config_cls, path)
