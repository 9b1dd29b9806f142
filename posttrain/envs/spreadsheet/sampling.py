"""Drawing questions for a workbook: which kinds a difficulty allows, and their random parameters.

Parameters are chosen from the columns' roles, found from the data rather than the themes, so any
workbook of canonical tables works:

    key       text (or an int named ...ID) column, never blank, every value different: finds one row
    category  text column with 2-10 repeated values: filters with "is", groups
    numeric   int / float column that is not a key: aggregated, compared with "above" / "below"
    date      date column: "after" / "before"

and a join needs a column that is a key in one sheet and present, with values drawn from it, in
another (Orders.ProductID -> Products.ProductID). Thresholds and filter values come from values
in the table, so conditions are rarely empty; the builders reject the degenerate draws that remain.

Difficulty sets the kinds and the number of conditions (easy: lookup, count, aggregate, argmax
with one condition, so the expert needs 4 tool calls; medium adds compare, computation, lists and
joins with up to 2 conditions; hard adds ordered top-k lists and up to 3 conditions).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping

import pandas as pd

from posttrain.envs.spreadsheet.questions import (Condition, Degenerate, Question, aggregate, argmax, compare,
                                                  computation, count, join, list_rows, lookup, top_k)
from posttrain.envs.spreadsheet.tables import column_type

__all__ = ["DIFFICULTY_KINDS", "column_roles", "foreign_keys", "generate_questions"]

DIFFICULTY_KINDS = {
    "easy": ("lookup", "count", "aggregate", "argmax"),
    "medium": ("lookup", "count", "aggregate", "argmax", "compare", "computation", "list", "join"),
    "hard": ("lookup", "count", "aggregate", "argmax", "compare", "computation", "list", "join", "top_k"),
}
_MAX_CONDITIONS = {"easy": 1, "medium": 2, "hard": 3}
_TRIES_PER_QUESTION = 40


def column_roles(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Columns by role (see the module docstring); a column has at most one role."""
    roles: dict[str, list[str]] = {"key": [], "category": [], "numeric": [], "date": []}
    for name in frame.columns:
        values = frame[name].dropna()
        kind = column_type(frame[name])
        unique = len(values) == len(frame) and values.is_unique and len(frame) >= 2
        if unique and (kind == "text" or (kind == "int" and str(name).lower().endswith("id"))):
            roles["key"].append(name)
        elif kind == "text" and 2 <= values.nunique() <= 10 and values.nunique() < len(values):
            roles["category"].append(name)
        elif kind in ("int", "float"):
            roles["numeric"].append(name)
        elif kind == "date":
            roles["date"].append(name)
    return roles


def foreign_keys(tables: Mapping[str, pd.DataFrame]) -> list[tuple[str, str, str]]:
    """``(left sheet, right sheet, column)`` where `column` is a key of right and every value of
    left's column appears there."""
    found = []
    for right, rhs in tables.items():
        for key in column_roles(rhs)["key"]:
            for left, lhs in tables.items():
                if left != right and key in lhs.columns:
                    values = set(lhs[key].dropna())
                    if values and values <= set(rhs[key]):
                        found.append((left, right, key))
    return found


def generate_questions(tables: Mapping[str, pd.DataFrame], n: int, seed: int | str, difficulty: str,
                       kinds: tuple[str, ...] | None = None) -> list[Question]:
    """Up to `n` distinct questions about `tables` (fewer when the workbook cannot give more),
    the same for the same (tables, seed, difficulty, kinds). Kinds take turns, so a workbook's
    questions spread over them; a kind the workbook cannot ask (a join with one sheet) is skipped.
    """
    if difficulty not in DIFFICULTY_KINDS:
        raise ValueError(f"difficulty must be one of {tuple(DIFFICULTY_KINDS)}, got {difficulty!r}")
    allowed = DIFFICULTY_KINDS[difficulty] if kinds is None else tuple(kinds)
    unknown = sorted(set(allowed) - set(_SAMPLERS))
    if unknown:
        raise ValueError(f"unknown question kinds {unknown}; known: {sorted(_SAMPLERS)}")
    rng = random.Random(f"spreadsheet-questions/{seed}/{difficulty}")
    context = _Context(tables, rng, _MAX_CONDITIONS[difficulty])
    order = [k for k in allowed if _SAMPLERS[k][0](context)]
    rng.shuffle(order)
    questions: list[Question] = []
    seen: set[str] = set()
    for attempt in range(n * len(order) * 2 if order else 0):
        if len(questions) == n:
            break
        kind = order[attempt % len(order)]
        question = _draw(kind, context, seen)
        if question is not None:
            seen.add(question.text)
            questions.append(question)
    return questions


def _draw(kind: str, context: "_Context", seen: set[str]) -> Question | None:
    for _ in range(_TRIES_PER_QUESTION):
        try:
            question = _SAMPLERS[kind][1](context)
        except Degenerate:
            continue
        if question.text not in seen:
            return question
    return None


class _Context:
    """The workbook with its roles computed once, and the shared random generator."""

    def __init__(self, tables: Mapping[str, pd.DataFrame], rng: random.Random, max_conditions: int) -> None:
        self.tables = tables
        self.rng = rng
        self.max_conditions = max_conditions
        self.roles = {name: column_roles(frame) for name, frame in tables.items()}
        self.joins = foreign_keys(tables)

    def sheets_with(self, *needs: str) -> list[str]:
        return [s for s, roles in self.roles.items() if all(roles[n] for n in needs)]

    def conditions(self, sheet: str, low: int = 1, exclude: tuple[str, ...] = ()) -> list[Condition]:
        """`low` to max_conditions conditions on distinct columns of `sheet`."""
        roles = self.roles[sheet]
        columns = [c for c in roles["category"] + roles["numeric"] + roles["date"] if c not in exclude]
        if len(columns) < low:
            raise Degenerate(f"{sheet} has too few columns to filter on")
        k = self.rng.randint(low, max(low, min(self.max_conditions, len(columns))))
        return [self.condition(sheet, c) for c in self.rng.sample(columns, k)]

    def condition(self, sheet: str, column: str) -> Condition:
        frame = self.tables[sheet]
        values = sorted(frame[column].dropna().unique())
        if not values:
            raise Degenerate(f"{sheet}.{column} is blank")
        if column in self.roles[sheet]["category"]:
            return Condition(column, "=", _plain(self.rng.choice(values)))
        # A threshold strictly inside the range, so neither side of it is empty.
        inner = values[1:-1] or values
        threshold = _plain(self.rng.choice(inner))
        if isinstance(threshold, float):
            threshold = int(threshold)  # "Price is above 25" reads better than 25.37, and is as good a filter
        return Condition(column, self.rng.choice((">", "<")), threshold)


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") and not isinstance(value, pd.Timestamp) else value
    return value.date() if isinstance(value, pd.Timestamp) else value


def _lookup(c: _Context) -> Question:
    sheet = c.rng.choice(c.sheets_with("key"))
    frame, roles = c.tables[sheet], c.roles[sheet]
    key = c.rng.choice(roles["key"])
    targets = [col for col in frame.columns if col != key and col not in roles["key"]] or \
              [col for col in frame.columns if col != key]
    if not targets:
        raise Degenerate(f"{sheet} has nothing to look up")
    return lookup(c.tables, sheet, key, _plain(c.rng.choice(list(frame[key]))), c.rng.choice(targets))


def _count(c: _Context) -> Question:
    sheet = c.rng.choice(list(c.tables))
    return count(c.tables, sheet, c.conditions(sheet))


def _aggregate(c: _Context) -> Question:
    sheet = c.rng.choice(c.sheets_with("numeric"))
    column = c.rng.choice(c.roles[sheet]["numeric"])
    return aggregate(c.tables, sheet, column, c.rng.choice(("sum", "mean", "min", "max")),
                     c.conditions(sheet, exclude=(column,)))


def _argmax(c: _Context) -> Question:
    sheet = c.rng.choice(c.sheets_with("category"))
    roles = c.roles[sheet]
    group = c.rng.choice(roles["category"])
    agg = c.rng.choice(("sum", "mean", "count") if roles["numeric"] else ("count",))
    column = c.rng.choice(roles["numeric"]) if agg != "count" else None
    conditions = c.conditions(sheet, low=0, exclude=(group, column)) if c.max_conditions > 1 else []
    return argmax(c.tables, sheet, group, column, agg, highest=c.rng.random() < 0.5,
                  conditions=conditions[:c.max_conditions - 1])


def _two_groups(c: _Context) -> tuple[str, str, str, str]:
    sheet = c.rng.choice(c.sheets_with("category", "numeric"))
    roles = c.roles[sheet]
    group = c.rng.choice(roles["category"])
    values = sorted(c.tables[sheet][group].dropna().unique())
    first, second = c.rng.sample(values, 2)
    return sheet, group, str(first), str(second)


def _compare(c: _Context) -> Question:
    sheet, group, first, second = _two_groups(c)
    return compare(c.tables, sheet, group, first, second, c.rng.choice(c.roles[sheet]["numeric"]),
                   c.rng.choice(("sum", "mean")), higher=c.rng.random() < 0.5)


def _computation(c: _Context) -> Question:
    sheet, group, first, second = _two_groups(c)
    return computation(c.tables, sheet, group, first, second, c.rng.choice(c.roles[sheet]["numeric"]),
                       c.rng.choice(("sum", "mean")), c.rng.choice(("difference", "ratio")))


def _join(c: _Context) -> Question:
    left, right, key = c.rng.choice(c.joins)
    right_roles, left_roles = c.roles[right], c.roles[left]
    numeric = [col for col in left_roles["numeric"] if col != key]
    conditions = c.conditions(right, exclude=(key,))[:max(1, c.max_conditions - 1)]
    shape = c.rng.choice(("count", "sum", "mean", "times") if numeric else ("count",))
    if shape == "count":
        return join(c.tables, left, right, key, None, "count", conditions)
    column = c.rng.choice(numeric)
    times = [col for col in right_roles["numeric"] if col not in c.tables[left].columns]
    if shape == "times" and times and c.max_conditions > 2:
        return join(c.tables, left, right, key, column, "sum", conditions, times=c.rng.choice(times))
    return join(c.tables, left, right, key, column, "mean" if shape == "mean" else "sum", conditions)


def _list(c: _Context) -> Question:
    sheet = c.rng.choice(c.sheets_with("key"))
    key = c.rng.choice(c.roles[sheet]["key"])
    return list_rows(c.tables, sheet, key, c.conditions(sheet, exclude=(key,)))


def _top_k(c: _Context) -> Question:
    sheet = c.rng.choice(c.sheets_with("key", "numeric"))
    roles = c.roles[sheet]
    return top_k(c.tables, sheet, c.rng.choice(roles["key"]), c.rng.choice(roles["numeric"]),
                 c.rng.randint(2, 3), highest=c.rng.random() < 0.5)


# kind -> (can this workbook ask it?, sampler)
_SAMPLERS: dict[str, tuple[Callable[[_Context], Any], Callable[[_Context], Question]]] = {
    "lookup": (lambda c: c.sheets_with("key"), _lookup),
    "count": (lambda c: bool(c.tables), _count),
    "aggregate": (lambda c: c.sheets_with("numeric"), _aggregate),
    "argmax": (lambda c: c.sheets_with("category"), _argmax),
    "compare": (lambda c: c.sheets_with("category", "numeric"), _compare),
    "computation": (lambda c: c.sheets_with("category", "numeric"), _computation),
    "join": (lambda c: c.joins, _join),
    "list": (lambda c: c.sheets_with("key"), _list),
    "top_k": (lambda c: c.sheets_with("key", "numeric"), _top_k),
}
