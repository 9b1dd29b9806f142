"""Tools are plain Python functions; a ToolBox runs the model's calls to them safely.

A tool's JSON schema comes from its signature and Google-style docstring
(`transformers.utils.get_json_schema`), so the schema the model is shown in the chat template and
the function that runs can never drift apart.

`ToolBox.call` never raises for anything the model did: an unknown tool, bad arguments, a tool
that raises, hangs or returns something unprintable all become a `ToolResult` whose `content` is
a short observation for the model ("Error: ...") and whose `error` names the kind, so rollouts
count them. Arguments are checked against the schema *before* the call, so the model gets "missing
'sheet'" rather than a Python TypeError from deep inside the tool.

Timeouts use a daemon worker thread per call. Python cannot kill a thread: a tool that times out
keeps running in the background, abandoned (daemon, so it never blocks interpreter exit, which
is why this is not a ThreadPoolExecutor, whose workers are joined at exit). A tool holding a
resource that can stop on request (a DuckDB connection's ``interrupt()``, a subprocess) should
pass that as `Tool.interrupt`: it is called on timeout so the work really stops. Tools that may
hang without such a hook belong in a subprocess (see `posttrain.verifiers` sandboxes), not here.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from transformers.utils import get_json_schema
from transformers.utils.chat_template_utils import DocstringParsingException, TypeHintParsingException

from posttrain.agents.parsers import ToolCall, json_type

__all__ = ["ERROR_KINDS", "Tool", "ToolBox", "ToolResult", "check_arguments", "tool_from_function"]

ERROR_KINDS = ("unknown_tool", "bad_arguments", "raised", "timeout", "bad_output")

# After interrupt(), how long to wait for the worker to unwind, so the next call does not find the
# tool's resource (e.g. a DuckDB connection) still busy with the cancelled work.
_INTERRUPT_GRACE_S = 0.5
_MAX_EXCEPTION_CHARS = 300


@dataclass(frozen=True)
class Tool:
    """A callable the model may call.

    Attributes:
        name: what the model calls it (the schema's ``function.name``).
        fn: called with the call's arguments as keyword arguments.
        schema: ``{"type": "function", "function": {"name", "description", "parameters"}}``, what the
            chat template's ``tools=`` expects.
        interrupt: optional; called (from the waiting thread) when a call times out, so cooperative
            tools stop their work instead of running on abandoned.
    """

    name: str
    fn: Callable[..., Any]
    schema: dict[str, Any]
    interrupt: Callable[[], None] | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        return self.schema.get("function", {}).get("parameters") or {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolResult:
    """What a call produced: `content` is what the model sees; `error` is None or one of ERROR_KINDS."""

    name: str
    content: str
    error: str | None = None


def tool_from_function(fn: Callable[..., Any], name: str | None = None, *,
                       interrupt: Callable[[], None] | None = None) -> Tool:
    """A Tool from a type-hinted function (or bound method: ``self`` is not a parameter) whose
    Google-style docstring has a description and an ``Args:`` entry per parameter.

    Raises ValueError naming the function and what is missing.
    """
    label = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    if not callable(fn):
        raise ValueError(f"tool {label!r} is not callable")
    try:
        schema = get_json_schema(fn)
    except DocstringParsingException as err:
        raise ValueError(f"tool {label!r}: {err} A tool needs a Google-style docstring: a description, "
                         "then 'Args:' with one 'name: description' line per parameter.") from err
    except TypeHintParsingException as err:
        raise ValueError(f"tool {label!r}: {err}. Every parameter of a tool needs a type hint.") from err
    if not schema["function"].get("description"):
        raise ValueError(f"tool {label!r}: the docstring has no description before 'Args:'; "
                         "the model needs it to know what the tool does")
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"tool {label!r}: name must be a non-empty string, got {name!r}")
        schema = copy.deepcopy(schema)
        schema["function"]["name"] = name
    return Tool(name=schema["function"]["name"], fn=fn, schema=schema, interrupt=interrupt)


class ToolBox:
    """The tools of one episode, called by name with schema-checked arguments and a timeout.

    `timeout_s` bounds each call; outputs longer than `max_output_chars` are cut and end with a
    marker saying how many characters were dropped (so the content can exceed the limit by the
    marker's length).
    """

    def __init__(self, tools: Sequence[Callable[..., Any] | Tool], timeout_s: float = 10.0,
                 max_output_chars: int = 2000) -> None:
        if not timeout_s > 0:
            raise ValueError(f"ToolBox timeout_s must be > 0, got {timeout_s}")
        if max_output_chars < 1:
            raise ValueError(f"ToolBox max_output_chars must be >= 1, got {max_output_chars}")
        self.tools = tuple(t if isinstance(t, Tool) else tool_from_function(t) for t in tools)
        self.timeout_s = float(timeout_s)
        self.max_output_chars = int(max_output_chars)
        self._by_name: dict[str, Tool] = {}
        for tool in self.tools:
            if tool.name in self._by_name:
                raise ValueError(f"ToolBox: two tools are named {tool.name!r}; names must be unique")
            self._by_name[tool.name] = tool

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tools]

    @property
    def schemas(self) -> list[dict[str, Any]]:
        """For the chat template's ``tools=`` argument (copies: a template may not mutate ours)."""
        return [copy.deepcopy(t.schema) for t in self.tools]

    def call(self, call: ToolCall) -> ToolResult:
        """Run one call; every failure is a ToolResult with an error kind, never an exception."""
        tool = self._by_name.get(call.name)
        if tool is None:
            return self._error(call.name, "unknown_tool",
                               f"unknown tool {call.name!r}; tools: {', '.join(self.names) or '(none)'}")
        problem = check_arguments(call.arguments, tool.parameters)
        if problem is not None:
            return self._error(call.name, "bad_arguments", f"bad arguments for {call.name!r}: {problem}")
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["value"] = tool.fn(**call.arguments)
            except BaseException as err:  # noqa: BLE001 - anything the tool does is reported, not raised
                outcome["error"] = err

        worker = threading.Thread(target=work, name=f"tool-{tool.name}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            if tool.interrupt is not None:
                try:
                    tool.interrupt()
                except Exception:  # noqa: BLE001 - a failing interrupt leaves the thread abandoned, as without one
                    pass
                worker.join(_INTERRUPT_GRACE_S)
            return self._error(call.name, "timeout", f"{call.name!r} timed out after {self.timeout_s:g} s")
        if "error" in outcome:
            err = outcome["error"]
            message = str(err).strip()
            if len(message) > _MAX_EXCEPTION_CHARS:
                message = message[:_MAX_EXCEPTION_CHARS] + "…"
            return self._error(call.name, "raised",
                               f"{call.name!r} raised {type(err).__name__}" + (f": {message}" if message else ""))
        text = _as_text(outcome.get("value"))
        if text is None:
            value = outcome.get("value")
            return self._error(call.name, "bad_output",
                               f"{call.name!r} returned a {type(value).__name__} that cannot be shown as text")
        return ToolResult(call.name, self._cut(text))

    def _error(self, name: str, kind: str, message: str) -> ToolResult:
        return ToolResult(name, self._cut(f"Error: {message}"), kind)

    def _cut(self, text: str) -> str:
        dropped = len(text) - self.max_output_chars
        if dropped <= 0:
            return text
        return text[:self.max_output_chars] + f"\n[… {dropped} more characters cut]"


def _as_text(value: Any) -> str | None:
    """A tool's return value as the text the model sees: strings as they are, UTF-8 bytes decoded,
    anything else as JSON, or its str() when it is not JSON-serialisable (a DataFrame prints well);
    None when even that fails."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        pass
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ is a bad output, not a crash
        return None


def _is_type(value: Any, name: str) -> bool:
    # Strict on purpose: 3.0 is not an "integer" (the Python tool would get a float) and a bool is
    # not a number, though an int is.
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "array":
        return isinstance(value, list)
    if name == "object":
        return isinstance(value, dict)
    if name == "null":
        return value is None
    return True  # a type this checker does not know ("any"): let the tool judge


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _check_value(value: Any, schema: dict[str, Any], where: str) -> str | None:
    if value is None and schema.get("nullable"):
        return None
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(value, t) for t in allowed):
            return f"{where} must be {' or '.join(allowed)}, got {json_type(value)}"
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        return f"{where} must be one of {json.dumps(schema['enum'])}, got {json.dumps(value)}"
    if isinstance(value, list):
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            if len(value) != len(prefix):
                return f"{where} must have {len(prefix)} items, got {len(value)}"
            pairs = zip(value, prefix)
        elif isinstance(schema.get("items"), dict):
            pairs = ((item, schema["items"]) for item in value)
        else:
            pairs = iter(())
        for i, (item, item_schema) in enumerate(pairs):
            problem = _check_value(item, item_schema, f"{where}[{i}]")
            if problem:
                return problem
    if isinstance(value, dict) and ("properties" in schema or "additionalProperties" in schema):
        return _check_object(value, schema, where, strict=schema.get("additionalProperties") is False)
    return None


def _check_object(value: dict[str, Any], schema: dict[str, Any], where: str | None, *, strict: bool) -> str | None:
    """`where` is None for the call's top-level arguments (messages say "missing 'sheet'") and the
    path of a nested object otherwise ("'options' is missing 'mode'")."""
    properties = schema.get("properties") or {}
    for key in schema.get("required") or []:
        if key not in value:
            return f"missing {key!r}" if where is None else f"{where} is missing {key!r}"
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        path = repr(key) if where is None else f"{where}[{key!r}]"
        if key in properties:
            problem = _check_value(item, properties[key], path)
        elif strict:
            known = ", ".join(properties) or "none"
            return (f"unknown argument {key!r} (arguments: {known})" if where is None
                    else f"{where} has unknown key {key!r} (keys: {known})")
        elif isinstance(extra, dict):
            problem = _check_value(item, extra, path)
        else:
            problem = None
        if problem:
            return problem
    return None


def check_arguments(arguments: Any, parameters: dict[str, Any]) -> str | None:
    """The first problem with a call's `arguments` under the tool's ``parameters`` schema, or None.

    Checks what would otherwise surface as a Python error inside the tool: required arguments
    present, no unknown ones (a Python function would raise TypeError), JSON types, enums, and
    items of arrays / values of nested objects where the schema describes them.
    """
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {json_type(arguments)}"
    return _check_object(arguments, parameters, None, strict=True)
