"""Built-in prompt sources for the RL recipe: ``data.train: builtin:<name>``.

- ``builtin:arithmetic``: `ArithmeticTask`; options are its fields (min_operand, max_operand,
  ops, num_terms, template). Train / test are split by a hash of the expression.
- ``builtin:reasoning_gym/<task>``: a reasoning-gym family, e.g. ``builtin:reasoning_gym/basic_arithmetic``;
  options go to the task's config, plus ``test_percent`` (share of questions reserved for test,
  default 50). Train / test use different seeds and a hash split of the question, so they are disjoint.

Rows are ``{"prompt": [messages], "answer": ..., <other columns>}`` like any prompt file's rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from posttrain.envs.arithmetic import ArithmeticTask
from posttrain.import_path import lookup

__all__ = ["BUILTIN_PREFIX", "ENVIRONMENTS", "EnvironmentSpec", "builtin_prompt_rows", "environment_spec",
           "is_builtin_source"]

BUILTIN_PREFIX = "builtin:"
_REASONING_GYM = "reasoning_gym/"


def is_builtin_source(source: str) -> bool:
    """True for ``builtin:...`` data sources (as opposed to files or hub names)."""
    return isinstance(source, str) and source.startswith(BUILTIN_PREFIX)


def builtin_prompt_rows(source: str, n: int, seed: int, split: str, options: dict[str, Any] | None = None
                        ) -> list[dict[str, Any]]:
    """`n` prompt rows of `split` ("train" or "test") from a built-in source, deterministic for `seed`."""
    if split not in ("train", "test"):
        raise ValueError(f"{source}: split must be 'train' or 'test', got {split!r}")
    options = dict(options or {})
    name = source[len(BUILTIN_PREFIX):] if is_builtin_source(source) else ""
    if name == "arithmetic":
        return _arithmetic_task(source, options).problems(n, seed=seed, split=split)  # type: ignore[arg-type]
    if name.startswith(_REASONING_GYM) and len(name) > len(_REASONING_GYM):
        from posttrain.envs.reasoning_gym import reasoning_gym_split_rows  # lazy: optional dependency

        task = name[len(_REASONING_GYM):]
        test_percent = options.pop("test_percent", 50)
        try:
            return reasoning_gym_split_rows(task, n, seed, split, test_percent=test_percent, **options)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc
    raise ValueError(f"unknown built-in data source {source!r}; available: 'builtin:arithmetic', "
                     "'builtin:reasoning_gym/<task>' (e.g. builtin:reasoning_gym/basic_arithmetic), "
                     "'builtin:humaneval'")


def _arithmetic_task(source: str, options: dict[str, Any]) -> ArithmeticTask:
    fields = {f.name for f in dataclasses.fields(ArithmeticTask)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"{source}: unknown options {unknown}; valid options: {sorted(fields)}")
    if "ops" in options:  # YAML gives a list; the frozen dataclass wants a hashable tuple
        options["ops"] = tuple(options["ops"])
    try:
        return ArithmeticTask(**options)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class EnvironmentSpec:
    """What a multi-turn environment gives the recipes.

    Attributes:
        make: row -> a fresh Environment (one per episode: environments hold episode state).
        rows: (source, split, seed) -> prompt rows of a `data.train` / `data.eval` source the
            environment understands (its generated tasks, a user's task file), or None for one it
            does not (then the usual prompt-file loading applies). split: "train", "test" (the
            source's own held-out split; None when it has none, and a share of train is held
            out) or "eval" (all of an explicit `data.eval` source).
        expert_rows: task rows -> expert trajectories as chat records
            (``{"messages", "tools", <task columns>}``): SFT data and PivotRL's candidates.
        action_reward: import path of PivotRL's functional verifier for this environment's tools
            (a reward function over candidate rows, `posttrain.pivot.reward`).
    """

    make: Callable[[dict], Any]
    rows: Callable[[str, str, int], list[dict]] | None = None
    expert_rows: Callable[[list[dict]], list[dict]] | None = None
    action_reward: str = "posttrain.pivot.reward:exact_action_reward"


def _spreadsheet(env_cfg) -> EnvironmentSpec:
    from posttrain.envs.spreadsheet.environment import environment_spec  # lazy: openpyxl, duckdb

    return environment_spec(env_cfg)


# Multi-turn environments for `env.name`: each maps an `EnvConfig` (recipes/rl/config.py) to an
# EnvironmentSpec (or just the function row -> Environment).
ENVIRONMENTS: dict[str, Callable[[Any], Any]] = {"spreadsheet": _spreadsheet}


def environment_spec(env_cfg) -> EnvironmentSpec:
    """The spec of `env_cfg.name` (a name in ENVIRONMENTS or an import path to a factory)."""
    made = lookup(ENVIRONMENTS, env_cfg.name, "environment")(env_cfg)
    if isinstance(made, EnvironmentSpec):
        return made
    if not callable(made):
        raise ValueError(f"environment {env_cfg.name!r}: its factory must return an EnvironmentSpec or a function "
                         f"row -> Environment, got {type(made).__name__}")
    return EnvironmentSpec(make=made)
