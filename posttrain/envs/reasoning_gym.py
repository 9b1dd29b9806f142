"""Prompt rows and rewards from `reasoning-gym` (~100 procedurally generated task families, scored offline).

Optional dependency: ``pip install reasoning-gym``. It is imported lazily (importing it costs
~2 s, as it registers every task), so posttrain imports fine without it.

Each row carries what its reward needs, so rewards work on rows written to disk and read back:
``rg_task`` (the family), ``rg_entry`` (the generated entry, question / answer / metadata, as a
JSON string) and ``rg_config`` (the task options as a JSON string, since a few families' scorers
read their config). The entry is a JSON *string* rather than a nested dict because its metadata
differs from row to row, which Arrow-backed loaders (`datasets`) would coerce into one schema and
fill with nulls. Tuples are tagged in that JSON so the entry round-trips exactly (some scorers,
e.g. arc_agi's, compare tuple grids and would score a list-of-lists grid as wrong).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
import warnings
from typing import Any, Literal

__all__ = ["decode_entry", "encode_entry", "extract_final_answer", "reasoning_gym_reward",
           "reasoning_gym_rows", "reasoning_gym_split_rows", "split_seed", "task_names"]

_TUPLE_TAG = "__tuple__"
_ANSWER_TAG = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)


def _rg():
    try:
        import reasoning_gym
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the reasoning_gym data source needs the 'reasoning-gym' package: "
                          "pip install reasoning-gym") from exc
    return reasoning_gym


def task_names() -> list[str]:
    """Every registered reasoning-gym task family, sorted."""
    return sorted(_rg().factory.DATASETS)


def _check_task(task: str) -> None:
    names = task_names()
    if task not in names:
        close = difflib.get_close_matches(task, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown reasoning-gym task {task!r}; {hint}valid names include "
                         f"{', '.join(names[:8])}, ... ({len(names)} in all; see reasoning_gym.factory.DATASETS)")


def _dataset(task: str, seed: int, size: int, task_kwargs: dict[str, Any]):
    """A reasoning-gym dataset; entry i is generated lazily from (seed, i), so `size` costs nothing."""
    _check_task(task)
    reserved = {"seed", "size"} & set(task_kwargs)
    if reserved:
        raise ValueError(f"reasoning-gym task {task!r}: {sorted(reserved)} are set by posttrain (from the run's "
                         "seed and the number of rows); remove them from the task options")
    try:
        return _rg().create_dataset(task, seed=seed, size=size, **task_kwargs)
    except TypeError as exc:  # an unknown config field: list the valid ones
        config_cls = _rg().factory.DATASETS[task][1]
        fields = sorted(f for f in config_cls.__dataclass_fields__ if f not in ("seed", "size"))
        raise ValueError(f"reasoning-gym task {task!r}: bad options {sorted(task_kwargs)} ({exc}); "
                         f"valid options: {fields}") from exc


@functools.lru_cache(maxsize=64)
def _scorer(task: str, config_json: str):
    """The dataset object whose `score_answer` scores entries of (task, config); cached per config."""
    return _dataset(task, seed=0, size=1, task_kwargs=json.loads(config_json))


def _tag_tuples(value: Any) -> Any:
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_tag_tuples(v) for v in value]}
    if isinstance(value, list):
        return [_tag_tuples(v) for v in value]
    if isinstance(value, dict):
        return {k: _tag_tuples(v) for k, v in value.items()}
    return value


def _untag(obj: dict[str, Any]) -> Any:
    return tuple(obj[_TUPLE_TAG]) if set(obj) == {_TUPLE_TAG} else obj


def encode_entry(entry: dict[str, Any]) -> str:
    """A reasoning-gym entry as a JSON string that `decode_entry` turns back into an equal entry."""
    try:
        return json.dumps(_tag_tuples(entry), sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"reasoning-gym entry is not JSON-serialisable: {exc}") from exc


def decode_entry(text: str | dict[str, Any]) -> dict[str, Any]:
    """Inverse of `encode_entry`; a dict (an entry kept in memory) is returned unchanged."""
    if isinstance(text, dict):
        return text
    return json.loads(text, object_hook=_untag)


def _row(task: str, entry: dict[str, Any], config_json: str) -> dict[str, Any]:
    return {"prompt": [{"role": "user", "content": entry["question"]}], "answer": entry["answer"],
            "rg_task": task, "rg_entry": encode_entry(entry), "rg_config": config_json}


def _config_json(task_kwargs: dict[str, Any]) -> str:
    try:
        return json.dumps(task_kwargs, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"reasoning-gym task options must be JSON values: {exc}") from exc


def reasoning_gym_rows(task: str, n: int, seed: int, **task_kwargs: Any) -> list[dict[str, Any]]:
    """The first `n` entries of reasoning-gym's `task` for `seed`, as prompt rows.

    Rows: ``{"prompt": [{"role": "user", "content": question}], "answer": str | None, "rg_task": task,
    "rg_entry": <JSON string>, "rg_config": <JSON string of task_kwargs>}``. `task_kwargs` go to the
    task's config (e.g. ``min_terms=2`` for basic_arithmetic). Deterministic for (task, n, seed, kwargs).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    config_json = _config_json(task_kwargs)
    dataset = _dataset(task, seed, max(n, 1), task_kwargs)
    return [_row(task, dataset[i], config_json) for i in range(n)]


def _bucket(question: str) -> int:
    """0..99 from a SHA-256 of the question: stable across processes, unlike `hash()`."""
    return int(hashlib.sha256(question.encode("utf-8")).hexdigest()[:8], 16) % 100


def split_seed(seed: int, split: str) -> int:
    """Distinct generator seeds per split. reasoning-gym seeds entry i with ``seed + i``, so nearby
    seeds share entries; a hash puts the two splits' streams far apart."""
    return int(hashlib.sha256(f"{seed}/{split}".encode()).hexdigest()[:8], 16)


def reasoning_gym_split_rows(task: str, n: int, seed: int, split: Literal["train", "test"], *,
                             test_percent: int = 50, **task_kwargs: Any) -> list[dict[str, Any]]:
    """`n` distinct rows of `split`, with train and test guaranteed disjoint.

    Each split draws from its own seed (`split_seed`); on top of that a question belongs to test
    only when its hash bucket is below `test_percent`, so even families with few distinct
    questions never leak a test question into train. Drawing therefore generates about
    ``100 / percent`` entries per row kept (2x at the default 50). When the split runs out of
    distinct questions, train repeats rows (with a warning) and test raises.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 1 <= test_percent <= 99:
        raise ValueError(f"test_percent must be in [1, 99], got {test_percent}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    share = test_percent if split == "test" else 100 - test_percent
    max_draws = 4 * n * 100 // share + 100
    config_json = _config_json(task_kwargs)
    dataset = _dataset(task, split_seed(seed, split), max_draws, task_kwargs)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(max_draws):
        if len(rows) == n:
            break
        entry = dataset[i]
        question = entry["question"]
        if question in seen or (_bucket(question) < test_percent) != (split == "test"):
            continue
        seen.add(question)
        rows.append(_row(task, entry, config_json))
    if len(rows) < n:
        if split == "test" or not rows:
            raise ValueError(f"reasoning-gym task {task!r}: found only {len(rows)} distinct {split} questions in "
                             f"{max_draws} draws, fewer than the {n} asked for; ask for fewer or widen the "
                             "task options")
        warnings.warn(f"reasoning-gym task {task!r}: only {len(rows)} distinct train questions found; "
                      f"repeating them to make {n} rows", stacklevel=2)
        rows = [rows[i % len(rows)] for i in range(n)]
    return rows


def extract_final_answer(text: str) -> str:
    """The last ``<answer>...</answer>`` in `text`, else the whole text, stripped."""
    matches = _ANSWER_TAG.findall(text)
    return (matches[-1] if matches else text).strip()


def reasoning_gym_reward(prompt: Any, completion: Any, rg_task: str, rg_entry: str | dict[str, Any],
                         rg_config: str | None = None, **row: Any) -> float:
    """The task's own `score_answer` (in [0, 1]; some families give partial credit).

    `completion` is a string or chat messages (the last message's content is used). The answer is
    the last ``<answer>`` tag's content, else the whole completion. A scorer that raises on a
    malformed answer counts as 0.0: the answer, not the row, is at fault.
    """
    if isinstance(completion, list):
        completion = (completion[-1].get("content") or "") if completion else ""
    entry = decode_entry(rg_entry)
    scorer = _scorer(rg_task, rg_config or "{}")
    try:
        return float(scorer.score_answer(extract_final_answer(str(completion)), entry))
    except Exception:  # noqa: BLE001 - third-party scorers raise all sorts on garbage answers
        return 0.0
