"""PivotRL's functional action reward on hand-built turns: call F1 under a maximum one-to-one
matching, JSON-normalised arguments, plugged-in equivalences, and messages that must match the
expert's (never rewarded for arbitrary text)."""

from __future__ import annotations

import pytest

from posttrain.agents.action_match import ExpertAction, action_reward, calls_f1, json_equivalent
from posttrain.agents.parsers import ParsedTurn, ToolCall, parse_hermes


def turn(*calls: ToolCall, content: str = "", errors: int = 0) -> ParsedTurn:
    return ParsedTurn(content=content, calls=list(calls), errors=["bad block"] * errors)


A1 = ToolCall("get", {"cell": "A1"})
B1 = ToolCall("get", {"cell": "B1"})
SQL = ToolCall("query", {"sql": "SELECT 1"})


def test_exact_calls_score_one_and_order_of_parallel_calls_does_not_matter():
    expert = ExpertAction(calls=[A1, B1])
    assert action_reward(turn(A1, B1), expert) == 1.0
    assert action_reward(turn(B1, A1), expert) == 1.0


def test_f1_by_hand():
    """Expert {A1, B1}. Sampled {A1, SQL}: 1 match, F1 = 2*1/(2+2) = 0.5. Sampled {A1}: 2*1/(1+2) = 2/3.
    Sampled {A1, A1}: a one-to-one matching pairs only one A1, F1 = 2*1/(2+2) = 0.5.
    Sampled {A1, B1} plus one malformed block: 2*2/(3+2) = 0.8."""
    expert = ExpertAction(calls=[A1, B1])
    assert action_reward(turn(A1, SQL), expert) == pytest.approx(0.5)
    assert action_reward(turn(A1), expert) == pytest.approx(2 / 3)
    assert action_reward(turn(A1, A1), expert) == pytest.approx(0.5)
    assert action_reward(turn(A1, B1, errors=1), expert) == pytest.approx(0.8)
    assert action_reward(turn(errors=2), expert) == 0.0


def test_matching_is_maximum_not_greedy():
    """Predicted p0 matches expected e0 and e1, p1 matches only e0. A greedy pass gives p0 -> e0 and
    leaves p1 unmatched (1 pair); the maximum matching is p0 -> e1, p1 -> e0 (2 pairs): F1 = 1."""
    p0, p1 = ToolCall("f", {"x": "wild"}), ToolCall("f", {"x": 0})
    e0, e1 = ToolCall("f", {"x": 0}), ToolCall("f", {"x": 1})

    def equivalent(name, a, b):
        return a["x"] == "wild" or a == b

    assert calls_f1([p0, p1], [e0, e1], arguments_equivalent=equivalent) == 1.0


def test_default_argument_equivalence_normalises_json():
    assert json_equivalent("f", {"n": 3, "s": " a ", "l": [1, {"k": 2.0}]}, {"l": [1.0, {"k": 2}], "s": "a", "n": 3.0})
    assert not json_equivalent("f", {"flag": True}, {"flag": 1})
    assert not json_equivalent("f", {"x": None}, {"x": "null"})
    assert not json_equivalent("f", {"x": 1}, {"x": 1, "y": 2})
    assert action_reward(turn(ToolCall("get", {"cell": " A1 "})), ExpertAction(calls=[A1])) == 1.0
    assert action_reward(turn(ToolCall("put", {"cell": "A1"})), ExpertAction(calls=[A1])) == 0.0


def test_a_plugged_in_equivalence_sees_only_same_name_pairs():
    seen = []

    def same_result(name, a, b):
        seen.append(name)
        return name == "query" and a["sql"].upper().replace(" ", "") == b["sql"].upper().replace(" ", "")

    expert = ExpertAction(calls=[SQL])
    sampled = turn(ToolCall("query", {"sql": "select  1"}), A1)
    assert action_reward(sampled, expert, arguments_equivalent=same_result) == pytest.approx(2 / 3)
    assert seen == ["query"]


def test_message_where_calls_are_expected_scores_zero():
    assert action_reward(turn(content="The answer is 42."), ExpertAction(calls=[A1])) == 0.0


def test_expert_message_is_never_matched_by_arbitrary_text():
    """The known exploit: a verifier that rewards any prose where the expert wrote prose teaches the
    policy to stop calling tools. Only an equivalent message earns 1."""
    expert = ExpertAction(content="The total is 42.")
    assert action_reward(turn(content="the total  is 42."), expert) == 1.0
    for text in ["", "I don't know.", "The total is 41.", "Sure! The total is 42. Anything else?"]:
        assert action_reward(turn(content=text), expert) == 0.0, text
    assert action_reward(turn(A1, content="The total is 42."), expert) == 0.0      # a call where none was due
    assert action_reward(turn(content="The total is 42.", errors=1), expert) == 0.0  # a malformed block too


def test_plugged_in_message_equivalence():
    def same_number(a, b):
        return [c for c in a if c.isdigit()] == [c for c in b if c.isdigit()]

    expert = ExpertAction(content="42")
    assert action_reward(turn(content="It is 42."), expert, message_equivalent=same_number) == 1.0
    assert action_reward(turn(content="It is 43."), expert, message_equivalent=same_number) == 0.0


def test_expert_from_chat_message_and_sampled_from_raw_text():
    expert = ExpertAction.from_message({"role": "assistant", "content": "Reading.", "tool_calls": [
        {"type": "function", "function": {"name": "get", "arguments": '{"cell": "B1"}'}},
        {"name": "get", "arguments": {"cell": "A1"}}]})
    assert expert.calls == (B1, A1) and expert.expects_calls
    sampled = parse_hermes('<tool_call>\n{"name": "get", "arguments": {"cell": "A1"}}\n</tool_call>'
                           '<tool_call>\n{"name": "get", "arguments": {"cell": "B1"}}\n</tool_call><|im_end|>')
    assert action_reward(sampled, expert) == 1.0
    message = ExpertAction.from_message({"role": "assistant", "content": "Done."})
    assert (message.expects_calls, message.content) == (False, "Done.")
    with pytest.raises(ValueError, match=r"expert tool_calls\[0\] \('get'\): arguments are not JSON"):
        ExpertAction.from_message({"content": "", "tool_calls": [{"function": {"name": "get", "arguments": "{"}}]})
