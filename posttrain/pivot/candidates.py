"""Expert trajectories → PivotRL candidates.

A candidate is one model call of an expert trajectory: the state is the full history before it
(system and user turns, earlier assistant turns and tool results, exactly as the expert saw
them), the action is the expert's whole assistant message — plain text, or one or more tool
calls (PivotRL §3: an action is a complete turn, not a token). Training then samples only that
one turn from the state, so a candidate never rolls the environment forward.

Expert rows are chat records: ``{"messages": [...], "tools": [<JSON schemas>], <task columns>}``
with assistant messages in the Hugging Face format (``content`` and/or ``tool_calls``). The task
columns (e.g. the workbook ``file`` and the ``answer``) travel with every candidate, because a
functional verifier may need them (two SQL queries are equivalent on *this* workbook).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from posttrain.agents.action_match import ExpertAction

__all__ = ["Candidate", "candidates_fingerprint", "expert_action", "extract_candidates"]


@dataclass(frozen=True)
class Candidate:
    """One (state, expert action) pair.

    Attributes:
        id: "<trajectory index>:<message index>", stable for the same expert data.
        state: the messages before the expert's turn.
        action: the expert's assistant message (``content``, optional ``tool_calls``).
        tools: the tool schemas the expert had (rendered into the prompt by the chat template).
        task: the trajectory's other columns.
        turn: how many assistant turns came before this one.
    """

    id: str
    state: list[dict]
    action: dict
    tools: list[dict] | None = None
    task: dict = field(default_factory=dict)
    turn: int = 0


def expert_action(message: Mapping[str, Any]) -> dict:
    """The comparable part of an assistant message, as plain JSON: its text and its calls as
    {name, arguments} (checked and decoded by `agents.action_match.ExpertAction.from_message`)."""
    action = ExpertAction.from_message(message)
    return {"content": action.content,
            "tool_calls": [{"name": call.name, "arguments": dict(call.arguments)} for call in action.calls]}


def extract_candidates(rows: Iterable[Mapping[str, Any]], *, source: str = "expert data") -> list[Candidate]:
    """Every assistant turn of every expert trajectory, in order.

    Raises ValueError naming the source, the row and the message for a row without a message
    list or with a malformed assistant turn (malformed expert data would train on nonsense).
    """
    out: list[Candidate] = []
    for r, row in enumerate(rows):
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{source}: row {r}: 'messages' must be a non-empty list of chat messages")
        task = {k: v for k, v in row.items() if k not in ("messages", "tools")}
        turn = 0
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or "role" not in message:
                raise ValueError(f"{source}: row {r}, message {i}: expected a dict with a 'role', got {message!r}")
            if message["role"] != "assistant":
                continue
            if i == 0:
                raise ValueError(f"{source}: row {r}: the first message is the assistant's; a state needs a prompt")
            try:
                action = expert_action(message)
            except ValueError as exc:
                raise ValueError(f"{source}: row {r}, message {i}: {exc}") from None
            out.append(Candidate(id=f"{r}:{i}", state=[dict(m) for m in messages[:i]], action=action,
                                 tools=row.get("tools"), task=task, turn=turn))
            turn += 1
    return out


def candidates_fingerprint(candidates: Iterable[Candidate]) -> str:
    """A short hash of the candidates' content: a saved profile is reused only for the same ones."""
    digest = hashlib.sha256()
    for c in candidates:
        digest.update(json.dumps([c.id, c.state, c.action, c.tools, c.task], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
