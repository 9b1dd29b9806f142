"""Reward one sampled turn by whether its action is functionally the expert's (PivotRL).

PivotRL (Yi et al. 2026, arXiv 2603.21383) trains on single turns sampled at "pivot" states of
expert trajectories and rewards a turn by whether its action is functionally equivalent to the
expert's action there, without rolling the environment forward. This module is the generic part
of that verifier; what "equivalent" means for a domain is plugged in:

- `arguments_equivalent(tool_name, sampled_args, expert_args) -> bool`, e.g. two SQL queries are
  equivalent when they return the same result on the episode's workbook. The default compares
  JSON values after normalisation (3 == 3.0, strings stripped, key order ignored, a bool is not
  a number).
- `message_equivalent(sampled_text, expert_text) -> bool` for turns where the expert answered in
  prose. The default is normalised text equality (case and whitespace).

Equivalences run on what the model wrote; one that cannot evaluate its input (a query that does not
parse) should return False. An exception propagates to the caller's reward runner, which times out,
counts and scores it like any failing reward, so a bug in an equivalence is seen, not hidden.

Why a message turn is never rewarded for arbitrary text: a verifier that accepts any prose where
the expert wrote prose is exploited at once (the policy learns to stop calling tools); a message
earns 1 only when it matches the expert's message under `message_equivalent`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from posttrain.agents.parsers import ParsedTurn, ToolCall

__all__ = ["ExpertAction", "action_reward", "calls_f1", "json_equivalent", "normalise_json", "text_equivalent"]

ArgumentsEquivalent = Callable[[str, Mapping[str, Any], Mapping[str, Any]], bool]
MessageEquivalent = Callable[[str, str], bool]


@dataclass(frozen=True)
class ExpertAction:
    """The expert's action at a pivot: tool calls (`calls` non-empty; `content` is then ignored)
    or, when there are none, a message `content`."""

    content: str = ""
    calls: tuple[ToolCall, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "calls", tuple(self.calls))  # accept a list; keep the record immutable

    @property
    def expects_calls(self) -> bool:
        return bool(self.calls)

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> "ExpertAction":
        """From an expert assistant message in chat form: ``content`` plus optional ``tool_calls``
        (``{"function": {"name", "arguments"}}`` or ``{"name", "arguments"}``; arguments a dict or
        a JSON string). Raises ValueError naming the call when the data is malformed: expert data
        is the dataset's, not the model's, and should be fixed, not scored."""
        calls = []
        for i, entry in enumerate(message.get("tool_calls") or []):
            spec = entry.get("function", entry) if isinstance(entry, Mapping) else None
            if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
                raise ValueError(f"expert tool_calls[{i}] must have a string 'name', got {entry!r}")
            arguments = spec.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError as err:
                    raise ValueError(f"expert tool_calls[{i}] ({spec['name']!r}): arguments are not JSON: "
                                     f"{err}") from err
            if not isinstance(arguments, dict):
                raise ValueError(f"expert tool_calls[{i}] ({spec['name']!r}): arguments must be an object, "
                                 f"got {arguments!r}")
            calls.append(ToolCall(spec["name"], arguments))
        return cls(content=str(message.get("content") or ""), calls=tuple(calls))


def normalise_json(value: Any) -> Any:
    """A hashable canonical form of a JSON value: numbers as floats (3 == 3.0), strings stripped,
    objects with sorted keys; booleans and null tagged so True is not 1 and None is not "null"."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        number = float(value)
        return ("number", "nan" if math.isnan(number) else number)
    if isinstance(value, str):
        return ("string", value.strip())
    if isinstance(value, (list, tuple)):
        return ("array", tuple(normalise_json(v) for v in value))
    if isinstance(value, Mapping):
        return ("object", tuple(sorted((str(k), normalise_json(v)) for k, v in value.items())))
    return ("other", repr(value))


def json_equivalent(name: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """The default argument equivalence: equal after `normalise_json` (`name` is unused)."""
    return normalise_json(dict(a)) == normalise_json(dict(b))


def text_equivalent(a: str, b: str) -> bool:
    """The default message equivalence: equal ignoring case and runs of whitespace."""
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def calls_f1(predicted: Sequence[ToolCall], expected: Sequence[ToolCall], wrong: int = 0, *,
             arguments_equivalent: ArgumentsEquivalent = json_equivalent) -> float:
    """F1 of predicted vs expected calls under a maximum one-to-one matching.

    A predicted call matches an expected one when the names are equal and
    `arguments_equivalent(name, predicted, expected)`; the matching maximises the number of matched
    pairs (so two identical predicted calls cannot both claim one expected call, and the order of
    parallel calls does not matter). `wrong` adds predicted calls that match nothing (malformed
    blocks). F1 = 2 * matched / (n_predicted + n_expected); 0 when nothing was predicted.
    """
    n_predicted = len(predicted) + wrong
    if n_predicted == 0 or not expected:
        return 0.0
    # Only same-name pairs are compared: an equivalence may be costly (running two queries).
    edges = [[j for j, e in enumerate(expected)
              if p.name == e.name and arguments_equivalent(p.name, p.arguments, e.arguments)]
             for p in predicted]
    matched = _maximum_matching(edges, len(expected))
    return 2.0 * matched / (n_predicted + len(expected))


def _maximum_matching(edges: list[list[int]], n_right: int) -> int:
    """Size of a maximum bipartite matching (Kuhn's augmenting paths; turns hold few calls)."""
    owner: list[int | None] = [None] * n_right

    def augment(left: int, seen: set[int]) -> bool:
        for right in edges[left]:
            if right in seen:
                continue
            seen.add(right)
            if owner[right] is None or augment(owner[right], seen):  # type: ignore[arg-type]
                owner[right] = left
                return True
        return False

    return sum(augment(left, set()) for left in range(len(edges)))


def action_reward(sampled: ParsedTurn, expert: ExpertAction, *,
                  arguments_equivalent: ArgumentsEquivalent | None = None,
                  message_equivalent: MessageEquivalent | None = None) -> float:
    """Reward in [0, 1] for a sampled turn against the expert's action at the same state.

    Expert called tools: `calls_f1` of the sampled calls (malformed blocks count as wrong calls);
    a sampled plain message scores 0. Expert wrote a message: 1.0 only when the sampled turn has no
    calls, no malformed blocks, and `message_equivalent(sampled.content, expert.content)`; else 0.
    """
    if expert.expects_calls:
        return calls_f1(sampled.calls, expert.calls, wrong=len(sampled.errors),
                        arguments_equivalent=arguments_equivalent or json_equivalent)
    if sampled.calls or sampled.errors:
        return 0.0
    return 1.0 if (message_equivalent or text_equivalent)(sampled.content, expert.content) else 0.0
