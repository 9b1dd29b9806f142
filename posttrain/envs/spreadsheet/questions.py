"""Question kinds: each builder takes explicit parameters and returns the question, its answer
computed with pandas, and the SQL the scripted expert will run.

The answer and the SQL are worked out separately on purpose (pandas masks and groupbys here,
DuckDB when the expert runs the query), so a test that the expert's answer matches `answer`
checks both, and the semantics where they could drift are pinned down once:

- a blank never satisfies a condition (SQL: NULL compares unknown; pandas: NaN/NA -> False);
- aggregates skip blanks; a filter whose values are all blank is degenerate (SQL would say NULL);
- groups never include the blank group (pandas drops NaN keys; the SQL says ``IS NOT NULL``),
  and a group whose values are all blank drops out (``sum(min_count=1)``; SQL ``NULLS LAST``).
  Those clauses appear only when the columns have blanks: the SQL is what the model learns to
  write, and the easy workbooks have none, so their queries stay short.

A builder raises `Degenerate` when the instance has no clean answer (an empty filter, a tie for
the top group, a list too long to read back); the sampler (sampling.py) then draws again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any, Mapping, Sequence

import pandas as pd

from posttrain.envs.spreadsheet.tables import column_type
from posttrain.envs.spreadsheet.tools import quote_identifier as ident
from posttrain.envs.spreadsheet.tools import quote_literal

__all__ = ["AGGREGATES", "ANSWER_KINDS", "Condition", "Degenerate", "QUESTION_KINDS", "Question", "aggregate",
           "argmax", "compare", "computation", "count", "join", "list_rows", "lookup", "top_k"]

ANSWER_KINDS = ("number", "text", "list", "date")
QUESTION_KINDS = ("lookup", "count", "aggregate", "argmax", "compare", "computation", "join", "list", "top_k")
AGGREGATES = {"sum": ("total", "SUM"), "mean": ("average", "AVG"), "min": ("smallest", "MIN"),
              "max": ("largest", "MAX")}
MAX_LIST_ITEMS = 8


class Degenerate(ValueError):
    """This instance has no clean answer; draw another."""


@dataclasses.dataclass(frozen=True)
class Condition:
    """A row filter: ``column op value``; op is "=" (text or key), ">" or "<" (numbers, dates)."""

    column: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in ("=", ">", "<"):
            raise ValueError(f"Condition op must be '=', '>' or '<', got {self.op!r}")

    @property
    def text(self) -> str:
        if self.op == "=":
            return f"{self.column} is {_show(self.value)}"
        if isinstance(self.value, dt.date):
            return f"{self.column} is {'after' if self.op == '>' else 'before'} {_show(self.value)}"
        return f"{self.column} is {'above' if self.op == '>' else 'below'} {_show(self.value)}"

    def sql(self, table: str | None = None) -> str:
        column = ident(self.column) if table is None else f"{ident(table)}.{ident(self.column)}"
        return f"{column} {self.op} {_literal(self.value)}"

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        values = frame[self.column]
        target = pd.Timestamp(self.value) if isinstance(self.value, dt.date) else self.value
        if self.op == "=":
            result = values == target
        elif self.op == ">":
            result = values > target
        else:
            result = values < target
        return result.fillna(False).astype(bool)  # a blank never matches (pd.NA -> False)


@dataclasses.dataclass(frozen=True)
class Question:
    """One question about a workbook.

    Attributes:
        kind: one of QUESTION_KINDS.
        text: what the user asks.
        answer: int / float (number), str (text; a date as YYYY-MM-DD), or list[str] (list).
        answer_kind: one of ANSWER_KINDS.
        ordered: for lists, whether the order is part of the answer.
        sheets: the sheets the expert describes before querying.
        sql: the one query whose result holds the answer (first column; every row for lists).
    """

    kind: str
    text: str
    answer: Any
    answer_kind: str
    sheets: tuple[str, ...]
    sql: str
    ordered: bool = False

    @property
    def plan(self) -> dict[str, Any]:
        """What the scripted expert does: describe `sheets`, run `sql`, answer from its result."""
        return {"sheets": list(self.sheets), "sql": self.sql}


def lookup(tables: Mapping[str, pd.DataFrame], sheet: str, key: str, key_value: Any, target: str) -> Question:
    """The `target` cell of the one row whose `key` is `key_value`."""
    frame = tables[sheet]
    rows = frame[Condition(key, "=", key_value).mask(frame)]
    if len(rows) != 1:
        raise Degenerate(f"{len(rows)} rows have {key} = {key_value!r}; a lookup needs exactly one")
    value = rows[target].iloc[0]
    if _is_blank(value):
        raise Degenerate(f"the {target} of that row is blank")
    kind = column_type(frame[target])
    answer, answer_kind = _scalar(value, kind)
    return Question("lookup", f"In {sheet}, what is the {target} where {key} is {_show(key_value)}?", answer,
                    answer_kind, (sheet,),
                    f"SELECT {ident(target)} FROM {ident(sheet)} WHERE {Condition(key, '=', key_value).sql()}")


def count(tables: Mapping[str, pd.DataFrame], sheet: str, conditions: Sequence[Condition]) -> Question:
    """How many rows meet every condition."""
    frame = tables[sheet]
    n = int(_mask(frame, conditions).sum())
    if n == 0:
        raise Degenerate("no row meets the conditions")
    return Question("count", f"In {sheet}, how many rows are there where {_and(conditions)}?", n, "number", (sheet,),
                    f"SELECT COUNT(*) FROM {ident(sheet)}{_where(conditions)}")


def aggregate(tables: Mapping[str, pd.DataFrame], sheet: str, column: str, agg: str,
              conditions: Sequence[Condition] = ()) -> Question:
    """sum / mean / min / max of `column` over the rows meeting the conditions."""
    frame = tables[sheet]
    values = frame.loc[_mask(frame, conditions), column].dropna()
    if values.empty:
        raise Degenerate("no non-blank value meets the conditions")
    word, function = AGGREGATES[agg]
    answer = _number(getattr(values, agg)())
    where = f" where {_and(conditions)}" if conditions else ""
    return Question("aggregate", f"In {sheet}, what is the {word} {column}{where}?", answer, "number", (sheet,),
                    f"SELECT {function}({ident(column)}) FROM {ident(sheet)}{_where(conditions)}")


_GROUP = {"sum": ("total", "SUM"), "mean": ("average", "AVG"), "count": ("rows", "COUNT")}


def argmax(tables: Mapping[str, pd.DataFrame], sheet: str, group: str, column: str | None, agg: str,
           highest: bool = True, conditions: Sequence[Condition] = ()) -> Question:
    """The value of `group` whose rows have the highest (lowest) sum / mean of `column`, or the
    most (fewest) rows when `agg` is "count" (then `column` is unused)."""
    frame = tables[sheet]
    selected = frame[_mask(frame, conditions) & frame[group].notna()]
    scores = _group_scores(selected, group, column, agg)
    if len(scores) < 2:
        raise Degenerate("fewer than two groups to choose from")
    ordered = scores.sort_values(ascending=not highest)
    if _close(ordered.iloc[0], ordered.iloc[1]):
        raise Degenerate(f"tie between {ordered.index[0]!r} and {ordered.index[1]!r}")
    alias, function = _GROUP[agg]
    if agg == "count":
        phrase = f"the {'most' if highest else 'fewest'} rows"
        measure = "COUNT(*)"
    else:
        phrase = f"the {'highest' if highest else 'lowest'} {alias} {column}"
        measure = f"{function}({ident(column)})"
    where = f" where {_and(conditions)}" if conditions else ""
    filters = ([f"{ident(group)} IS NOT NULL"] if _has_blanks(frame, group) else []) + [c.sql() for c in conditions]
    where_sql = " WHERE " + " AND ".join(filters) if filters else ""
    nulls = " NULLS LAST" if agg != "count" and _has_blanks(frame, column) else ""
    sql = (f"SELECT {ident(group)}, {measure} AS {alias} FROM {ident(sheet)}{where_sql} "
           f"GROUP BY {ident(group)} ORDER BY {alias} {'DESC' if highest else 'ASC'}{nulls} LIMIT 1")
    return Question("argmax", f"In {sheet}, which {group} has {phrase}{where}?", str(ordered.index[0]), "text",
                    (sheet,), sql)


def compare(tables: Mapping[str, pd.DataFrame], sheet: str, group: str, first: str, second: str, column: str,
            agg: str, higher: bool = True) -> Question:
    """Which of two groups has the higher (lower) sum / mean of `column`."""
    frame = tables[sheet]
    scores = _group_scores(frame[frame[group].isin([first, second])], group, column, agg)
    if len(scores) != 2:
        raise Degenerate(f"{first!r} or {second!r} has no {column} values")
    if _close(scores[first], scores[second]):
        raise Degenerate("the two groups tie")
    winner = first if (scores[first] > scores[second]) == higher else second
    alias, function = _GROUP[agg]
    nulls = " NULLS LAST" if _has_blanks(frame, column) else ""
    sql = (f"SELECT {ident(group)}, {function}({ident(column)}) AS {alias} FROM {ident(sheet)} "
           f"WHERE {ident(group)} IN ({quote_literal(first)}, {quote_literal(second)}) GROUP BY {ident(group)} "
           f"ORDER BY {alias} {'DESC' if higher else 'ASC'}{nulls} LIMIT 1")
    text = (f"In {sheet}, which {group} has the {'higher' if higher else 'lower'} {alias} {column}: "
            f"{first} or {second}?")
    return Question("compare", text, winner, "text", (sheet,), sql)


def computation(tables: Mapping[str, pd.DataFrame], sheet: str, group: str, first: str, second: str, column: str,
                agg: str, op: str) -> Question:
    """The difference (``op="difference"``) or ratio (``"ratio"``) of two groups' sum / mean of `column`."""
    frame = tables[sheet]
    a, b = (frame.loc[frame[group] == v, column].dropna() for v in (first, second))
    if a.empty or b.empty:
        raise Degenerate(f"{first!r} or {second!r} has no {column} values")
    a, b = _number(getattr(a, agg)()), _number(getattr(b, agg)())  # native: int sums stay ints
    alias, function = _GROUP[agg]
    parts = [f"(SELECT {function}({ident(column)}) FROM {ident(sheet)} WHERE {ident(group)} = {quote_literal(v)})"
             for v in (first, second)]
    if op == "difference":
        answer, word, sign = a - b, "minus", "-"
    elif op == "ratio":
        if b == 0:
            raise Degenerate("division by zero")
        answer, word, sign = a / b, "divided by", "/"
    else:
        raise ValueError(f"computation op must be 'difference' or 'ratio', got {op!r}")
    text = (f"In {sheet}, what is the {alias} {column} where {group} is {first} {word} "
            f"the {alias} {column} where {group} is {second}?")
    # The alias keeps the output's header short (DuckDB would echo both subqueries as the name).
    return Question("computation", text, answer, "number", (sheet,), f"SELECT {parts[0]} {sign} {parts[1]} AS {op}")


def join(tables: Mapping[str, pd.DataFrame], left: str, right: str, key: str, column: str | None, agg: str,
         conditions: Sequence[Condition], times: str | None = None) -> Question:
    """An aggregate over `left` rows whose `key` row in `right` meets the conditions: the sum / mean
    of left's `column` (times right's `times` column when given), or the row count (``agg="count"``).
    `key` must be unique in `right` (a lookup table), so the join never duplicates left rows."""
    lhs, rhs = tables[left], tables[right]
    if rhs[key].duplicated().any():
        raise ValueError(f"join: {right}.{key} is not unique, so it is not a lookup key")
    matched = rhs.loc[_mask(rhs, conditions), key]
    rows = lhs[lhs[key].isin(set(matched.dropna()))]
    on = f"{ident(left)} JOIN {ident(right)} ON {ident(left)}.{ident(key)} = {ident(right)}.{ident(key)}"
    where = " WHERE " + " AND ".join(c.sql(right) for c in conditions)
    opening = f"Joining {left} to {right} on {key}"
    if agg == "count":
        if rows.empty:
            raise Degenerate("no joined row meets the conditions")
        return Question("join", f"{opening}, how many {left} rows are there where {_and(conditions)}?", len(rows),
                        "number", (left, right), f"SELECT COUNT(*) FROM {on}{where}")
    values = rows[column].astype("float64") if times else rows[column]
    if times:
        values = values * rows[key].map(rhs.set_index(key)[times]).astype("float64")
    values = values.dropna()
    if values.empty:
        raise Degenerate("no non-blank joined value meets the conditions")
    word, function = AGGREGATES[agg]
    answer = _number(getattr(values, agg)())
    if times:
        measure, subject = f"{ident(left)}.{ident(column)} * {ident(right)}.{ident(times)}", f"{column} times {times}"
    else:
        measure, subject = f"{ident(left)}.{ident(column)}", column
    return Question("join", f"{opening}, what is the {word} {subject} where {_and(conditions)}?", answer, "number",
                    (left, right), f"SELECT {function}({measure}) FROM {on}{where}")


def list_rows(tables: Mapping[str, pd.DataFrame], sheet: str, key: str, conditions: Sequence[Condition]) -> Question:
    """Every `key` value of the rows meeting the conditions, as an unordered list."""
    frame = tables[sheet]
    values = frame.loc[_mask(frame, conditions), key].dropna()
    if not 2 <= len(values) <= MAX_LIST_ITEMS:
        raise Degenerate(f"{len(values)} rows match; a list question wants 2 to {MAX_LIST_ITEMS}")
    sql = f"SELECT {ident(key)} FROM {ident(sheet)}{_where(conditions)} ORDER BY {ident(key)}"
    return Question("list", f"In {sheet}, list every {key} where {_and(conditions)}.", [_item(v) for v in values],
                    "list", (sheet,), sql)


def top_k(tables: Mapping[str, pd.DataFrame], sheet: str, key: str, column: str, k: int,
          highest: bool = True) -> Question:
    """The `k` `key` values with the highest (lowest) `column`, in that order (an ordered list)."""
    frame = tables[sheet]
    ranked = frame[[key, column]].dropna().sort_values(column, ascending=not highest, kind="stable")
    if len(ranked) <= k:
        raise Degenerate(f"only {len(ranked)} rows to rank")
    scores = list(ranked[column].iloc[:k + 1])
    if any(_close(x, y) for x, y in zip(scores, scores[1:])):
        raise Degenerate("ties among the top rows make the order ambiguous")
    word = "highest" if highest else "lowest"
    not_null = f" WHERE {ident(column)} IS NOT NULL" if _has_blanks(frame, column) else ""
    sql = (f"SELECT {ident(key)}, {ident(column)} FROM {ident(sheet)}{not_null} "
           f"ORDER BY {ident(column)} {'DESC' if highest else 'ASC'} LIMIT {k}")
    return Question("top_k", f"In {sheet}, list the {k} {key} values with the {word} {column}, {word} first.",
                    [_item(v) for v in ranked[key].iloc[:k]], "list", (sheet,), sql, ordered=True)


def _group_scores(frame: pd.DataFrame, group: str, column: str | None, agg: str) -> pd.Series:
    """Per group (blank groups and groups with only blank values dropped): sum, mean or row count."""
    if agg == "count":
        return frame.groupby(group, dropna=True).size().astype("float64")
    grouped = frame.groupby(group, dropna=True)[column]
    scores = grouped.sum(min_count=1) if agg == "sum" else grouped.agg(agg)
    return scores.astype("float64").dropna()


def _has_blanks(frame: pd.DataFrame, column: str | None) -> bool:
    return column is not None and bool(frame[column].isna().any())


def _mask(frame: pd.DataFrame, conditions: Sequence[Condition]) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for condition in conditions:
        mask &= condition.mask(frame)
    return mask


def _where(conditions: Sequence[Condition]) -> str:
    return " WHERE " + " AND ".join(c.sql() for c in conditions) if conditions else ""


def _and(conditions: Sequence[Condition]) -> str:
    return " and ".join(c.text for c in conditions)


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def _is_blank(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _number(value: Any) -> int | float:
    """A pandas / numpy scalar as a JSON-friendly Python int or float."""
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else float(value)


def _scalar(value: Any, kind: str) -> tuple[Any, str]:
    if kind in ("int", "float"):
        return _number(value), "number"
    if kind == "date":
        return pd.Timestamp(value).date().isoformat(), "date"
    return _item(value), "text"


def _item(value: Any) -> str:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat()
    return str(value)


def _show(value: Any) -> str:
    """A value as the question text shows it (dates ISO, whole floats without '.0')."""
    if isinstance(value, (dt.date, pd.Timestamp)):
        return pd.Timestamp(value).date().isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _literal(value: Any) -> str:
    if isinstance(value, (dt.date, pd.Timestamp)):
        return f"DATE '{pd.Timestamp(value).date().isoformat()}'"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return _show(value)
    return quote_literal(value)
