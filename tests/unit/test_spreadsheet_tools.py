"""The spreadsheet tools: exact outputs on the example workbook, errors the model sees, schemas,
and the SQL sandbox (no files, no writes, no extensions, no escape from the lock; runaway
queries interrupted)."""

from __future__ import annotations

import datetime as dt
import threading
import time

import duckdb
import pandas as pd
import pytest
from transformers.utils import get_json_schema

from posttrain.envs.spreadsheet import SpreadsheetTools, example_tables, write_xlsx
from posttrain.envs.spreadsheet.tables import make_frame
from posttrain.envs.spreadsheet.tools import format_value, quote_identifier


@pytest.fixture
def tools():
    with SpreadsheetTools(example_tables()) as t:
        yield t


def test_outputs_are_compact_and_exact(tools):
    assert tools.list_sheets() == "Sales: 6 rows\nProducts: 3 rows\nOrders: 4 rows"
    assert tools.describe_sheet("sales") == ("Sales: 6 rows\nRegion: text\nProduct: text\nDate: date (1 blank)\n"
                                             "Units: int (1 blank)\nRevenue: float (1 blank)")
    assert tools.read_rows("Sales", 5, 2) == ("rows 5-6 of 6\nRegion,Product,Date,Units,Revenue\n"
                                              "South,Gizmo,,12,90\nNorth,Gizmo,2024-06-30,3,")
    assert tools.read_rows("Orders", 4, 20) == "rows 4-4 of 4\nOrderID,ProductID,Quantity,Date\n1004,P03,4,"
    assert tools.query("SELECT Region, SUM(Revenue) AS total FROM Sales GROUP BY Region ORDER BY total DESC") == \
        "Region,total\nNorth,220.5\nSouth,140.25\nEast,30.75"
    assert tools.query("SELECT AVG(Quantity) AS q, MAX(Date) AS d FROM Orders") == "q,d\n3,2024-03-03"
    assert tools.query("SELECT Name FROM Products WHERE Price > 100") == "Name\n[0 rows]"
    assert tools.query("SELECT 1 / 3 AS third;") == "third\n0.333333"
    assert tools.answer("North") == "Answer recorded." and tools.answered == "North"


def test_row_cap_says_more_rows_exist():
    with SpreadsheetTools(example_tables(), max_rows=2) as tools:
        assert tools.query("SELECT OrderID FROM Orders ORDER BY OrderID") == \
            "OrderID\n1001\n1002\n[more than 2 rows; use LIMIT or aggregate]"


def test_format_value_and_identifiers():
    assert [format_value(v) for v in (None, 3, 2.0, 1 / 3, -0.0, 1e20, 2.5e-7, dt.date(2024, 1, 2),
                                      dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 2, 3, 4), True, "x" * 70)] == [
        "", "3", "2", "0.333333", "0", "1e+20", "2.5e-07", "2024-01-02", "2024-01-02", "2024-01-02 03:04:00", "true",
        "x" * 59 + "…"]
    assert [quote_identifier(n) for n in ("Sales", "Date", "Sheet 1", "order", 'a"b')] == [
        "Sales", "Date", '"Sheet 1"', '"order"', '"a""b"']


def test_errors_are_useful_to_the_model(tools):
    with pytest.raises(ValueError, match=r"unknown sheet 'Staff'; sheets: Sales, Products, Orders"):
        tools.describe_sheet("Staff")
    with pytest.raises(ValueError, match="start_row must be between 1 and 6"):
        tools.read_rows("Sales", 7, 1)
    with pytest.raises(ValueError, match="num_rows must be between 1 and 20"):
        tools.read_rows("Sales", 1, 50)
    with pytest.raises(ValueError) as err:
        tools.query("SELECT * FROM Staff")
    assert str(err.value) == ('Catalog Error: Table with name Staff does not exist! Did you mean "Sales"? '
                              "Sheets: Sales, Products, Orders.")
    with pytest.raises(ValueError) as err:
        tools.query("SELECT * FROM Zzz")
    assert "pg_" not in str(err.value) and str(err.value).endswith("Sheets: Sales, Products, Orders.")
    with pytest.raises(ValueError, match='Referenced column "Revenu" not found') as err:
        tools.query("SELECT Revenu FROM Sales")
    assert "LINE 1" not in str(err.value)  # the caret diagram is dropped
    with pytest.raises(ValueError, match='syntax error at or near "SELEC"'):
        tools.query("SELEC 1")
    with pytest.raises(ValueError, match="the query is empty"):
        tools.query("  ")
    with pytest.raises(ValueError, match="the limit is 2000"):
        tools.query("SELECT 1" + " " * 2000)


def test_an_empty_sheet_reads_as_no_rows():
    with SpreadsheetTools({"Empty": make_frame({"a": []})}) as tools:
        assert tools.read_rows("empty") == "Empty has no rows under its header"
        assert tools.query("SELECT * FROM Empty") == "a\n[0 rows]"


def test_sheets_with_spaces_are_quoted_tables(tmp_path):
    path = write_xlsx({"Sheet 1": pd.DataFrame({"My Value": pd.array([1, 2], dtype="Int64")})}, tmp_path / "b.xlsx")
    with SpreadsheetTools(path) as tools:
        assert tools.file_name == "b.xlsx"
        assert tools.query('SELECT SUM("My Value") AS s FROM "Sheet 1"') == "s\n3"


def test_tool_schemas_come_from_the_docstrings(tools):
    schemas = {s["function"]["name"]: s["function"] for s in map(get_json_schema, tools.functions())}
    assert list(schemas) == ["list_sheets", "describe_sheet", "read_rows", "query", "answer"]
    assert schemas["list_sheets"]["parameters"] == {"type": "object", "properties": {}}
    assert schemas["describe_sheet"]["parameters"]["required"] == ["sheet"]
    assert schemas["read_rows"]["parameters"]["properties"]["start_row"] == {
        "type": "integer", "description": "First row to show, from 1."}
    assert schemas["read_rows"]["parameters"]["required"] == ["sheet"]
    assert schemas["query"]["parameters"]["required"] == ["sql"]
    assert schemas["answer"]["parameters"]["properties"]["answer"]["type"] == "string"
    assert all(s["description"] and "return" not in s for s in schemas.values())
    assert [f.__name__ for f in tools.functions(include_answer=False)] == [
        "list_sheets", "describe_sheet", "read_rows", "query"]


@pytest.mark.parametrize("sql, message", [
    ("SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
    ("SELECT * FROM read_text('/etc/hostname')", "Permission Error"),
    ("SELECT * FROM glob('/etc/*')", "Permission Error"),
    ("SELECT * FROM '/etc/passwd'", "does not exist"),
    ("COPY Sales TO '{tmp}/out.csv'", "only SELECT queries are allowed"),
    ("ATTACH '{tmp}/other.duckdb' AS other", "only SELECT queries are allowed"),
    ("INSTALL httpfs", "only SELECT queries are allowed"),
    ("LOAD httpfs", "only SELECT queries are allowed"),
    ("SET enable_external_access = true", "only SELECT queries are allowed"),
    ("DELETE FROM Sales", "only SELECT queries are allowed"),
    ("CREATE TEMP TABLE t AS SELECT 1", "only SELECT queries are allowed"),
    ("SELECT 1; DROP TABLE Sales", "exactly one SELECT statement"),
    ("SELECT * FROM query('DROP TABLE Sales')", "single SELECT"),
])
def test_sandbox_refuses_everything_but_reading_the_workbook(tools, tmp_path, sql, message):
    with pytest.raises(ValueError, match=message):
        tools.query(sql.format(tmp=tmp_path))
    assert tools.query("SELECT COUNT(*) AS n FROM Sales") == "n\n6"  # nothing was changed or dropped
    assert list(tmp_path.iterdir()) == []


def test_duckdb_itself_is_locked_down(tools, tmp_path):
    """Below the SELECT-only check, the connection refuses files, extensions and unlocking."""
    for sql in (f"COPY Sales TO '{tmp_path}/out.csv'", f"ATTACH '{tmp_path}/x.duckdb'", "INSTALL httpfs",
                "LOAD httpfs"):
        with pytest.raises(duckdb.Error, match="disabled"):
            tools._con.execute(sql)
    for setting in ("enable_external_access = true", "autoload_known_extensions = true", "lock_configuration = false"):
        with pytest.raises(duckdb.Error, match="configuration has been locked"):
            tools._con.execute(f"SET {setting}")
    assert list(tmp_path.iterdir()) == []


def test_python_variables_are_not_tables(tools):
    secret_frame = pd.DataFrame({"password": ["hunter2"]})  # noqa: F841 - a replacement scan would find it
    with pytest.raises(ValueError, match="secret_frame does not exist"):
        tools.query("SELECT * FROM secret_frame")


def _bomb_tools() -> SpreadsheetTools:
    return SpreadsheetTools({"Big": pd.DataFrame({"x": pd.array(range(3000), dtype="Int64")})})


BOMB = "SELECT SUM(a.x * b.x + c.x * d.x) FROM Big a, Big b, Big c, Big d"  # 8e13 rows


def test_interrupt_stops_a_cross_join_bomb():
    with _bomb_tools() as tools:
        outcome = {}

        def run() -> None:
            try:
                tools.query(BOMB)
            except ValueError as err:
                outcome["error"] = str(err)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        time.sleep(0.2)
        started = time.monotonic()
        tools.interrupt()
        worker.join(5)
        assert not worker.is_alive() and time.monotonic() - started < 1.5
        assert outcome == {"error": "the query was stopped: it ran too long"}
        assert tools.query("SELECT COUNT(*) AS n FROM Big") == "n\n3000"  # the connection still works


def test_run_sql_timeout_interrupts_by_itself():
    with _bomb_tools() as tools:
        started = time.monotonic()
        with pytest.raises(ValueError, match="stopped"):
            tools.run_sql(BOMB, timeout_s=0.3)
        assert time.monotonic() - started < 1.5
        assert tools.run_sql("SELECT MAX(x) FROM Big") == (["max(x)"], [(2999,)])
