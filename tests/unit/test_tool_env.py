"""ToolEnvironment driven by scripted policies (canned assistant texts) through `run_episode`:
tool observations, the finish tool, plain final messages, malformed blocks, per-turn call limits,
truncation, and the per-episode counters."""

from __future__ import annotations

import json

import pytest

from posttrain.agents.tool_env import INVALID_CALL_NAME, ToolEnvironment
from posttrain.agents.tools import ToolBox
from posttrain.envs.base import Environment, run_episode, spans_are_contiguous


# The toy template and turn of the environment-protocol tests.
from test_envs_base import Turn, encode  # noqa: E402


def scripted(*texts: str):
    """A policy that says `texts` in order, one per turn."""
    queue = list(texts)

    def policy(messages):
        text = queue.pop(0)
        return Turn(text, [ord(c) for c in text], [-0.25] * len(text))

    return policy


def call(name: str, **arguments) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


class Workbook:
    """One episode's data: tools are bound methods over it."""

    def __init__(self, cells: dict[str, int]) -> None:
        self.cells = cells

    def get(self, cell: str) -> int:
        """Value of one cell.

        Args:
            cell: an address such as "A1"
        """
        return self.cells[cell]


class SumTask:
    """Add two cells; the reward is 1 when the final answer is their sum."""

    def __init__(self) -> None:
        self.scored = []

    def prompt(self, row):
        return f"What is {row['a']} + {row['b']}?"

    def tools(self, row):
        return [Workbook(row["cells"]).get]

    def score(self, row, final_answer, trajectory):
        self.scored.append(final_answer)
        if final_answer is None:
            return None
        expected = row["cells"][row["a"]] + row["cells"][row["b"]]
        return 1.0 if final_answer.strip() == str(expected) else 0.0


ROW = {"a": "A1", "b": "B1", "cells": {"A1": 2, "B1": 40}}


def test_tool_calls_then_finish_tool_ends_and_scores_the_answer():
    task = SumTask()
    env = ToolEnvironment(task)
    assert isinstance(env, Environment)
    policy = scripted("Reading both.\n" + call("get", cell="A1") + "\n" + call("get", cell="B1"),
                      call("answer", answer="42"))
    traj = run_episode(env, ROW, policy, encode, max_turns=5)

    assert [m["role"] for m in traj.messages] == ["user", "assistant", "tool", "tool", "assistant", "tool"]
    assert traj.messages[2] == {"role": "tool", "name": "get", "content": "2"}
    assert traj.messages[3] == {"role": "tool", "name": "get", "content": "40"}
    assert traj.messages[5] == {"role": "tool", "name": "answer", "content": "Answer recorded."}
    assert (env.final_answer, env.finished_by, traj.reward, traj.truncated) == ("42", "answer", 1.0, False)
    assert task.scored == ["42"]
    assert [s.source for s in traj.spans] == ["prompt", "model", "env", "model"]  # the last observation is not encoded
    assert spans_are_contiguous(traj.spans)
    assert env.stats == {"turns": 2, "tool_calls": 3, "parse_errors": 0,
                         "tool_errors": {"unknown_tool": 0, "bad_arguments": 0, "raised": 0, "timeout": 0,
                                         "bad_output": 0, "too_many_calls": 0, "malformed": 0},
                         "finished_by": {"answer": 1, "message": 0}}


def test_close_frees_the_tasks_resources_once_and_keeps_the_answer():
    closed = []
    task = SumTask()
    env = ToolEnvironment(prompt=task.prompt, tools=task.tools, score=task.score, close=lambda: closed.append(1))
    run_episode(env, ROW, scripted(call("answer", answer="42")), encode, max_turns=5)
    env.close()
    env.close()
    assert closed == [1] and env.toolbox is None and env.final_answer == "42"
    ToolEnvironment(task).close()  # a task without close: nothing to free


def test_tool_schemas_after_reset_include_the_finish_tool():
    env = ToolEnvironment(SumTask())
    assert env.tool_schemas is None
    messages = env.reset(ROW)
    assert messages == [{"role": "user", "content": "What is A1 + B1?"}]
    assert [s["function"]["name"] for s in env.tool_schemas] == ["get", "answer"]
    assert env.tool_schemas[1]["function"]["parameters"]["required"] == ["answer"]
    plain = ToolEnvironment(SumTask(), finish_tool=None)
    plain.reset(ROW)
    assert [s["function"]["name"] for s in plain.tool_schemas] == ["get"]


def test_a_plain_message_ends_the_episode_even_with_a_finish_tool():
    env = ToolEnvironment(SumTask())
    traj = run_episode(env, ROW, scripted("It is 42."), encode)
    assert (env.final_answer, env.finished_by, traj.reward) == ("It is 42.", "message", 0.0)
    assert env.stats["finished_by"] == {"answer": 0, "message": 1}
    assert traj.messages[-1] == {"role": "assistant", "content": "It is 42."}


def test_without_finish_tool_the_final_message_is_the_answer():
    env = ToolEnvironment(SumTask(), finish_tool=None)
    traj = run_episode(env, ROW, scripted(call("get", cell="A1"), "42<|im_end|>"), encode)
    assert (env.final_answer, env.finished_by, traj.reward) == ("42", "message", 1.0)
    assert env.stats["tool_calls"] == 1 and env.stats["turns"] == 2


def test_errors_are_observations_and_counted_then_the_model_recovers():
    env = ToolEnvironment(SumTask())
    policy = scripted(
        '<tool_call>\n{"name": "get", "arguments": {"cell": "A1"}\n</tool_call>',   # bad JSON
        call("lookup", cell="A1") + call("get", sell="A1") + call("get", cell="Z9"),  # unknown, bad args, raises
        call("answer", answer="42"))
    traj = run_episode(env, ROW, policy, encode)
    tool_messages = [m for m in traj.messages if m["role"] == "tool"]
    assert tool_messages[0]["name"] == INVALID_CALL_NAME
    assert tool_messages[0]["content"].startswith("Error: tool call 1: invalid JSON (Expecting ',' delimiter")
    assert [m["content"] for m in tool_messages[1:4]] == [
        "Error: unknown tool 'lookup'; tools: get, answer",
        "Error: bad arguments for 'get': missing 'cell'",
        "Error: 'get' raised KeyError: 'Z9'"]
    assert traj.reward == 1.0
    assert env.stats["parse_errors"] == 1
    assert env.stats["tool_calls"] == 4
    assert env.stats["tool_errors"] == {"unknown_tool": 1, "bad_arguments": 1, "raised": 1, "timeout": 0,
                                        "bad_output": 0, "too_many_calls": 0, "malformed": 1}


def test_a_turn_with_only_a_malformed_block_is_not_final():
    env = ToolEnvironment(SumTask(), finish_tool=None)
    env.reset(ROW)
    result = env.step([{"role": "assistant", "content": "Let me see <tool_call>{\"name\": \"get\""}])
    assert result.done is False
    assert len(result.observation) == 1
    assert result.observation[0]["content"].startswith("Error: tool call 1: <tool_call> is never closed")
    assert env.final_answer is None


def test_calls_over_the_per_turn_limit_are_not_run():
    env = ToolEnvironment(SumTask(), max_calls_per_turn=2)
    env.reset(ROW)
    text = call("get", cell="A1") + call("get", cell="B1") + call("get", cell="A1")
    result = env.step([{"role": "assistant", "content": text}])
    assert [m["content"] for m in result.observation] == [
        "2", "40", "Error: too many tool calls in one turn (at most 2); 'get' was not run"]
    assert result.done is False
    assert (env.stats["tool_calls"], env.stats["tool_errors"]["too_many_calls"]) == (3, 1)


def test_calls_after_the_finish_tool_are_not_run_and_a_bad_finish_does_not_end():
    env = ToolEnvironment(SumTask())
    env.reset(ROW)
    bad = env.step([{"role": "assistant", "content": call("answer", value="42")}])
    assert bad.done is False
    assert bad.observation[0]["content"] == "Error: bad arguments for 'answer': missing 'answer'"
    done = env.step([{"role": "assistant", "content": call("answer", answer="41") + call("get", cell="A1")}])
    assert done.done is True
    assert [m["name"] for m in done.observation] == ["answer"]
    assert env.final_answer == "41"
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step([{"role": "assistant", "content": "again"}])


def test_truncated_episode_has_no_final_answer():
    task = SumTask()
    env = ToolEnvironment(task)
    traj = run_episode(env, ROW, scripted(call("get", cell="A1"), call("get", cell="B1")), encode, max_turns=2)
    assert traj.truncated is True
    assert (env.final_answer, env.finished_by, traj.reward) == (None, None, None)
    assert task.scored == [None]
    assert env.stats["finished_by"] == {"answer": 0, "message": 0}


def test_callables_toolbox_settings_parser_by_name_and_construction_errors():
    import threading
    gate = threading.Event()

    def wait(seconds: float) -> str:
        """Waits.

        Args:
            seconds: how long
        """
        gate.wait(seconds)
        return "done"

    env = ToolEnvironment(prompt=lambda row: [{"role": "user", "content": "go"}],
                          tools=lambda row: ToolBox([wait], timeout_s=0.2, max_output_chars=50),
                          score=lambda row, answer, traj: float(answer == "ok"),
                          parser="mistral")
    env.reset({})
    result = env.step([{"role": "assistant", "content": '[TOOL_CALLS][{"name": "wait", "arguments": {"seconds": 30}}]'}])
    gate.set()
    assert result.observation == [{"role": "tool", "name": "wait", "content": "Error: 'wait' timed out after 0.2 s"}]
    assert env.stats["tool_errors"]["timeout"] == 1

    with pytest.raises(ValueError, match="ToolEnvironment needs tools, score"):
        ToolEnvironment(prompt=lambda row: "hi")
    with pytest.raises(ValueError, match="unknown tool-call parser 'nope'"):
        ToolEnvironment(SumTask(), parser="nope")
    with pytest.raises(ValueError, match="own tool named 'get'"):
        ToolEnvironment(SumTask(), finish_tool="get").reset(ROW)
    with pytest.raises(RuntimeError, match="step before reset"):
        ToolEnvironment(SumTask()).step([{"role": "assistant", "content": "x"}])
