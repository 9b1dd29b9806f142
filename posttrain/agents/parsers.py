"""Tool calls out of a model's raw text, one parser per model family.

A parser is a plain function ``text -> ParsedTurn``; `TOOL_CALL_PARSERS` names the built-in ones
(the names vLLM uses for the same formats) and `get_tool_call_parser` also accepts
"pkg.module:function", so a new family is a function, not a change here.

Why parsers never raise: the text is whatever the policy sampled. A malformed block is the model's
mistake, so it becomes an entry in `ParsedTurn.errors` (shown to the model as an observation and
counted), never an exception that would kill the rollout.

Trailing special tokens (``<|im_end|>``, ``</s>``, ...) are dropped first: an engine that decodes
with ``skip_special_tokens=False`` leaves the stop token at the end of the text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from posttrain.import_path import lookup

__all__ = ["TOOL_CALL_PARSERS", "ParsedTurn", "ToolCall", "ToolCallParser", "get_tool_call_parser",
           "json_type", "parse_hermes", "parse_llama3_json", "parse_mistral", "strip_trailing_specials"]


@dataclass(frozen=True)
class ToolCall:
    """One call: the tool's name, its decoded arguments, and the text it was parsed from."""

    name: str
    arguments: dict[str, Any]
    raw: str = ""


@dataclass
class ParsedTurn:
    """A model turn split into prose and calls.

    Attributes:
        content: the text outside tool-call markup, stripped (the final answer of a plain message).
        calls: well-formed calls, in the order they appear.
        errors: one message per malformed block, saying what was wrong and quoting a piece of it.
    """

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


ToolCallParser = Callable[[str], ParsedTurn]

# ChatML / Llama-3 / Gemma style specials, and SentencePiece's </s>, at the very end of the text.
_TRAILING_SPECIALS = re.compile(r"(?:\s*(?:<\|[A-Za-z0-9_]+\|>|</s>|<eos>|<end_of_turn>))+\s*\Z")


def strip_trailing_specials(text: str) -> str:
    """`text` without the stop / end-of-turn tokens an engine may have left at its end."""
    return _TRAILING_SPECIALS.sub("", text)


def json_type(value: Any) -> str:
    """The JSON Schema name of a decoded JSON value's type (a bool is "boolean", not "integer")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _quote(text: str, limit: int = 60) -> str:
    """A short, single-line excerpt for an error message (repr escapes newlines)."""
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _call_from_object(obj: Any, raw: str, label: str, argument_keys: tuple[str, ...]) -> ToolCall | str:
    """A ToolCall from a decoded JSON value, or an error message naming what is wrong."""
    if not isinstance(obj, dict):
        return (f"{label}: expected a JSON object with 'name' and '{argument_keys[0]}', "
                f"got {json_type(obj)}: {_quote(raw)}")
    if "name" not in obj:
        return f"{label}: missing 'name': {_quote(raw)}"
    name = obj["name"]
    if not isinstance(name, str) or not name.strip():
        return f"{label}: 'name' must be a non-empty string, got {json_type(name)} {_quote(json.dumps(name))}"
    key = next((k for k in argument_keys if k in obj), None)
    arguments = obj[key] if key is not None else {}  # a call without arguments is a call to a no-argument tool
    key = key or argument_keys[0]
    if isinstance(arguments, str):  # OpenAI style: the arguments object serialised as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return f"{label}: '{key}' of {name!r} is a string that is not JSON: {_quote(obj[key])}"
    if not isinstance(arguments, dict):
        return f"{label}: '{key}' of {name!r} must be a JSON object, got {json_type(arguments)}: {_quote(raw)}"
    return ToolCall(name=name, arguments=arguments, raw=raw)


def _decode_call(body: str, raw: str, label: str, argument_keys: tuple[str, ...]) -> ToolCall | str:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as err:
        return f"{label}: invalid JSON ({err.msg} at char {err.pos}): {_quote(body)}"
    return _call_from_object(obj, raw, label, argument_keys)


def _add(result: ToolCall | str, turn: ParsedTurn) -> None:
    if isinstance(result, ToolCall):
        turn.calls.append(result)
    else:
        turn.errors.append(result)


_OPEN, _CLOSE = "<tool_call>", "</tool_call>"


def parse_hermes(text: str) -> ParsedTurn:
    """Qwen2 / Qwen2.5 / Qwen3 and Hermes: any number of
    ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` blocks, prose around them.

    Strict about markup on purpose: an unclosed ``<tool_call>`` (also one cut short by another
    ``<tool_call>``) and a stray ``</tool_call>`` are errors rather than guessed at, so RL rewards
    the format the chat template renders.
    """
    text = strip_trailing_specials(text)
    turn = ParsedTurn(content="")
    prose: list[str] = []
    position, block = 0, 0

    def keep_prose(segment: str) -> None:
        for _ in range(segment.count(_CLOSE)):
            turn.errors.append(f"a {_CLOSE} with no {_OPEN} before it: {_quote(segment)}")
        prose.append(segment.replace(_CLOSE, ""))

    while True:
        start = text.find(_OPEN, position)
        if start < 0:
            keep_prose(text[position:])
            break
        keep_prose(text[position:start])
        block += 1
        label = f"tool call {block}"
        body_start = start + len(_OPEN)
        end = text.find(_CLOSE, body_start)
        next_open = text.find(_OPEN, body_start)
        if end < 0 or 0 <= next_open < end:
            stop = next_open if next_open >= 0 else len(text)
            turn.errors.append(f"{label}: {_OPEN} is never closed by {_CLOSE}: {_quote(text[start:stop])}")
            position = stop
            continue
        raw = text[start:end + len(_CLOSE)]
        _add(_decode_call(text[body_start:end], raw, label, ("arguments",)), turn)
        position = end + len(_CLOSE)
    turn.content = "".join(prose).strip()
    return turn


_MISTRAL_MARK = "[TOOL_CALLS]"


def parse_mistral(text: str) -> ParsedTurn:
    """Mistral (v3 tokenizer): ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``; prose before
    (and, rarely, after) the JSON array. A single object instead of an array is accepted."""
    text = strip_trailing_specials(text)
    turn = ParsedTurn(content="")
    prose: list[str] = []
    decoder = json.JSONDecoder()
    position, block = 0, 0
    while True:
        start = text.find(_MISTRAL_MARK, position)
        if start < 0:
            prose.append(text[position:])
            break
        prose.append(text[position:start])
        block += 1
        label = f"tool call block {block}"
        body = start + len(_MISTRAL_MARK)
        while body < len(text) and text[body].isspace():
            body += 1
        try:
            value, end = decoder.raw_decode(text, body)
        except json.JSONDecodeError as err:
            turn.errors.append(f"{label}: invalid JSON after {_MISTRAL_MARK} ({err.msg}): {_quote(text[body:])}")
            nxt = text.find(_MISTRAL_MARK, body)  # nothing after a broken block can be trusted as prose
            position = nxt if nxt >= 0 else len(text)
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items, 1):
            _add(_call_from_object(item, json.dumps(item), f"{label}, call {i}", ("arguments",)), turn)
        position = end
    turn.content = "".join(prose).strip()
    return turn


_PYTHON_TAG = "<|python_tag|>"


def parse_llama3_json(text: str) -> ParsedTurn:
    """Llama 3.1 / 3.2 / 3.3 JSON tool calling: the whole turn is ``{"name": ..., "parameters": {...}}``
    (optionally after ``<|python_tag|>``; several calls separated by ``;``). A turn that does not
    start with ``{`` is a plain message; one that does but is not valid JSON is a malformed call,
    since in this format only calls start with a brace."""
    text = strip_trailing_specials(text).strip()
    if text.startswith(_PYTHON_TAG):
        text = text[len(_PYTHON_TAG):].lstrip()
    if not text.startswith("{"):
        return ParsedTurn(content=text)
    turn = ParsedTurn(content="")
    decoder = json.JSONDecoder()
    position, block = 0, 0
    while position < len(text) and text[position] == "{":
        block += 1
        label = f"tool call {block}"
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            turn.errors.append(f"{label}: invalid JSON ({err.msg} at char {err.pos - position}): "
                               f"{_quote(text[position:])}")
            return turn
        _add(_call_from_object(value, text[position:end], label, ("parameters", "arguments")), turn)
        position = end
        rest = text[position:].lstrip()
        if not rest.startswith(";"):
            turn.content = rest.strip()
            break
        position = len(text) - len(rest) + 1
        while position < len(text) and text[position].isspace():
            position += 1
    return turn


TOOL_CALL_PARSERS: dict[str, ToolCallParser] = {
    "hermes": parse_hermes,
    "mistral": parse_mistral,
    "llama3_json": parse_llama3_json,
}


def get_tool_call_parser(name: str) -> ToolCallParser:
    """The parser registered as `name`, or the function at import path "pkg.module:function"."""
    return lookup(TOOL_CALL_PARSERS, name, "tool-call parser")
