"""ToolEnvironment: any task whose model acts by calling Python functions, as an Environment.

A task supplies three things (as methods of one object, or as callables):

    prompt(row) -> list[Message] | str        the opening messages
    tools(row)  -> ToolBox | list[Callable]   this episode's tools (e.g. bound to the row's workbook)
    score(row, final_answer, trajectory) -> float | None

and, optionally, ``close()`` (free what `tools(row)` opened: the rollout calls the environment's
`close` when the episode is over), and the environment does the rest: parse each model turn (`parser`, by family), run the calls in
order through the ToolBox, answer with one ``{"role": "tool", ...}`` message per call, and decide
when the episode is over. After `reset`, `tool_schemas` holds the schemas the rollout passes to
the chat template's ``tools=``, so the model is shown exactly the tools that run.

When an episode ends:
- the model calls `finish_tool` (default "answer", added to the tools by the environment; its one
  argument ``answer`` is the final answer). Calls after it in the same turn are not run.
- the model writes a turn with no tool call and no malformed block: the turn's text is the final
  answer. This holds also when `finish_tool` is set, on purpose: chat models answer in prose, and
  treating a plain message as "not done" would let an episode loop to `max_turns` on a model that
  has already answered. A task that insists on the finish tool scores that case itself
  (`finished_by` says which way the episode ended).
- a limit of the runner (turns, tokens, context): then `final_answer` stays None.

A turn with malformed tool-call blocks is never final: each block gets an error tool message so
the model can fix it. Calls beyond `max_calls_per_turn` are not run; each gets an error message.

One instance per episode (it holds the episode's tools, answer and counters).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

from posttrain.agents.parsers import ToolCallParser, get_tool_call_parser
from posttrain.agents.tools import ERROR_KINDS, Tool, ToolBox
from posttrain.envs.base import Message, StepResult, Trajectory, as_messages

__all__ = ["FINISH_ARGUMENT", "INVALID_CALL_NAME", "ToolEnvironment", "ToolTask", "finish_tool"]

FINISH_ARGUMENT = "answer"          # the finish tool's one argument
INVALID_CALL_NAME = "invalid_tool_call"  # the `name` of the tool message answering a malformed block
# Error kinds the environment adds to the ToolBox's: calls over the per-turn limit, malformed blocks.
ENV_ERROR_KINDS = ("too_many_calls", "malformed")
FINISH_REASONS = ("answer", "message")


class ToolTask(Protocol):
    """What a task object provides (any object with these methods; no base class)."""

    def prompt(self, row: Mapping[str, Any]) -> list[Message] | str: ...

    def tools(self, row: Mapping[str, Any]) -> ToolBox | Sequence[Callable[..., Any] | Tool]: ...

    def score(self, row: Mapping[str, Any], final_answer: str | None, trajectory: Trajectory) -> float | None: ...


def finish_tool(name: str = "answer") -> Tool:
    """The tool that ends an episode; its one string argument is the final answer."""
    schema = {
        "type": "function",
        "function": {
            "name": name,
            "description": "Give your final answer. This ends the episode, so call it once, when you are done.",
            "parameters": {
                "type": "object",
                "properties": {FINISH_ARGUMENT: {"type": "string", "description": "The final answer."}},
                "required": [FINISH_ARGUMENT],
            },
        },
    }
    return Tool(name=name, fn=lambda answer: "Answer recorded.", schema=schema)


class ToolEnvironment:
    """A tool-use episode (see the module docstring). Satisfies `posttrain.envs.base.Environment`.

    Args:
        task: an object with `prompt`, `tools` and `score` methods (`ToolTask`); the keyword
            callables of the same names override its methods.
        parser: a name in `TOOL_CALL_PARSERS`, an import path, or a parser function; it must match
            the model family's chat template.
        finish_tool: name of the tool that ends the episode, or None for "a plain message ends it".
        max_calls_per_turn: calls run per turn; later ones get an error observation.
        timeout_s, max_output_chars: for the ToolBox built when `tools(row)` returns a list (a
            ToolBox the task returns keeps its own settings).

    Attributes (per episode, after `reset`):
        tool_schemas: the schemas for the chat template's ``tools=`` (None before `reset`).
        final_answer: the finish tool's argument or the final message's text; None until then.
        finished_by: "answer" or "message" once the episode ended itself; None otherwise.
        stats: counters the rollout sums over episodes: ``turns``, ``tool_calls`` (every call the
            model made, run or not), ``parse_errors`` (malformed blocks), ``tool_errors`` (per kind:
            the ToolBox's ERROR_KINDS, plus ``too_many_calls`` and ``malformed``, the latter equal
            to ``parse_errors`` so that errors / (calls + parse_errors) is the failed-attempt rate),
            ``finished_by`` (one-hot over "answer" / "message": a count sums across episodes into
            the share of each ending, a string would not). Every key is present from `reset` on, so
            metric columns are the same every step.
    """

    def __init__(self, task: ToolTask | None = None, *,
                 prompt: Callable[[Mapping[str, Any]], list[Message] | str] | None = None,
                 tools: Callable[[Mapping[str, Any]], ToolBox | Sequence[Callable[..., Any] | Tool]] | None = None,
                 score: Callable[[Mapping[str, Any], str | None, Trajectory], float | None] | None = None,
                 close: Callable[[], None] | None = None, parser: str | ToolCallParser = "hermes", finish_tool: str | None = "answer",
                 max_calls_per_turn: int = 8, timeout_s: float = 10.0, max_output_chars: int = 2000) -> None:
        self._prompt = prompt or getattr(task, "prompt", None)
        self._tools = tools or getattr(task, "tools", None)
        self._score = score or getattr(task, "score", None)
        self._close = close or getattr(task, "close", None)
        missing = [name for name, fn in (("prompt", self._prompt), ("tools", self._tools), ("score", self._score))
                   if not callable(fn)]
        if missing:
            raise ValueError(f"ToolEnvironment needs {', '.join(missing)}: pass a task object with these "
                             "methods, or them as keyword callables")
        if max_calls_per_turn < 1:
            raise ValueError(f"ToolEnvironment max_calls_per_turn must be >= 1, got {max_calls_per_turn}")
        if finish_tool is not None and (not isinstance(finish_tool, str) or not finish_tool):
            raise ValueError(f"ToolEnvironment finish_tool must be a tool name or None, got {finish_tool!r}")
        self.parser: ToolCallParser = parser if callable(parser) else get_tool_call_parser(parser)
        self.finish_tool = finish_tool
        self.max_calls_per_turn = max_calls_per_turn
        self.timeout_s = timeout_s
        self.max_output_chars = max_output_chars
        self.toolbox: ToolBox | None = None
        self.final_answer: str | None = None
        self.finished_by: str | None = None
        self.stats: dict[str, Any] = _fresh_stats()

    @property
    def tool_schemas(self) -> list[dict[str, Any]] | None:
        return self.toolbox.schemas if self.toolbox is not None else None

    @property
    def done(self) -> bool:
        return self.finished_by is not None

    def reset(self, row: Mapping[str, Any]) -> list[Message]:
        messages = as_messages(self._prompt(row), "ToolEnvironment prompt(row)")
        self.toolbox = self._episode_toolbox(row)
        self.final_answer, self.finished_by = None, None
        self.stats = _fresh_stats()
        return messages

    def step(self, messages: list[Message]) -> StepResult:
        if self.toolbox is None:
            raise RuntimeError("ToolEnvironment.step before reset")
        if self.done:
            raise RuntimeError("ToolEnvironment.step after the episode ended; use one instance per episode")
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError("ToolEnvironment.step: the last message must be the model's (role 'assistant')")
        self.stats["turns"] += 1
        parsed = self.parser(str(messages[-1].get("content") or ""))
        if not parsed.calls and not parsed.errors:
            self._finish("message", parsed.content)
            return StepResult(observation=[], done=True)
        observation: list[Message] = []
        for index, call in enumerate(parsed.calls):
            self.stats["tool_calls"] += 1
            if index >= self.max_calls_per_turn:
                self.stats["tool_errors"]["too_many_calls"] += 1
                observation.append(_tool_message(call.name, f"Error: too many tool calls in one turn (at most "
                                                            f"{self.max_calls_per_turn}); {call.name!r} was not run"))
                continue
            result = self.toolbox.call(call)
            if result.error is not None:
                self.stats["tool_errors"][result.error] += 1
            observation.append(_tool_message(call.name, result.content))
            if call.name == self.finish_tool and result.error is None:
                self._finish("answer", str(call.arguments[FINISH_ARGUMENT]))
                break
        for error in parsed.errors:
            self.stats["parse_errors"] += 1
            self.stats["tool_errors"]["malformed"] += 1
            observation.append(_tool_message(INVALID_CALL_NAME, f"Error: {error}"))
        return StepResult(observation=observation, done=self.done)

    def score(self, trajectory: Trajectory) -> float | None:
        """The task's score of this episode's final answer (None when the episode never answered).

        Exceptions from the task's score propagate: timeouts and error accounting are the caller's
        reward runner's job (docs/architecture.md, "Reward function"), the same as for any reward.
        """
        return self._score(trajectory.row, self.final_answer, trajectory)

    def close(self) -> None:
        """End the episode's hold on its tools: the task's `close` (e.g. a workbook's database
        connection), once; the answer and counters stay readable."""
        if self.toolbox is not None and callable(self._close):
            self._close()
        self.toolbox = None

    def _episode_toolbox(self, row: Mapping[str, Any]) -> ToolBox:
        given = self._tools(row)
        if isinstance(given, ToolBox):
            tools, timeout_s, max_chars = list(given.tools), given.timeout_s, given.max_output_chars
        else:
            tools, timeout_s, max_chars = list(given), self.timeout_s, self.max_output_chars
        if self.finish_tool is not None:
            names = {t.name if isinstance(t, Tool) else getattr(t, "__name__", None) for t in tools}
            if self.finish_tool in names:
                raise ValueError(f"ToolEnvironment: the task has its own tool named {self.finish_tool!r}, the "
                                 "finish tool's name; rename it or pass another finish_tool (or None)")
            tools.append(finish_tool(self.finish_tool))
        return ToolBox(tools, timeout_s=timeout_s, max_output_chars=max_chars)

    def _finish(self, how: str, answer: str) -> None:
        self.finished_by, self.final_answer = how, answer
        self.stats["finished_by"][how] += 1


def _tool_message(name: str, content: str) -> Message:
    return {"role": "tool", "name": name, "content": content}


def _fresh_stats() -> dict[str, Any]:
    return {
        "turns": 0,
        "tool_calls": 0,
        "parse_errors": 0,
        "tool_errors": {kind: 0 for kind in ERROR_KINDS + ENV_ERROR_KINDS},
        "finished_by": {how: 0 for how in FINISH_REASONS},
    }
