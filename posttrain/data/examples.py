"""The example shapes (prompt, SFT, preference, unpaired), parsed and validated from `Record`s.

Conventions follow TRL's dataset formats: a field is either plain text (a string) or
conversational (a list of ``{"role", "content"}`` messages). Every problem raises a `DataError`
naming the file, row and field; `load_examples` can instead skip bad rows and count them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, TypeVar, Union

from posttrain.data.readers import DataError, Record, iter_rows

Message = dict[str, Any]
Text = Union[str, list[Message]]  # plain text, or a list of chat messages
ROLES = ("system", "user", "assistant", "tool")
MAX_SKIP_REASONS = 10

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class PromptExample:
    """A prompt for RL or evaluation; `extras` holds every other column (answer, tests, ...),
    which reward functions later receive as keyword arguments."""

    prompt: Text
    extras: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    row: int = 0


@dataclass(frozen=True)
class SFTExample:
    """A supervised example: the model learns `completion` (for conversations: its assistant
    turns) given `prompt`. A ``messages`` row is split before its first assistant turn."""

    prompt: Text
    completion: Text
    source: str = "<memory>"
    row: int = 0
    # Tool schemas the conversation had (a row's "tools" column), rendered by the chat template.
    tools: list[dict] | None = None

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list) or isinstance(self.completion, list)


@dataclass(frozen=True)
class PreferenceExample:
    """A preference pair: `chosen` is preferred to `rejected` as a response to `prompt`."""

    prompt: Text
    chosen: Text
    rejected: Text
    source: str = "<memory>"
    row: int = 0

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list) or isinstance(self.chosen, list)


@dataclass(frozen=True)
class UnpairedExample:
    """A completion labelled desirable (`label` True) or undesirable, with no counterpart: the
    unpaired format KTO trains on (TRL's "unpaired preference" rows: prompt, completion, label)."""

    prompt: Text
    completion: Text
    label: bool
    source: str = "<memory>"
    row: int = 0

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list) or isinstance(self.completion, list)


@dataclass
class LoadedExamples:
    """Result of a loading (or tokenising) pass that may have skipped bad rows."""

    examples: list[Any]
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)  # the first MAX_SKIP_REASONS messages

    def summary(self) -> str | None:
        """E.g. "skipped 3 malformed rows (first: data.jsonl, line 7, field 'chosen': missing)"."""
        if not self.skipped:
            return None
        noun = "row" if self.skipped == 1 else "rows"
        return f"skipped {self.skipped} malformed {noun} (first: {self.skip_reasons[0]})"


# ----------------------------------------------------------------------------- field checks


def _get(record: Record, name: str) -> Any:
    # Parquet / datasets represent an absent value as None: treat it like a missing key.
    value = record.data.get(name)
    if value is None:
        raise DataError(record.source, record.row, name, "missing")
    return value


def _check_tools(record: Record, value: Any) -> list[dict] | None:
    """A row's tool schemas: None, or a list of JSON-schema objects (as `get_json_schema` writes)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise DataError(record.source, record.row, "tools", f"expected a list of tool schemas (objects), got {value!r:.80}")
    return [dict(t) for t in value]


def _check_messages(record: Record, name: str, value: Any, *, need_assistant: bool) -> list[Message]:
    """Validate a message list; returns shallow copies so later edits cannot touch the row."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else type(value).__name__
        raise DataError(record.source, record.row, name, f"expected a non-empty list of messages, got {got}")
    messages = []
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise DataError(record.source, record.row, where,
                            f"expected an object with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise DataError(record.source, record.row, f"{where}.role", f"unknown role {role!r}; expected one of {ROLES}")
        content = message.get("content")
        # An assistant turn that only calls tools legitimately has no text.
        tool_call_only = role == "assistant" and bool(message.get("tool_calls"))
        if content is None and not tool_call_only:
            raise DataError(record.source, record.row, f"{where}.content", "missing")
        if content is not None and not isinstance(content, str):
            raise DataError(record.source, record.row, f"{where}.content",
                            f"expected a string, got {type(content).__name__}")
        if role == "assistant" and not tool_call_only and not content.strip():
            raise DataError(record.source, record.row, f"{where}.content", "empty assistant message")
        messages.append(dict(message))
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError(record.source, record.row, name, "no assistant message")
    return messages


def _check_text(record: Record, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DataError(record.source, record.row, name,
                        f"expected a string or a list of messages, got {type(value).__name__}")
    if not value.strip():
        raise DataError(record.source, record.row, name, "empty")
    return value


def _check_prompt(record: Record, name: str) -> Text:
    value = _get(record, name)
    if isinstance(value, list):
        return _check_messages(record, name, value, need_assistant=False)
    return _check_text(record, name, value)


def _check_response(record: Record, name: str, prompt: Text) -> Text:
    """A response matching the prompt's kind. A plain string after a conversational prompt is
    taken as the assistant's reply (a common way datasets store it)."""
    value = _get(record, name)
    if isinstance(prompt, str):
        if isinstance(value, list):
            raise DataError(record.source, record.row, name,
                            "is a message list but the prompt is plain text; use the same kind for both")
        return _check_text(record, name, value)
    if isinstance(value, str):
        return [{"role": "assistant", "content": _check_text(record, name, value)}]
    return _check_messages(record, name, value, need_assistant=True)


# ----------------------------------------------------------------------------- parsers


def parse_prompt(record: Record, *, prompt_field: str = "prompt") -> PromptExample:
    """A prompt row: `prompt_field` (string or messages); all other columns go to `extras`."""
    prompt = _check_prompt(record, prompt_field)
    extras = {k: v for k, v in record.data.items() if k != prompt_field}
    return PromptExample(prompt, extras, record.source, record.row)


def parse_sft(record: Record, *, messages_field: str = "messages", prompt_field: str = "prompt",
              completion_field: str = "completion") -> SFTExample:
    """An SFT row: `messages_field` (a conversation with at least one assistant turn), or
    `prompt_field` + `completion_field` (both text, or both conversational)."""
    if record.data.get(messages_field) is not None:
        messages = _check_messages(record, messages_field, record.data[messages_field], need_assistant=True)
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if first == 0:
            # Nothing to condition on, and many chat templates cannot render an empty history.
            raise DataError(record.source, record.row, f"{messages_field}[0].role",
                            "conversation starts with an assistant turn; add the turn it answers")
        return SFTExample(messages[:first], messages[first:], record.source, record.row,
                          tools=_check_tools(record, record.data.get("tools")))
    if prompt_field not in record.data and completion_field not in record.data:
        columns = ", ".join(sorted(record.data)) or "none"
        raise DataError(record.source, record.row, messages_field,
                        f"missing (and no {prompt_field!r}/{completion_field!r} pair either; columns: {columns})")
    prompt = _check_prompt(record, prompt_field)
    completion = _check_response(record, completion_field, prompt)
    return SFTExample(prompt, completion, record.source, record.row)


def parse_preference(record: Record, *, prompt_field: str = "prompt", chosen_field: str = "chosen",
                     rejected_field: str = "rejected") -> PreferenceExample:
    """A preference row: prompt + chosen + rejected (all text, or a conversational prompt with
    message-list or string responses). Identical responses are rejected: they teach nothing."""
    prompt = _check_prompt(record, prompt_field)
    chosen = _check_response(record, chosen_field, prompt)
    rejected = _check_response(record, rejected_field, prompt)
    if chosen == rejected:
        raise DataError(record.source, record.row, rejected_field, f"identical to {chosen_field!r}")
    return PreferenceExample(prompt, chosen, rejected, record.source, record.row)


def parse_unpaired(record: Record, *, prompt_field: str = "prompt", completion_field: str = "completion",
                   label_field: str = "label") -> UnpairedExample:
    """An unpaired row: prompt + completion (as for SFT) + a boolean `label_field` (true = desirable)."""
    prompt = _check_prompt(record, prompt_field)
    completion = _check_response(record, completion_field, prompt)
    label = _get(record, label_field)
    if not isinstance(label, bool):
        raise DataError(record.source, record.row, label_field,
                        f"expected true (desirable) or false (undesirable), got {label!r}")
    return UnpairedExample(prompt, completion, label, record.source, record.row)


_PARSERS: dict[str, Callable[..., Any]] = {
    "prompt": parse_prompt,
    "sft": parse_sft,
    "preference": parse_preference,
    "unpaired": parse_unpaired,
}
_FIELD_NAMES = {
    "prompt": ("prompt_field",),
    "sft": ("messages_field", "prompt_field", "completion_field"),
    "preference": ("prompt_field", "chosen_field", "rejected_field"),
    "unpaired": ("prompt_field", "completion_field", "label_field"),
}


# ----------------------------------------------------------------------------- loading


def collect(items: Iterable[T | DataError], fn: Callable[[T], U], *,
            on_bad_row: Literal["error", "skip"] = "error", limit: int | None = None) -> LoadedExamples:
    """Apply `fn` to each item, raising or skipping (and counting) `DataError`s.

    `items` may contain `DataError`s (rows that could not even be read); they count as bad rows.
    Stops once `limit` good results are collected. Shared by loading and tokenisation passes.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    result = LoadedExamples([])
    for item in items:
        if limit is not None and len(result.examples) >= limit:
            break
        try:
            if isinstance(item, DataError):
                raise item
            result.examples.append(fn(item))
        except DataError as e:
            if on_bad_row == "error":
                raise
            result.skipped += 1
            if len(result.skip_reasons) < MAX_SKIP_REASONS:
                result.skip_reasons.append(str(e))
    return result


def load_examples(source: str | Path, shape: Literal["prompt", "sft", "preference", "unpaired"], *,
                  on_bad_row: Literal["error", "skip"] = "error", split: str | None = None,
                  limit: int | None = None, **field_names: str) -> LoadedExamples:
    """Read `source` (see `read_records`) and parse every row as `shape`.

    Args:
        shape: "prompt", "sft", "preference" or "unpaired" (KTO's labelled completions).
        on_bad_row: "error" raises the first `DataError`; "skip" drops bad rows and counts them.
        limit: stop after this many good examples.
        **field_names: column names, e.g. ``prompt_field="question"``; allowed per shape:
            prompt: prompt_field; sft: messages_field, prompt_field, completion_field;
            preference: prompt_field, chosen_field, rejected_field;
            unpaired: prompt_field, completion_field, label_field.
    """
    if shape not in _PARSERS:
        raise ValueError(f"unknown shape {shape!r}; expected one of {sorted(_PARSERS)}")
    unknown = set(field_names) - set(_FIELD_NAMES[shape])
    if unknown:
        raise TypeError(f"unknown field name option(s) {sorted(unknown)} for shape {shape!r}; "
                        f"allowed: {list(_FIELD_NAMES[shape])}")
    parser = _PARSERS[shape]
    return collect(iter_rows(source, split=split), lambda r: parser(r, **field_names),
                   on_bad_row=on_bad_row, limit=limit)
