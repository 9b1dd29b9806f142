"""The spreadsheet tools the model calls, and the SQL sandbox behind `query`.

`SpreadsheetTools` holds one workbook. Its public methods `list_sheets`, `describe_sheet`,
`read_rows`, `query` and `answer` are the tools: type-hinted, with Google-style docstrings, so
`transformers.utils.get_json_schema` turns each into the schema the chat template shows. Their
docstrings are kept to a line because every schema is rendered into the prompt of a model with
a 1-2k token context; the reasons live here and in comments instead.

Outputs are compact text: one line per sheet or column, CSV rows capped at `max_rows` with a
closing ``[...]`` note when more exist, floats with at most 6 decimals (enough for the answer
check's 1e-4 relative tolerance, answers.py, and far shorter than repr), dates as YYYY-MM-DD.
Errors raise ValueError with a message meant for the model (an unknown sheet lists the sheets);
a tool runner turns them into error observations.

Sandbox. The policy under training writes the SQL, so a query may read the workbook and nothing
else. Each instance has its own in-memory DuckDB connection holding copies of the sheets, then:
external access off (no files, COPY, ATTACH, INSTALL/LOAD, pandas replacement scans, which
would otherwise let ``FROM some_variable`` read a Python object in the caller's frames),
extension autoloading off, and the configuration locked so a query cannot turn any of it back
on. DuckDB has no read-only in-memory database, so writes are refused before execution: the
text must parse as exactly one statement of type SELECT (DuckDB's own parser decides, so
comments or odd spacing cannot smuggle a second statement through). The connection is
single-threaded with a memory cap, and `interrupt()` stops a running query so a caller's
timeout (the ToolBox's, or `run_sql`'s own `timeout_s`) really ends a cross-join bomb.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import functools
import io
import math
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import duckdb
import numpy as np
import pandas as pd

from posttrain.envs.spreadsheet.tables import column_type, load_tables

__all__ = ["SpreadsheetTools", "format_value", "quote_identifier", "quote_literal"]

MAX_SQL_CHARS = 2000
_MAX_CELL_CHARS = 60
_MAX_ERROR_CHARS = 240
_SQL_TYPES = {"int": "BIGINT", "float": "DOUBLE", "text": "VARCHAR", "date": "DATE", "datetime": "TIMESTAMP"}
# Set after the tables are loaded (loading a DataFrame is itself "external" to DuckDB), then locked.
_LOCKDOWN = ("SET enable_external_access = false", "SET autoinstall_known_extensions = false",
             "SET autoload_known_extensions = false", "SET allow_community_extensions = false",
             "SET python_enable_replacements = false", "SET lock_configuration = true")


class SpreadsheetTools:
    """The tools of one episode over one workbook (a path to .xlsx / .csv, or ``{sheet: DataFrame}``
    in the canonical form of tables.py).

    Attributes:
        tables: the workbook's sheets as DataFrames (shared with a cache: do not modify).
        file_name: the workbook's file name ("workbook" for in-memory tables), for prompts.
        answered: the last `answer` call's argument, None before one.
    """

    def __init__(self, source: str | Path | Mapping[str, pd.DataFrame], *, max_rows: int = 20,
                 memory_limit: str = "256MB") -> None:
        if isinstance(source, (str, Path)):
            self.tables = _cached_tables(str(Path(source).resolve()))
            self.file_name = Path(source).name
        else:
            self.tables = dict(source)
            self.file_name = "workbook"
        if not self.tables:
            raise ValueError("SpreadsheetTools: the workbook has no sheets")
        self.max_rows = max_rows
        self.answered: str | None = None
        self._con = _sandbox(self.tables, memory_limit)

    # ---- the tools (their docstrings are the schemas the model sees) ----
    # No return annotations on purpose: get_json_schema would add '"return": {"type": "string"}'
    # to every schema, ~30 characters each of the tiny model's context, telling it nothing.

    def list_sheets(self):
        """List the workbook's sheets with their row counts."""
        return "\n".join(f"{name}: {len(frame)} rows" for name, frame in self.tables.items())

    def describe_sheet(self, sheet: str):
        """Show a sheet's row count and its columns with their types.

        Args:
            sheet: Sheet name.
        """
        name = self._sheet(sheet)
        frame = self.tables[name]
        lines = [f"{name}: {len(frame)} rows"]
        for column in frame.columns:
            blanks = int(frame[column].isna().sum())
            lines.append(f"{column}: {column_type(frame[column])}" + (f" ({blanks} blank)" if blanks else ""))
        return "\n".join(lines)

    def read_rows(self, sheet: str, start_row: int = 1, num_rows: int = 5):
        """Show rows of a sheet as CSV; row 1 is the first row under the header.

        Args:
            sheet: Sheet name.
            start_row: First row to show, from 1.
            num_rows: How many rows to show (at most 20).
        """
        name = self._sheet(sheet)
        frame = self.tables[name]
        if frame.empty:
            return f"{name} has no rows under its header"
        if not isinstance(start_row, int) or not 1 <= start_row <= len(frame):
            raise ValueError(f"start_row must be between 1 and {len(frame)} (sheet {name!r} has {len(frame)} rows)")
        if not isinstance(num_rows, int) or not 1 <= num_rows <= self.max_rows:
            raise ValueError(f"num_rows must be between 1 and {self.max_rows}")
        part = frame.iloc[start_row - 1:start_row - 1 + num_rows]
        rows = [tuple(_python_value(v) for v in r) for r in part.itertuples(index=False)]
        head = f"rows {start_row}-{start_row + len(part) - 1} of {len(frame)}"
        return head + "\n" + _csv([str(c) for c in frame.columns], rows)

    def query(self, sql: str):
        """Run one SQL SELECT (DuckDB); each sheet is a table of the same name. Shows up to 20 rows as CSV.

        Args:
            sql: The SELECT statement.
        """
        columns, rows = self.run_sql(sql, max_rows=self.max_rows + 1)
        text = _csv(columns, rows[:self.max_rows])
        if not rows:
            return text + "\n[0 rows]"
        if len(rows) > self.max_rows:
            return text + f"\n[more than {self.max_rows} rows; use LIMIT or aggregate]"
        return text

    def answer(self, answer: str):
        """Give the final answer; this ends the task.

        Args:
            answer: A number, text, a date (YYYY-MM-DD) or a comma-separated list.
        """
        self.answered = str(answer)
        return "Answer recorded."

    # ---- for callers ----

    def functions(self, include_answer: bool = True) -> list[Callable[..., str]]:
        """The tool methods, for a tool runner. A runner that adds its own finish tool named
        "answer" (posttrain.agents' ToolEnvironment does) wants ``include_answer=False``."""
        tools = [self.list_sheets, self.describe_sheet, self.read_rows, self.query]
        return tools + [self.answer] if include_answer else tools

    def run_sql(self, sql: str, *, max_rows: int | None = None, timeout_s: float | None = None
                ) -> tuple[list[str], list[tuple]]:
        """``(column names, rows)`` of one SELECT, at most `max_rows` rows (None: all); values are
        DuckDB's Python values. Raises ValueError for anything but one valid SELECT, an error, or
        a query stopped by `interrupt()` or by `timeout_s`."""
        if not isinstance(sql, str) or not sql.strip():
            raise ValueError("the query is empty; write one SELECT statement")
        if len(sql) > MAX_SQL_CHARS:
            raise ValueError(f"the query is {len(sql)} characters long; the limit is {MAX_SQL_CHARS}")
        try:
            statements = self._con.extract_statements(sql)
        except duckdb.Error as err:
            raise ValueError(self._explain(err)) from None
        if len(statements) != 1:
            raise ValueError(f"write exactly one SELECT statement (got {len(statements)})")
        kind = statements[0].type
        if kind != duckdb.StatementType.SELECT:
            raise ValueError(f"only SELECT queries are allowed (got {kind.name}); the workbook is read-only")
        timer = threading.Timer(timeout_s, self.interrupt) if timeout_s else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            cursor = self._con.execute(sql)
            columns = [d[0] for d in cursor.description or []]
            rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows)
        except duckdb.InterruptException:
            raise ValueError("the query was stopped: it ran too long") from None
        except duckdb.Error as err:
            raise ValueError(self._explain(err)) from None
        finally:
            if timer is not None:
                timer.cancel()
        return columns, [tuple(r) for r in rows]

    def interrupt(self) -> None:
        """Stop the query running on this workbook's connection (safe from another thread, and a
        no-op when none runs)."""
        self._con.interrupt()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "SpreadsheetTools":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _sheet(self, sheet: Any) -> str:
        """The sheet's real name; matched ignoring case, as SQL matches table names."""
        if isinstance(sheet, str):
            for name in self.tables:
                if name.casefold() == sheet.strip().casefold():
                    return name
        raise ValueError(f"unknown sheet {sheet!r}; sheets: {', '.join(self.tables)}")

    def _explain(self, err: Exception) -> str:
        """DuckDB's message without the caret diagram, and without suggestions of its own system
        tables ("Did you mean pg_class?"), which only mislead the model; names the sheets when a
        table is missing."""
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        kept = []
        for line in lines:
            if line.startswith("LINE "):
                break
            if line.startswith("Did you mean") and not any(f'"{n}' in line for n in self.tables):
                continue
            kept.append(line)
        message = " ".join(kept) or type(err).__name__
        if "Table with name" in message:
            message += f" Sheets: {', '.join(self.tables)}."
        return message[:_MAX_ERROR_CHARS]


@functools.lru_cache(maxsize=32)
def _cached_tables_at(path: str, mtime_ns: int, size: int) -> dict[str, pd.DataFrame]:
    return load_tables(path)


def _cached_tables(path: str) -> dict[str, pd.DataFrame]:
    """Tables of a file, read once per version of it: RL plays many episodes per workbook, and
    reading an .xlsx costs far more than the episode's queries. Keyed by mtime and size, so an
    edited file is read again."""
    try:
        stat = Path(path).stat()
    except OSError:
        return load_tables(path)  # raises its clear "does not exist" error
    return dict(_cached_tables_at(path, stat.st_mtime_ns, stat.st_size))


def _sandbox(tables: Mapping[str, pd.DataFrame], memory_limit: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config={"threads": 1, "memory_limit": memory_limit})
    try:
        for name, frame in tables.items():
            selects = ", ".join(f"CAST({quote_identifier(c)} AS {_SQL_TYPES[column_type(frame[c])]}) "
                                f"AS {quote_identifier(c)}" for c in frame.columns)
            con.register("__sheet_frame", frame)
            con.execute(f"CREATE TABLE {quote_identifier(name)} AS SELECT {selects} FROM __sheet_frame")
            con.unregister("__sheet_frame")
        for statement in _LOCKDOWN:
            con.execute(statement)
    except Exception:
        con.close()
        raise
    return con


@functools.cache
def _reserved_words() -> frozenset[str]:
    with duckdb.connect(":memory:") as con:
        rows = con.execute("SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'").fetchall()
    return frozenset(r[0].casefold() for r in rows)


def quote_identifier(name: str) -> str:
    """`name` as a SQL identifier: bare when it is a plain word (short SQL for a small model),
    double-quoted when it has spaces or symbols or is a reserved word."""
    if name.isidentifier() and name.isascii() and name.casefold() not in _reserved_words():
        return name
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _python_value(value: Any) -> Any:
    """A DataFrame cell as the value DuckDB would return (blank -> None, Timestamp -> datetime)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):  # numpy ints are not Python ints
        return value.item()
    return value


def format_value(value: Any) -> str:
    """One cell as the tools print it: blank "", floats with at most 6 decimals (no exponent for
    ordinary sizes), dates YYYY-MM-DD (with the time only when it is not midnight)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (float, decimal.Decimal)):
        number = float(value)
        if math.isnan(number):
            return ""
        if math.isinf(number) or abs(number) >= 1e15 or (number != 0 and abs(number) < 1e-4):
            return f"{number:.6g}"
        text = f"{number:.6f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value)
    return text if len(text) <= _MAX_CELL_CHARS else text[:_MAX_CELL_CHARS - 1] + "…"


def _csv(columns: list[str], rows: list[tuple]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([format_value(v) for v in row] for row in rows)
    return out.getvalue().rstrip("\n")
