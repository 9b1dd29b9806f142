"""The spreadsheet environment as the recipes use it: `env.name: spreadsheet`.

    data.train: builtin:spreadsheet   generated tasks (env.options: num_train, num_eval, difficulty,
                                      questions_per_workbook, task_dir, tools, max_rows)
    data.train: my_tasks.jsonl        a user's own {file, question, answer} rows (.xlsx / .csv)

Each episode gets a `ToolEnvironment` whose tools are `SpreadsheetTools` bound to the row's
workbook (`query` interruptible, so a tool timeout really stops a runaway SQL query) and whose
finish tool is `answer`. The outcome reward is `spreadsheet_reward` (registered as the reward
`spreadsheet`): the final answer against the task's, with its kind's tolerance. The scripted
expert (`expert.py`) gives SFT data and PivotRL's candidates; PivotRL's functional verifier is
`spreadsheet_action_reward`: a sampled `query` call matches the expert's when the two queries
return the same result on this workbook, an `answer` call when the answer is right.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from posttrain.agents.action_match import json_equivalent
from posttrain.agents.tool_env import ToolEnvironment
from posttrain.agents.tools import tool_from_function
from posttrain.cache import cache_dir
from posttrain.envs.registry import EnvironmentSpec
from posttrain.envs.spreadsheet.answers import answer_matches
from posttrain.envs.spreadsheet.expert import EXPLORING_TOOLS, expert_messages, queries_equivalent
from posttrain.envs.spreadsheet.tasks import SpreadsheetTask, generate_tasks, load_tasks, prompt_messages
from posttrain.envs.spreadsheet.tools import SpreadsheetTools
from posttrain.envs.spreadsheet.workbook import WorkbookSpec
from posttrain.pivot.reward import action_match_reward

__all__ = ["BUILTIN_SOURCE", "SpreadsheetOptions", "environment_spec", "spreadsheet_action_reward",
           "spreadsheet_reward", "task_rows"]

BUILTIN_SOURCE = "builtin:spreadsheet"
TOOL_NAMES = ("list_sheets", "describe_sheet", "read_rows", "query")


@dataclasses.dataclass(frozen=True)
class SpreadsheetOptions:
    """`env.options` of the spreadsheet environment."""

    num_train: int = 200
    num_eval: int = 50
    difficulty: str = "easy"
    questions_per_workbook: int = 4
    # Where generated tasks are written, in train/ and test/ (null: the posttrain cache, keyed by the settings).
    task_dir: str | None = None
    # The tools the model gets (a subset of TOOL_NAMES; `answer` is always there).
    tools: tuple[str, ...] = TOOL_NAMES
    # Rows a tool shows at most.
    max_rows: int = 20

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> "SpreadsheetOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"env.options: unknown keys {unknown} for the spreadsheet environment; valid: {sorted(known)}")
        values = dict(options)
        if "tools" in values:
            values["tools"] = tuple(values["tools"])
            bad = sorted(set(values["tools"]) - set(TOOL_NAMES))
            if bad:
                raise ValueError(f"env.options.tools: unknown tools {bad}; valid: {list(TOOL_NAMES)}")
        made = cls(**values)
        if made.num_train < 1 or made.num_eval < 1:
            raise ValueError(f"env.options.num_train and num_eval must be >= 1, got {made.num_train}, {made.num_eval}")
        return made


def environment_spec(env_cfg) -> EnvironmentSpec:
    options = SpreadsheetOptions.from_dict(env_cfg.options or {})

    def make(row: Mapping[str, Any]) -> ToolEnvironment:
        return make_environment(row, options, parser=env_cfg.parser, timeout_s=env_cfg.tool_timeout_s)

    def rows(source: str, split: str, seed: int) -> list[dict] | None:
        return task_rows(source, split, seed, options)

    def experts(task_rows_: list[dict]) -> list[dict]:
        return expert_rows(task_rows_, options, parser=env_cfg.parser)

    return EnvironmentSpec(make=make, rows=rows, expert_rows=experts,
                           action_reward="posttrain.envs.spreadsheet.environment:spreadsheet_action_reward")


def make_environment(row: Mapping[str, Any], options: SpreadsheetOptions, *, parser: str = "hermes",
                     timeout_s: float = 10.0) -> ToolEnvironment:
    """One episode's environment for a task row; `close()` closes the workbook's connection."""
    opened: list[SpreadsheetTools] = []

    def tools(r: Mapping[str, Any]):
        sheet = SpreadsheetTools(r["file"], max_rows=options.max_rows)
        opened.append(sheet)
        methods = {"list_sheets": sheet.list_sheets, "describe_sheet": sheet.describe_sheet,
                   "read_rows": sheet.read_rows, "query": sheet.query}
        return [tool_from_function(methods[name], interrupt=sheet.interrupt if name == "query" else None)
                for name in options.tools]

    def score(r: Mapping[str, Any], final_answer: str | None, trajectory) -> float:
        return spreadsheet_reward(r.get("prompt"), final_answer or "", **{k: v for k, v in r.items() if k != "prompt"})

    def close() -> None:
        while opened:
            opened.pop().close()

    return ToolEnvironment(prompt=lambda r: r["prompt"], tools=tools, score=score, close=close, parser=parser,
                           timeout_s=timeout_s)


def task_rows(source: str, split: str, seed: int, options: SpreadsheetOptions) -> list[dict] | None:
    """Prompt rows for `source`: generated tasks (`builtin:spreadsheet`, train and test from
    different workbooks) or a task JSONL (all its rows; it has no "test" split of its own, so the
    caller holds some of its training rows out); None for any other source."""
    if source == BUILTIN_SOURCE:
        split = "train" if split == "train" else "test"
        n = options.num_train if split == "train" else options.num_eval
        # Different seeds per split: the held-out questions are about workbooks never trained on.
        split_seed = seed * 2 + (0 if split == "train" else 1)
        out = Path(options.task_dir) / split if options.task_dir else _cache_dir(options, split, split_seed, n)
        path = out / "tasks.jsonl"
        if not path.is_file():
            generate_tasks(out, n, split_seed, WorkbookSpec.for_difficulty(options.difficulty),
                           questions_per_workbook=options.questions_per_workbook)
        return [task_row(t) for t in load_tasks(path)]
    if isinstance(source, str) and source.endswith(".jsonl") and Path(source).is_file():
        return None if split == "test" else [task_row(t) for t in load_tasks(source)]
    return None


def task_row(task: SpreadsheetTask) -> dict:
    """A task as an RL prompt row: the opening messages plus the task's columns."""
    return {**task.to_row(), "prompt": prompt_messages(task)}


def expert_rows(rows: list[dict], options: SpreadsheetOptions, *, parser: str = "hermes") -> list[dict]:
    """The scripted expert's trajectory on each task, as chat records with the episode's tool schemas
    (exactly those the environment shows the model, the finish tool included); it uses only the
    tools offered (`options.tools`), and needs `query`."""
    if rows and "query" not in options.tools:
        raise ValueError(f"task {rows[0].get('id')}: the scripted expert answers through `query`, which "
                         f"env.options.tools {list(options.tools)} leaves out")
    explore = tuple(t for t in EXPLORING_TOOLS if t in options.tools)
    out = []
    for row in rows:
        env = make_environment(row, options, parser=parser)
        env.reset(row)
        schemas = env.tool_schemas
        env.close()  # only its tool schemas were needed
        with SpreadsheetTools(row["file"], max_rows=options.max_rows) as sheet:
            messages = expert_messages(row, sheet, explore=explore)
        out.append({**{k: v for k, v in row.items() if k != "prompt"}, "messages": messages,
                    "tools": schemas})
    return out


def spreadsheet_reward(prompt: Any, completion: str, answer: Any, answer_kind: str = "text", ordered: bool = False,
                       **row: Any) -> float:
    """1.0 when the episode's final answer matches the task's (answers.py tolerances), else 0.0."""
    return 1.0 if answer_matches(completion, answer, answer_kind, ordered) else 0.0


def spreadsheet_action_reward(prompt: Any, completion: str, expert_action: Mapping[str, Any], file: str,
                              answer: Any = None, answer_kind: str = "text", ordered: bool = False,
                              tool_parser: str = "hermes", **row: Any) -> float:
    """PivotRL's functional verifier on a workbook: same tool, and for `query` the same result on
    this workbook (not the same text), for `answer` a correct answer; other tools' arguments as JSON."""
    tools: list[SpreadsheetTools] = []

    def equivalent(name: str, sampled: Mapping[str, Any], expert: Mapping[str, Any]) -> bool:
        if name == "query" and isinstance(sampled.get("sql"), str) and isinstance(expert.get("sql"), str):
            if not tools:
                tools.append(SpreadsheetTools(file))
            return queries_equivalent(tools[0], sampled["sql"], expert["sql"])
        if name == "answer" and answer is not None and isinstance(sampled.get("answer"), str):
            return answer_matches(sampled["answer"], answer, answer_kind, ordered)
        return json_equivalent(name, sampled, expert)

    try:
        return action_match_reward(completion, expert_action, tool_parser, arguments_equivalent=equivalent)
    finally:
        for t in tools:
            t.close()


def _cache_dir(options: SpreadsheetOptions, split: str, seed: int, n: int) -> Path:
    key = json.dumps({"v": 1, "difficulty": options.difficulty, "per": options.questions_per_workbook,
                      "split": split, "seed": seed, "n": n}, sort_keys=True)
    return cache_dir("spreadsheet", hashlib.sha256(key.encode()).hexdigest()[:12])
