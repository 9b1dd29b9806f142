"""Tools from plain functions and the ToolBox: schemas, argument checks, errors the model sees,
timeouts (with and without a cooperative interrupt), output conversion and truncation."""

from __future__ import annotations

import threading
import time

import pytest

from posttrain.agents.parsers import ToolCall
from posttrain.agents.tools import Tool, ToolBox, ToolResult, check_arguments, tool_from_function


def read_range(sheet: str, cells: str, limit: int = 10) -> str:
    """Read cells of a sheet.

    Args:
        sheet: the sheet's name
        cells: a range such as "A1:B3"
        limit: at most this many rows
    """
    return f"{sheet}!{cells} (limit {limit})"


def scale(values: list[float], factor: float, round_up: bool = False) -> list[float]:
    """Multiply every value.

    Args:
        values: the numbers
        factor: the multiplier
        round_up: round each result up
    """
    return [v * factor for v in values]


def explode(reason: str) -> str:
    """Always fails.

    Args:
        reason: what to complain about
    """
    raise ValueError(f"bad {reason}")


class Workbook:
    """A stateful tool source: methods bound to one episode's data."""

    def __init__(self) -> None:
        self.cells = {"A1": 5}

    def get(self, cell: str) -> int:
        """Value of a cell.

        Args:
            cell: the cell's address
        """
        return self.cells[cell]


def test_schema_from_docstring_and_bound_method_excludes_self():
    tool = tool_from_function(read_range)
    assert tool.name == "read_range"
    assert tool.schema["function"]["description"] == "Read cells of a sheet."
    assert tool.parameters["required"] == ["sheet", "cells"]
    assert tool.parameters["properties"]["limit"] == {"type": "integer", "description": "at most this many rows"}
    method = tool_from_function(Workbook().get, name="cell")
    assert method.name == "cell" and method.schema["function"]["name"] == "cell"
    assert list(method.parameters["properties"]) == ["cell"]
    assert ToolBox([method]).call(ToolCall("cell", {"cell": "A1"})) == ToolResult("cell", "5", None)


def test_function_without_usable_docstring_is_a_value_error_naming_it():
    def no_doc(x: int) -> int:
        return x

    def no_args_section(x: int) -> int:
        """Does things."""
        return x

    def no_hint(x):
        """Does things.

        Args:
            x: a thing
        """

    with pytest.raises(ValueError, match=r"tool '.*no_doc'.*has no docstring.*Google-style docstring"):
        tool_from_function(no_doc)
    with pytest.raises(ValueError, match=r"tool '.*no_args_section'.*no description for the argument 'x'"):
        tool_from_function(no_args_section)
    with pytest.raises(ValueError, match=r"tool '.*no_hint'.*missing a type hint"):
        tool_from_function(no_hint)


def test_schemas_and_names_for_the_chat_template():
    box = ToolBox([read_range, scale])
    assert box.names == ["read_range", "scale"]
    assert [s["function"]["name"] for s in box.schemas] == ["read_range", "scale"]
    box.schemas[0]["function"]["name"] = "mutated"  # a copy: the box is unaffected
    assert box.schemas[0]["function"]["name"] == "read_range"
    with pytest.raises(ValueError, match="two tools are named 'read_range'"):
        ToolBox([read_range, read_range])


def test_successful_call():
    result = ToolBox([read_range]).call(ToolCall("read_range", {"sheet": "S", "cells": "A1:A2"}))
    assert result == ToolResult("read_range", "S!A1:A2 (limit 10)", None)


def test_unknown_tool():
    result = ToolBox([read_range, scale]).call(ToolCall("foo", {}))
    assert result == ToolResult("foo", "Error: unknown tool 'foo'; tools: read_range, scale", "unknown_tool")


@pytest.mark.parametrize("arguments, problem", [
    ({"cells": "A1"}, "missing 'sheet'"),
    ({"sheet": "S", "cells": "A1", "color": "red"}, "unknown argument 'color' (arguments: sheet, cells, limit)"),
    ({"sheet": "S", "cells": "A1", "limit": "5"}, "'limit' must be integer, got string"),
    ({"sheet": "S", "cells": "A1", "limit": True}, "'limit' must be integer, got boolean"),
    ({"sheet": "S", "cells": "A1", "limit": 5.0}, "'limit' must be integer, got number"),
    ({"sheet": 3, "cells": "A1"}, "'sheet' must be string, got integer"),
])
def test_bad_arguments_are_named_before_the_call(arguments, problem):
    result = ToolBox([read_range]).call(ToolCall("read_range", arguments))
    assert result == ToolResult("read_range", f"Error: bad arguments for 'read_range': {problem}", "bad_arguments")


def test_json_types_ints_are_numbers_bools_are_not():
    box = ToolBox([scale])
    assert box.call(ToolCall("scale", {"values": [1, 2.5], "factor": 2})).content == "[2, 5.0]"
    assert box.call(ToolCall("scale", {"values": [1, True], "factor": 2})).content == (
        "Error: bad arguments for 'scale': 'values'[1] must be number, got boolean")
    assert box.call(ToolCall("scale", {"values": [1], "factor": 2, "round_up": 1})).content == (
        "Error: bad arguments for 'scale': 'round_up' must be boolean, got integer")
    assert box.call(ToolCall("scale", {"values": {"a": 1}, "factor": 2})).error == "bad_arguments"


def test_nested_schemas_enums_nullable_and_tuples():
    parameters = {"type": "object", "required": ["mode"], "properties": {
        "mode": {"type": "string", "enum": ["sum", "mean"]},
        "where": {"type": "object", "additionalProperties": {"type": "integer"}},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
        "note": {"type": "string", "nullable": True}}}
    assert check_arguments({"mode": "sum", "where": {"a": 1}, "pair": [1, "x"], "note": None}, parameters) is None
    assert check_arguments({"mode": "max"}, parameters) == "'mode' must be one of [\"sum\", \"mean\"], got \"max\""
    assert check_arguments({"mode": "sum", "where": {"a": "1"}}, parameters) == "'where'['a'] must be integer, got string"
    assert check_arguments({"mode": "sum", "pair": [1]}, parameters) == "'pair' must have 2 items, got 1"
    assert check_arguments([1], parameters) == "arguments must be a JSON object, got array"


def test_a_tool_that_raises_is_an_observation():
    result = ToolBox([explode]).call(ToolCall("explode", {"reason": "sheet"}))
    assert result == ToolResult("explode", "Error: 'explode' raised ValueError: bad sheet", "raised")


def test_a_hanging_tool_times_out_and_is_abandoned():
    release = threading.Event()

    def hang(seconds: float) -> str:
        """Sleeps.

        Args:
            seconds: how long
        """
        release.wait(seconds)
        return "woke"

    box = ToolBox([hang], timeout_s=0.2)
    start = time.monotonic()
    result = box.call(ToolCall("hang", {"seconds": 30.0}))
    elapsed = time.monotonic() - start
    release.set()  # let the abandoned daemon thread finish
    assert result == ToolResult("hang", "Error: 'hang' timed out after 0.2 s", "timeout")
    assert 0.19 <= elapsed < 1.0


def test_timeout_calls_the_tools_interrupt():
    stop = threading.Event()
    finished = []

    def query(sql: str) -> str:
        """Runs a query until interrupted.

        Args:
            sql: the query
        """
        stop.wait(30)
        finished.append(sql)
        raise RuntimeError("interrupted")

    box = ToolBox([tool_from_function(query, interrupt=stop.set)], timeout_s=0.2)
    result = box.call(ToolCall("query", {"sql": "SELECT 1"}))
    assert result.error == "timeout"
    assert result.content == "Error: 'query' timed out after 0.2 s"
    assert finished == ["SELECT 1"]  # the worker unwound within the grace period


def test_non_string_outputs_become_json_or_str_and_bad_outputs_are_errors():
    class Opaque:
        def __str__(self) -> str:
            return "<a table>"

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    values = {"dict": {"a": 1, "é": [True, None]}, "none": None, "opaque": Opaque(), "broken": Broken(),
              "bytes": b"\xff\xfe"}

    def get(key: str):
        """Returns a value.

        Args:
            key: which
        """
        return values[key]

    box = ToolBox([get])
    assert box.call(ToolCall("get", {"key": "dict"})).content == '{"a": 1, "é": [true, null]}'
    assert box.call(ToolCall("get", {"key": "none"})).content == "null"
    assert box.call(ToolCall("get", {"key": "opaque"})).content == "<a table>"
    assert box.call(ToolCall("get", {"key": "broken"})) == ToolResult(
        "get", "Error: 'get' returned a Broken that cannot be shown as text", "bad_output")
    assert box.call(ToolCall("get", {"key": "bytes"})).error == "bad_output"


def test_long_output_is_cut_with_a_marker_counting_dropped_characters():
    def dump(n: int) -> str:
        """Many characters.

        Args:
            n: how many
        """
        return "x" * n

    box = ToolBox([dump], max_output_chars=10)
    assert box.call(ToolCall("dump", {"n": 10})).content == "x" * 10
    assert box.call(ToolCall("dump", {"n": 25})).content == "x" * 10 + "\n[… 15 more characters cut]"


def test_toolbox_accepts_tools_and_checks_its_settings():
    tool = Tool("ping", lambda: "pong", {"type": "function", "function": {"name": "ping", "description": "Ping."}})
    assert ToolBox([tool]).call(ToolCall("ping", {})) == ToolResult("ping", "pong", None)
    assert ToolBox([tool]).call(ToolCall("ping", {"x": 1})).content == (
        "Error: bad arguments for 'ping': unknown argument 'x' (arguments: none)")
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        ToolBox([tool], timeout_s=0)
    with pytest.raises(ValueError, match="max_output_chars must be >= 1"):
        ToolBox([tool], max_output_chars=0)
