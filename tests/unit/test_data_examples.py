"""Parsing prompt / SFT / preference rows, their error messages, and skip mode."""

import pytest

from posttrain.data.examples import (
    PreferenceExample,
    PromptExample,
    SFTExample,
    load_examples,
    parse_preference,
    parse_prompt,
    parse_sft,
)
from posttrain.data.jsonl import write_jsonl
from posttrain.data.readers import DataError, Record


def rec(data, row=7, source="data/train.jsonl"):
    return Record(source, row, data)


USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}


# ----------------------------------------------------------------------------- prompt rows


def test_prompt_row_keeps_other_columns_as_extras():
    example = parse_prompt(rec({"prompt": "2+2=", "answer": "4", "tests": ["assert f()"]}))
    assert example == PromptExample("2+2=", {"answer": "4", "tests": ["assert f()"]}, "data/train.jsonl", 7)


def test_prompt_row_with_messages_and_renamed_field():
    example = parse_prompt(rec({"question": [USER], "answer": "x"}), prompt_field="question")
    assert example.prompt == [USER] and example.extras == {"answer": "x"}


@pytest.mark.parametrize("data, field, reason", [
    ({"answer": "4"}, "prompt", "missing"),
    ({"prompt": None}, "prompt", "missing"),  # Parquet nulls count as missing
    ({"prompt": 12}, "prompt", "expected a string or a list of messages, got int"),
    ({"prompt": "  "}, "prompt", "empty"),
    ({"prompt": []}, "prompt", "expected a non-empty list of messages, got an empty list"),
    ({"prompt": [{"role": "robot", "content": "x"}]}, "prompt[0].role", "unknown role 'robot'"),
    ({"prompt": [{"role": "user"}]}, "prompt[0].content", "missing"),
    ({"prompt": [{"role": "user", "content": [{"type": "text"}]}]}, "prompt[0].content", "expected a string, got list"),
    ({"prompt": ["hi"]}, "prompt[0]", "expected an object with 'role' and 'content', got str"),
])
def test_bad_prompt_rows_name_row_and_field(data, field, reason):
    with pytest.raises(DataError) as info:
        parse_prompt(rec(data))
    assert (info.value.row, info.value.field) == (7, field)
    assert str(info.value).startswith(f"data/train.jsonl, line 7, field {field!r}: {reason}")


# ----------------------------------------------------------------------------- SFT rows


def test_sft_messages_split_before_first_assistant_turn():
    system = {"role": "system", "content": "be brief"}
    messages = [system, USER, ASSISTANT, {"role": "user", "content": "more"}, {"role": "assistant", "content": "ok"}]
    example = parse_sft(rec({"messages": messages}))
    assert example.prompt == [system, USER]
    assert example.completion == messages[2:]
    assert example.conversational


def test_sft_prompt_completion_text_and_conversational():
    plain = parse_sft(rec({"prompt": "2+2=", "completion": "4"}))
    assert plain == SFTExample("2+2=", "4", "data/train.jsonl", 7) and not plain.conversational
    chat = parse_sft(rec({"prompt": [USER], "completion": [ASSISTANT]}))
    assert chat.prompt == [USER] and chat.completion == [ASSISTANT]
    # A string completion after a conversational prompt is the assistant's reply.
    mixed = parse_sft(rec({"prompt": [USER], "completion": "hello"}))
    assert mixed.completion == [ASSISTANT]


def test_assistant_tool_call_without_content_is_allowed():
    call = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
    messages = [USER, call, {"role": "tool", "content": "42"}, {"role": "assistant", "content": "42"}]
    assert parse_sft(rec({"messages": messages})).completion[0]["tool_calls"] == call["tool_calls"]


@pytest.mark.parametrize("data, field, reason", [
    ({"text": "x"}, "messages", "missing (and no 'prompt'/'completion' pair either; columns: text)"),
    ({"messages": [USER]}, "messages", "no assistant message"),
    ({"messages": [USER, {"role": "assistant", "content": " "}]}, "messages[1].content", "empty assistant message"),
    ({"messages": [ASSISTANT, USER]}, "messages[0].role", "conversation starts with an assistant turn"),
    ({"prompt": "2+2="}, "completion", "missing"),
    ({"prompt": "2+2=", "completion": ""}, "completion", "empty"),
    ({"prompt": "2+2=", "completion": [ASSISTANT]}, "completion", "is a message list but the prompt is plain text"),
    ({"prompt": [USER], "completion": [USER]}, "completion", "no assistant message"),
])
def test_bad_sft_rows_name_row_and_field(data, field, reason):
    with pytest.raises(DataError) as info:
        parse_sft(rec(data))
    assert info.value.field == field
    assert str(info.value).startswith(f"data/train.jsonl, line 7, field {field!r}: {reason}")


# ----------------------------------------------------------------------------- preference rows


def test_preference_rows():
    plain = parse_preference(rec({"prompt": "q", "chosen": "good", "rejected": "bad"}))
    assert plain == PreferenceExample("q", "good", "bad", "data/train.jsonl", 7) and not plain.conversational
    chat = parse_preference(rec({"prompt": [USER], "chosen": "hello", "rejected": [{"role": "assistant", "content": "go"}]}))
    assert chat.chosen == [ASSISTANT] and chat.rejected == [{"role": "assistant", "content": "go"}]
    assert chat.conversational


@pytest.mark.parametrize("data, field, reason", [
    ({"prompt": "q", "rejected": "bad"}, "chosen", "missing"),
    ({"prompt": "q", "chosen": "good"}, "rejected", "missing"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected", "identical to 'chosen'"),
    ({"prompt": "q", "chosen": "", "rejected": "bad"}, "chosen", "empty"),
    ({"prompt": [USER], "chosen": "ok", "rejected": [{"role": "assistant", "content": ""}]},
     "rejected[0].content", "empty assistant message"),
    ({"prompt": "q", "chosen": 3, "rejected": "bad"}, "chosen", "expected a string or a list of messages, got int"),
])
def test_bad_preference_rows_name_row_and_field(data, field, reason):
    with pytest.raises(DataError) as info:
        parse_preference(rec(data))
    assert info.value.field == field
    assert str(info.value).startswith(f"data/train.jsonl, line 7, field {field!r}: {reason}")


def test_renamed_preference_fields():
    example = parse_preference(rec({"q": "x", "good": "a", "bad": "b"}),
                               prompt_field="q", chosen_field="good", rejected_field="bad")
    assert (example.prompt, example.chosen, example.rejected) == ("x", "a", "b")


# ----------------------------------------------------------------------------- loading


def _write_preference_file(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "a", "rejected": "b"},    # line 1: good
        {"prompt": "q2", "rejected": "b"},                   # line 2: chosen missing
        {"prompt": "q3", "chosen": "c", "rejected": "c"},    # line 3: identical pair
        {"prompt": "q4", "chosen": "d", "rejected": "e"},    # line 4: good
    ]
    path = write_jsonl(rows, tmp_path / "prefs.jsonl")
    with path.open("a", encoding="utf-8") as f:
        f.write("{broken\n")                                 # line 5: invalid JSON
        f.write('{"prompt": "q6", "chosen": "f", "rejected": "g"}\n')  # line 6: good
    return path


def test_load_examples_error_mode_raises_first_bad_row(tmp_path):
    path = _write_preference_file(tmp_path)
    with pytest.raises(DataError, match=r"prefs\.jsonl, line 2, field 'chosen': missing"):
        load_examples(path, "preference")


def test_load_examples_skip_mode_counts_and_explains(tmp_path):
    path = _write_preference_file(tmp_path)
    loaded = load_examples(path, "preference", on_bad_row="skip")
    assert [e.prompt for e in loaded.examples] == ["q1", "q4", "q6"]
    assert [e.row for e in loaded.examples] == [1, 4, 6]
    assert loaded.skipped == 3
    assert loaded.skip_reasons[0].endswith("prefs.jsonl, line 2, field 'chosen': missing")
    assert "line 3, field 'rejected': identical to 'chosen'" in loaded.skip_reasons[1]
    assert "line 5: invalid JSON" in loaded.skip_reasons[2]
    assert loaded.summary() == f"skipped 3 malformed rows (first: {loaded.skip_reasons[0]})"


def test_load_examples_limit_and_field_names(tmp_path):
    path = write_jsonl([{"question": f"q{i}", "answer": str(i)} for i in range(5)], tmp_path / "q.jsonl")
    loaded = load_examples(path, "prompt", limit=2, prompt_field="question")
    assert [(e.prompt, e.extras) for e in loaded.examples] == [("q0", {"answer": "0"}), ("q1", {"answer": "1"})]
    assert loaded.skipped == 0 and loaded.summary() is None


def test_load_examples_rejects_bad_options(tmp_path):
    path = write_jsonl([{"prompt": "q"}], tmp_path / "q.jsonl")
    with pytest.raises(TypeError, match="unknown field name option.*'chosen_field'.*allowed: \\['prompt_field'\\]"):
        load_examples(path, "prompt", chosen_field="x")
    with pytest.raises(ValueError, match="unknown shape 'dpo'"):
        load_examples(path, "dpo")
    with pytest.raises(ValueError, match="on_bad_row must be"):
        load_examples(path, "prompt", on_bad_row="ignore")
