"""A workbook as tables: the one DataFrame form every part of the environment uses, and files.

A workbook is ``dict[sheet name, DataFrame]``. Every column has one of `COLUMN_TYPES`, held in
one canonical dtype, so generated workbooks, workbooks read back from .xlsx and users' own files
behave the same in pandas (the answers) and in DuckDB (the tools):

    int      -> "Int64" (nullable, so a blank does not turn the column into floats)
    float    -> "float64" (blank = NaN)
    text     -> object holding str, blank = None
    date     -> "datetime64[us]" at midnight (blank = NaT); "datetime" when some times are not midnight
                (microseconds, not pandas' nanoseconds, whose range ends before 1678: users have old dates)

Reading infers these types from the cells. Excel stores only numbers, so a numeric column whose
every value is whole reads back as int (the generator gives its float columns cents for that
reason). Text cells stay text even when they look like numbers ("00123" is a code, not 123);
in CSV, where everything is text, a column is int / float / date when every non-blank value
parses as one (dates in ISO form), else text.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

__all__ = ["COLUMN_TYPES", "column_type", "load_tables", "make_frame", "write_xlsx"]

COLUMN_TYPES = ("int", "float", "text", "date", "datetime")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$")


def column_type(series: pd.Series) -> str:
    """The column type (one of COLUMN_TYPES) of a canonical column."""
    if pd.api.types.is_integer_dtype(series.dtype):
        return "int"
    if pd.api.types.is_float_dtype(series.dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        values = series.dropna()
        return "date" if (values == values.dt.normalize()).all() else "datetime"
    return "text"


def _blank(value: Any) -> bool:
    """None, NaN, NaT, pd.NA or a whitespace-only string: an empty cell."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # not a scalar pandas can judge: a value, not a blank
        return False


def _typed_column(values: list[Any], from_text: bool) -> pd.Series:
    """One canonical column from Python cell values (see the module docstring for the rules)."""
    present = [v for v in values if not _blank(v)]
    if from_text:  # CSV: every value is a string; a type applies only when all of them parse
        stripped = [v.strip() for v in present]
        if stripped and all(_INT.match(v) for v in stripped):
            return pd.Series([None if _blank(v) else int(v) for v in values], dtype="Int64")
        if stripped and all(_FLOAT.match(v) for v in stripped):
            return pd.Series([math.nan if _blank(v) else float(v) for v in values], dtype="float64")
        if stripped and all(_ISO_DATE.match(v) for v in stripped):
            dates = _dates([None if _blank(v) else v.strip() for v in values])
            if dates is not None:
                return dates
        return pd.Series([None if _blank(v) else str(v) for v in values], dtype=object)
    numbers = [v for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if present and len(numbers) == len(present):
        if all(isinstance(v, int) for v in present):
            return pd.Series([None if _blank(v) else v for v in values], dtype="Int64")
        return pd.Series([math.nan if _blank(v) else float(v) for v in values], dtype="float64")
    if present and all(isinstance(v, (dt.date, pd.Timestamp)) for v in present):
        dates = _dates([None if _blank(v) else v for v in values])
        if dates is not None:
            return dates
    return pd.Series([None if _blank(v) else _as_text(v) for v in values], dtype=object)


def _dates(values: list[Any]) -> pd.Series | None:
    """A date column, or None when a value is no real date ("2024-02-30"): then it stays text."""
    try:
        return pd.Series(pd.to_datetime(values, format="ISO8601" if any(isinstance(v, str) for v in values) else None)
                         ).astype("datetime64[us]")
    except (ValueError, OverflowError):
        return None


def _as_text(value: Any) -> str:
    if isinstance(value, (dt.datetime, pd.Timestamp)) and value == pd.Timestamp(value).normalize():
        return pd.Timestamp(value).date().isoformat()
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def make_frame(columns: Mapping[str, Iterable[Any]], where: str = "table", *, from_text: bool = False) -> pd.DataFrame:
    """A canonical DataFrame from ``{column name: cell values}`` (Python values, None = blank).

    Raises ValueError naming `where` and the column for an empty or duplicate column name or
    columns of different lengths.
    """
    data: dict[str, pd.Series] = {}
    length = None
    seen: set[str] = set()
    for name, values in columns.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: a column has no header (got {name!r}); every column needs a name")
        if name.casefold() in seen:  # SQL names are case-insensitive, so 'Units' and 'units' clash
            raise ValueError(f"{where}: two columns are named {name!r} (names are compared ignoring case)")
        seen.add(name.casefold())
        values = list(values)
        if length is not None and len(values) != length:
            raise ValueError(f"{where}: column {name!r} has {len(values)} values, the others {length}")
        length = len(values)
        data[name] = _typed_column(values, from_text).reset_index(drop=True)
    return pd.DataFrame(data)


def write_xlsx(tables: Mapping[str, pd.DataFrame], path: str | Path) -> Path:
    """Write `tables` as one sheet each: a header row, then the values; dates as real date cells
    (shown yyyy-mm-dd), blanks as empty cells. Returns the path."""
    import openpyxl  # lazy: only the spreadsheet environment needs it

    path = Path(path)
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for name, frame in tables.items():
        sheet = workbook.create_sheet(title=name)
        sheet.append([str(c) for c in frame.columns])
        kinds = [column_type(frame[c]) for c in frame.columns]
        for row_index, row in enumerate(frame.itertuples(index=False), start=2):
            for col_index, (value, kind) in enumerate(zip(row, kinds), start=1):
                if _blank(value):
                    continue  # an empty cell, not "" or "nan"
                cell = sheet.cell(row=row_index, column=col_index)
                if kind == "date":
                    cell.value = pd.Timestamp(value).date()
                    cell.number_format = "yyyy-mm-dd"
                elif kind == "datetime":
                    cell.value = pd.Timestamp(value).to_pydatetime()
                    cell.number_format = "yyyy-mm-dd hh:mm:ss"
                elif kind == "int":
                    cell.value = int(value)
                elif kind == "float":
                    cell.value = float(value)
                else:
                    cell.value = str(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    return path


def load_tables(path: str | Path) -> dict[str, pd.DataFrame]:
    """The tables of a workbook file: every non-empty sheet of an .xlsx, or a .csv as one table
    named after the file's stem. The first row holds the column names.

    Raises ValueError naming the file (and the sheet and column where it applies) when the file
    is missing, unreadable, of another kind, or has a column without a header.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"workbook {str(path)!r} does not exist (or is not a file)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        tables = {path.stem: _read_csv(path)}
    elif suffix in (".xlsx", ".xlsm"):
        tables = _read_xlsx(path)
    else:
        raise ValueError(f"workbook {str(path)!r}: unsupported file type {path.suffix!r}; use .xlsx or .csv")
    if not tables:
        raise ValueError(f"workbook {str(path)!r} has no sheet with data")
    names = [n.casefold() for n in tables]
    if len(set(names)) != len(names):  # sheets become SQL tables, whose names ignore case
        raise ValueError(f"workbook {str(path)!r}: sheet names differ only in case: {sorted(tables)}")
    return tables


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"workbook {str(path)!r}: cannot read it as UTF-8 CSV: {err}") from err
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"workbook {str(path)!r} is empty; the first row must name the columns")
    return _frame_from_rows(rows[0], rows[1:], f"workbook {str(path)!r}", from_text=True)


def _read_xlsx(path: Path) -> dict[str, pd.DataFrame]:
    import openpyxl  # lazy: only the spreadsheet environment needs it

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises zipfile, KeyError, InvalidFileException ... for a bad file
        raise ValueError(f"workbook {str(path)!r}: cannot read it as .xlsx: {type(err).__name__}: {err}") from err
    tables = {}
    try:
        for sheet in workbook.worksheets:
            rows = [list(r) for r in sheet.iter_rows(values_only=True)]
            rows = [r for r in rows if any(not _blank(v) for v in r)]  # openpyxl reports formatted empty rows
            if not rows:
                continue
            tables[sheet.title] = _frame_from_rows(rows[0], rows[1:], f"workbook {str(path)!r}, sheet {sheet.title!r}",
                                                   from_text=False)
    finally:
        workbook.close()
    return tables


def _frame_from_rows(header: list[Any], body: list[list[Any]], where: str, *, from_text: bool) -> pd.DataFrame:
    width = max([len(header)] + [len(r) for r in body])
    header = list(header) + [None] * (width - len(header))
    body = [list(r) + [None] * (width - len(r)) for r in body]
    columns = {}
    for index, name in enumerate(header):
        values = [r[index] for r in body]
        if _blank(name):
            if all(_blank(v) for v in values):
                continue  # an empty trailing (or spacer) column
            raise ValueError(f"{where}: column {index + 1} has values but no header")
        name = str(name).strip()
        if name.casefold() in {c.casefold() for c in columns}:  # SQL names ignore case
            raise ValueError(f"{where}: two columns are named {name!r} (names are compared ignoring case)")
        columns[name] = values
    return make_frame(columns, where, from_text=from_text)
