"""Tool-call parsers on hand-written model text: well-formed, parallel and malformed blocks, the
three built-in families, the registry, and a round trip through the tiny model's chat template."""

from __future__ import annotations

import pytest

from posttrain.agents.parsers import (TOOL_CALL_PARSERS, ToolCall, get_tool_call_parser, parse_hermes,
                                      parse_llama3_json, parse_mistral)
from posttrain.models.tiny import default_corpus, train_tokenizer


def test_hermes_single_call_with_prose_and_trailing_stop_token():
    text = 'Let me look.\n<tool_call>\n{"name": "read_range", "arguments": {"sheet": "S1", "n": 3}}\n</tool_call><|im_end|>'
    turn = parse_hermes(text)
    assert turn.content == "Let me look."
    assert turn.errors == []
    assert [(c.name, c.arguments) for c in turn.calls] == [("read_range", {"sheet": "S1", "n": 3})]
    assert turn.calls[0].raw.startswith("<tool_call>") and turn.calls[0].raw.endswith("</tool_call>")


def test_hermes_parallel_calls_keep_order_and_decode_string_arguments():
    text = ('<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
            '<tool_call>\n{"name": "b", "arguments": "{\\"y\\": [1, 2]}"}\n</tool_call>\n'
            '<tool_call>{"name": "c"}</tool_call>')
    turn = parse_hermes(text)
    assert [(c.name, c.arguments) for c in turn.calls] == [("a", {"x": 1}), ("b", {"y": [1, 2]}), ("c", {})]
    assert turn.content == ""
    assert turn.errors == []


def test_hermes_plain_message_has_no_calls():
    turn = parse_hermes("The answer is 42.<|im_end|>\n")
    assert (turn.content, turn.calls, turn.errors) == ("The answer is 42.", [], [])


@pytest.mark.parametrize("body, fragment", [
    ('{"name": "a", "arguments": {"x": 1}', "tool call 1: invalid JSON (Expecting ',' delimiter"),
    ('{"arguments": {}}', "tool call 1: missing 'name'"),
    ('{"name": 7, "arguments": {}}', "tool call 1: 'name' must be a non-empty string, got integer"),
    ('{"name": "a", "arguments": [1, 2]}', "tool call 1: 'arguments' of 'a' must be a JSON object, got array"),
    ('{"name": "a", "arguments": "not json"}', "tool call 1: 'arguments' of 'a' is a string that is not JSON"),
    ('{"name": "a", "arguments": "[1]"}', "tool call 1: 'arguments' of 'a' must be a JSON object, got array"),
    ('["a"]', "tool call 1: expected a JSON object with 'name' and 'arguments', got array"),
])
def test_hermes_malformed_block_is_one_error_naming_the_problem(body, fragment):
    turn = parse_hermes(f"Thinking.\n<tool_call>\n{body}\n</tool_call>")
    assert turn.calls == []
    assert len(turn.errors) == 1
    assert turn.errors[0].startswith(fragment), turn.errors[0]
    assert turn.content == "Thinking."


def test_hermes_error_quotes_a_short_piece_of_the_block():
    long_body = '{"name": "a", "arguments": {"text": "' + "x" * 500 + '"'
    error = parse_hermes(f"<tool_call>{long_body}</tool_call>").errors[0]
    assert "'{\"name\": \"a\", \"arguments\": {\"text\": \"xxxx" in error
    assert error.endswith("…'")
    assert len(error) < 160


def test_hermes_unclosed_block_is_an_error_and_a_later_good_block_still_parses():
    text = ('<tool_call>\n{"name": "a", "arguments": {}}\n'
            '<tool_call>\n{"name": "b", "arguments": {"k": "v"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "c", "arguments": {}}<|im_end|>')
    turn = parse_hermes(text)
    assert [c.name for c in turn.calls] == ["b"]
    assert len(turn.errors) == 2
    assert turn.errors[0].startswith("tool call 1: <tool_call> is never closed by </tool_call>")
    assert turn.errors[1].startswith("tool call 3: <tool_call> is never closed by </tool_call>")
    assert "<|im_end|>" not in turn.errors[1]  # the stop token was stripped before quoting


def test_hermes_stray_closing_tag_is_an_error_and_leaves_the_content():
    turn = parse_hermes("I am done </tool_call> really")
    assert turn.calls == []
    assert turn.errors == ["a </tool_call> with no <tool_call> before it: 'I am done </tool_call> really'"]
    assert turn.content == "I am done  really"


def test_hermes_round_trips_the_tiny_chat_template():
    tokenizer = train_tokenizer(default_corpus(n=200))
    calls = [{"type": "function", "function": {"name": "read_range", "arguments": {"sheet": "Sales", "cells": "A1:B3"}}},
             {"type": "function", "function": {"name": "query", "arguments": '{"sql": "SELECT 1", "limit": 5}'}}]
    messages = [{"role": "user", "content": "Total?"},
                {"role": "assistant", "content": "Two reads.", "tool_calls": calls}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assistant = text.split("<|im_start|>assistant\n", 1)[1]
    assert assistant.endswith("<|im_end|>\n")
    turn = parse_hermes(assistant)
    assert turn.errors == []
    assert turn.content == "Two reads."
    assert [(c.name, c.arguments) for c in turn.calls] == [
        ("read_range", {"sheet": "Sales", "cells": "A1:B3"}), ("query", {"sql": "SELECT 1", "limit": 5})]
    # What the model would sample: the same text as tokens, decoded with its special tokens kept.
    ids = tokenizer(assistant, add_special_tokens=False)["input_ids"]
    assert parse_hermes(tokenizer.decode(ids, skip_special_tokens=False)).calls == turn.calls


def test_mistral_array_of_calls_and_prose_before():
    text = 'Checking both.[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]</s>'
    turn = parse_mistral(text)
    assert turn.content == "Checking both."
    assert [(c.name, c.arguments) for c in turn.calls] == [("a", {"x": 1}), ("b", {})]
    assert turn.errors == []


def test_mistral_bad_element_and_bad_json():
    turn = parse_mistral('[TOOL_CALLS][{"name": "a", "arguments": {}}, {"arguments": {}}]')
    assert [c.name for c in turn.calls] == ["a"]
    assert turn.errors[0].startswith("tool call block 1, call 2: missing 'name'")
    broken = parse_mistral('[TOOL_CALLS][{"name": "a", "arguments": {')
    assert broken.calls == []
    assert broken.errors[0].startswith("tool call block 1: invalid JSON after [TOOL_CALLS]")


def test_llama3_json_calls_parameters_and_plain_messages():
    turn = parse_llama3_json('<|python_tag|>{"name": "a", "parameters": {"x": 2}}; {"name": "b", "parameters": {}}<|eom_id|>')
    assert [(c.name, c.arguments) for c in turn.calls] == [("a", {"x": 2}), ("b", {})]
    assert turn.errors == []
    plain = parse_llama3_json("It is 4.<|eot_id|>")
    assert (plain.content, plain.calls, plain.errors) == ("It is 4.", [], [])
    broken = parse_llama3_json('{"name": "a", "parameters": ')
    assert broken.calls == [] and broken.errors[0].startswith("tool call 1: invalid JSON")


def test_registry_names_import_paths_and_unknown_names():
    assert set(TOOL_CALL_PARSERS) == {"hermes", "mistral", "llama3_json"}
    assert get_tool_call_parser("hermes") is parse_hermes
    assert get_tool_call_parser("posttrain.agents.parsers:parse_mistral") is parse_mistral
    with pytest.raises(ValueError, match=r"unknown tool-call parser 'qwen9'; valid names: \['hermes', 'llama3_json', 'mistral'\]"):
        get_tool_call_parser("qwen9")


def test_tool_call_is_frozen_and_compares_by_value():
    assert ToolCall("a", {"x": 1}, "raw1") != ToolCall("a", {"x": 1}, "raw2")
    assert ToolCall("a", {"x": 1}) == ToolCall("a", {"x": 1})
    with pytest.raises(AttributeError):
        ToolCall("a", {}).name = "b"  # type: ignore[misc]
