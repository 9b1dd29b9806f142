"""The scripted expert (SFT trajectories without an external model) and SQL equivalence.

The expert solves a generated task by really calling the tools along the task's plan:
``list_sheets`` -> ``describe_sheet`` of each sheet the question needs -> one ``query`` -> ``answer``
with the value read back from the query's printed output (not from the task's stored answer), so
every trajectory is one a model could have produced from what it saw, and a test that the
expert's answers match proves the tools print enough to answer. Easy tasks take 4 calls
(one sheet), joins 5. With fewer tools offered (`env.options.tools`) the expert skips the
exploring calls it does not have: questions name their sheets and columns, so ``query`` and
``answer`` alone still solve every task.

The conversation is in Hugging Face chat format: assistant turns carry ``tool_calls`` with
``arguments`` as a dict (what chat templates expect) and empty ``content``; each call is answered
by ``{"role": "tool", "name", "content"}`` with the tool's real output. It ends with the answer
call: in an episode the environment ends there, so no reply to it is ever seen by the model.

`queries_equivalent` is PivotRL's functional check for the query tool: a sampled query earns the
expert's credit when it returns the same rows on this workbook, whatever its text.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import math
from typing import Any, Mapping

from posttrain.envs.spreadsheet.tasks import SpreadsheetTask, prompt_messages
from posttrain.envs.spreadsheet.tools import SpreadsheetTools

__all__ = ["EXPLORING_TOOLS", "answer_from_output", "expert_messages", "queries_equivalent"]

EXPLORING_TOOLS = ("list_sheets", "describe_sheet")  # what the expert calls before its query, when offered

_MAX_COMPARED_ROWS = 10_000
_EQUAL_REL_TOL = 1e-6


def expert_messages(task: SpreadsheetTask | Mapping[str, Any], tools: SpreadsheetTools, *,
                    explore: tuple[str, ...] = EXPLORING_TOOLS) -> list[dict[str, Any]]:
    """The expert's whole conversation for `task` on `tools` (the task's workbook), calling the
    exploring tools in `explore` (a subset of EXPLORING_TOOLS) before its query.

    Raises ValueError naming the task when it has no plan (users' own tasks have none) or when a
    planned call fails (a plan that does not fit the workbook).
    """
    get = (lambda k: task.get(k)) if isinstance(task, Mapping) else (lambda k: getattr(task, k))
    plan, task_id = get("plan"), get("id")
    if not plan:
        raise ValueError(f"task {task_id!r} has no plan: the scripted expert solves generated tasks only")
    messages: list[dict[str, Any]] = list(prompt_messages(task))

    def call(name: str, **arguments: Any) -> str:
        try:
            output = getattr(tools, name)(**arguments)
        except ValueError as err:
            raise ValueError(f"task {task_id!r}: the expert's {name}({arguments}) failed: {err}") from err
        messages.append(_call_message(name, arguments))
        messages.append({"role": "tool", "name": name, "content": output})
        return output

    unknown = sorted(set(explore) - set(EXPLORING_TOOLS))
    if unknown:
        raise ValueError(f"expert_messages explore: unknown tools {unknown}; valid: {list(EXPLORING_TOOLS)}")
    if "list_sheets" in explore:
        call("list_sheets")
    if "describe_sheet" in explore:
        for sheet in plan["sheets"]:
            call("describe_sheet", sheet=sheet)
    output = call("query", sql=plan["sql"])
    answer = answer_from_output(output, get("answer_kind"))
    tools.answer(answer)
    messages.append(_call_message("answer", {"answer": answer}))
    return messages


def answer_from_output(output: str, answer_kind: str) -> str:
    """The answer a reader of `query`'s output gives: the first column of the first row, or of
    every row (comma-separated) for a list. Raises ValueError when the output has no rows."""
    lines = [line for line in output.splitlines() if not (line.startswith("[") and line.endswith("]"))]
    rows = list(csv.reader(lines))[1:]  # the first line is the header
    if not rows or not rows[0]:
        raise ValueError(f"the query returned no rows to answer from: {output!r}")
    if answer_kind == "list":
        return ", ".join(row[0] for row in rows)
    return rows[0][0]


def queries_equivalent(tools: SpreadsheetTools, sql_a: str, sql_b: str, *, ordered: bool = False,
                       timeout_s: float = 5.0) -> bool:
    """True when both queries run and return the same rows on this workbook: the same multiset
    (the same sequence when `ordered`), columns compared by position (names ignored), numbers
    equal within a relative 1e-6 (3 == 3.0; summation order changes the last bits). A query that
    fails, runs past `timeout_s` or returns more than 10,000 rows gives False."""
    results = []
    for sql in (sql_a, sql_b):
        try:
            columns, rows = tools.run_sql(sql, max_rows=_MAX_COMPARED_ROWS + 1, timeout_s=timeout_s)
        except ValueError:
            return False
        if len(rows) > _MAX_COMPARED_ROWS:
            return False
        results.append((len(columns), [tuple(_canonical(v) for v in row) for row in rows]))
    (width_a, rows_a), (width_b, rows_b) = results
    if width_a != width_b or len(rows_a) != len(rows_b):
        return False
    if ordered:
        return all(_rows_equal(a, b) for a, b in zip(rows_a, rows_b))
    rows_a, rows_b = sorted(rows_a, key=_sort_key), sorted(rows_b, key=_sort_key)
    if all(_rows_equal(a, b) for a, b in zip(rows_a, rows_b)):
        return True
    # Sorting by rounded keys can still order near-equal numbers differently; match row by row.
    unmatched = list(rows_b)
    for row in rows_a:
        hit = next((i for i, other in enumerate(unmatched) if _rows_equal(row, other)), None)
        if hit is None:
            return False
        unmatched.pop(hit)
    return True


def _call_message(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": dict(arguments)}}]}


def _canonical(value: Any) -> tuple:
    """A value as (type rank, comparable value): every number one float, dates ISO text."""
    if value is None:
        return (0, "")
    if isinstance(value, bool):
        return (1, float(value))
    if isinstance(value, (int, float, decimal.Decimal)):
        number = float(value)
        return (0, "") if math.isnan(number) else (1, number)
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return (2, value.isoformat())
    return (3, str(value))


def _sort_key(row: tuple) -> tuple:
    return tuple((rank, float(f"{v:.6g}")) if rank == 1 else (rank, v) for rank, v in row)


def _rows_equal(a: tuple, b: tuple) -> bool:
    for (rank_a, va), (rank_b, vb) in zip(a, b):
        if rank_a != rank_b:
            return False
        if rank_a == 1:
            if not math.isclose(va, vb, rel_tol=_EQUAL_REL_TOL, abs_tol=1e-9):
                return False
        elif va != vb:
            return False
    return True
