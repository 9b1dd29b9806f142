"""The spreadsheet environment wired for the recipes: task rows, one ToolEnvironment per episode,
the expert's trajectories as chat records with the episode's tool schemas, the outcome reward
and PivotRL's functional verifier — driven by a scripted policy (no model)."""

import json
from types import SimpleNamespace

import pytest

from posttrain.envs.base import run_episode
from posttrain.envs.registry import environment_spec
from posttrain.envs.spreadsheet.environment import (SpreadsheetOptions, spreadsheet_action_reward,
                                                   spreadsheet_reward, task_rows)


def env_cfg(tmp_path, **options):
    return SimpleNamespace(name="spreadsheet", parser="hermes", tool_timeout_s=5.0,
                           options={"num_train": 6, "num_eval": 3, "task_dir": None, **options})


@pytest.fixture
def spec(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    return environment_spec(env_cfg(tmp_path))


def as_text(message):
    """An assistant message with tool_calls as the model would write it (Hermes format)."""
    calls = [c["function"] for c in message.get("tool_calls") or []]
    return "\n".join(f'<tool_call>\n{json.dumps({"name": c["name"], "arguments": c["arguments"]})}\n</tool_call>'
                     for c in calls) or message["content"]


def test_builtin_tasks_split_into_different_workbooks_and_are_reproducible(spec):
    train, test = spec.rows("builtin:spreadsheet", "train", 0), spec.rows("builtin:spreadsheet", "test", 0)
    assert len(train) == 6 and len(test) == 3
    assert not {r["file"] for r in train} & {r["file"] for r in test}
    assert spec.rows("builtin:spreadsheet", "train", 0) == train
    row = train[0]
    assert row["prompt"][0]["role"] == "system" and row["question"] in row["prompt"][1]["content"]
    assert spec.rows("data/other.jsonl", "train", 0) is None  # not the environment's source


def test_the_scripted_expert_replayed_as_text_solves_its_tasks_through_the_environment(spec):
    rows = spec.rows("builtin:spreadsheet", "train", 0)
    experts = spec.expert_rows(rows)
    for row, expert in zip(rows, experts):
        assert expert["messages"][:2] == row["prompt"]  # the expert starts from the episode's prompt
        turns = iter(as_text(m) for m in expert["messages"] if m["role"] == "assistant")
        env = spec.make(row)

        def policy(messages):
            text = next(turns)
            return SimpleNamespace(text=text, token_ids=[1] * 3, logprobs=[0.0] * 3)

        trajectory = run_episode(env, row, policy, lambda history, new: [7] * len(new), max_turns=8)
        assert expert["tools"] == env.tool_schemas
        assert [t["function"]["name"] for t in env.tool_schemas] == [
            "list_sheets", "describe_sheet", "read_rows", "query", "answer"]
        assert env.finished_by == "answer" and trajectory.reward == 1.0, (row["question"], env.final_answer)
        # The tool results the model saw are the ones the expert recorded.
        seen = [m["content"] for m in trajectory.messages if m["role"] == "tool" and m["name"] != "answer"]
        assert seen == [m["content"] for m in expert["messages"] if m["role"] == "tool"]
        assert env.stats["tool_calls"] == len(seen) + 1 and sum(env.stats["tool_errors"].values()) == 0


@pytest.mark.parametrize("tools", [["describe_sheet", "query"], ["query"]])
def test_with_fewer_tools_the_expert_skips_the_missing_ones_and_still_solves_every_task(tmp_path, monkeypatch, tools):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    spec = environment_spec(env_cfg(tmp_path, tools=tools, difficulty="medium"))
    rows = spec.rows("builtin:spreadsheet", "train", 0)
    for row, expert in zip(rows, spec.expert_rows(rows)):
        called = [m["tool_calls"][0]["function"]["name"] for m in expert["messages"] if m.get("tool_calls")]
        assert set(called) <= set(tools) | {"answer"} and called[-2:] == ["query", "answer"]
        assert [t["function"]["name"] for t in expert["tools"]] == tools + ["answer"]
        turns = iter(as_text(m) for m in expert["messages"] if m["role"] == "assistant")
        env = spec.make(row)
        trajectory = run_episode(env, row, lambda m: SimpleNamespace(text=next(turns), token_ids=[1], logprobs=[0.0]),
                                 lambda history, new: [7], max_turns=8)
        assert trajectory.reward == 1.0, row["question"]
    without_query = environment_spec(env_cfg(tmp_path, tools=["list_sheets", "describe_sheet"]))
    with pytest.raises(ValueError, match="answers through `query`"):
        without_query.expert_rows(rows[:1])


def test_tool_mistakes_become_observations_and_a_wrong_answer_scores_zero(spec):
    row = spec.rows("builtin:spreadsheet", "train", 0)[0]
    turns = iter(['<tool_call>\n{"name": "query", "arguments": {"sql": "DROP TABLE x"}}\n</tool_call>',
                  '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>',
                  '<tool_call>{"name": "query", "arguments": </tool_call>',
                  '<tool_call>\n{"name": "answer", "arguments": {"answer": "certainly wrong"}}\n</tool_call>'])
    env = spec.make(row)
    trajectory = run_episode(env, row, lambda m: SimpleNamespace(text=next(turns), token_ids=[1], logprobs=[0.0]),
                             lambda history, new: [7], max_turns=8)
    tool_texts = [m["content"] for m in trajectory.messages if m["role"] == "tool"]
    assert tool_texts[0].startswith("Error: 'query' raised") and "SELECT" in tool_texts[0]
    assert tool_texts[1].startswith("Error: unknown tool 'nope'")
    assert tool_texts[3] == "Answer recorded." and trajectory.reward == 0.0
    assert env.stats["tool_errors"]["raised"] == 1 and env.stats["tool_errors"]["unknown_tool"] == 1
    assert env.stats["parse_errors"] == 1
    # close() frees the workbook's DuckDB connection now, not when the environment is collected.
    sheet = next(t for t in env.toolbox.tools if t.name == "query").fn.__self__
    env.close()
    with pytest.raises(Exception):
        sheet.run_sql("SELECT 1")


def test_the_outcome_reward_checks_the_final_answer_with_its_kind():
    assert spreadsheet_reward(None, "1,234.50", answer=1234.5, answer_kind="number") == 1.0
    assert spreadsheet_reward(None, "1236", answer=1234.5, answer_kind="number") == 0.0
    assert spreadsheet_reward(None, "north", answer="North", answer_kind="text") == 1.0
    assert spreadsheet_reward(None, "b, a", answer=["a", "b"], answer_kind="list") == 1.0


def test_the_pivot_verifier_compares_queries_by_their_result_on_the_workbook(spec):
    rows = spec.rows("builtin:spreadsheet", "train", 0)
    (expert,) = spec.expert_rows(rows[:1])
    row = rows[0]
    query_turn = next(m for m in expert["messages"] if m["role"] == "assistant"
                      and m["tool_calls"][0]["function"]["name"] == "query")
    sql = query_turn["tool_calls"][0]["function"]["arguments"]["sql"]
    action = {"content": "", "tool_calls": [{"name": "query", "arguments": {"sql": sql}}]}
    columns = {k: v for k, v in row.items() if k != "prompt"}

    def reward(text, expert_action=action):
        return spreadsheet_action_reward(row["prompt"], text, expert_action, **columns)

    def query(q):
        return f'<tool_call>\n{json.dumps({"name": "query", "arguments": {"sql": q}})}\n</tool_call>'

    assert reward(query(sql)) == 1.0
    assert reward(query("  " + sql.replace("SELECT", "select", 1) + "  ")) == 1.0  # written differently, same result
    assert reward(query("SELECT -987654.25 AS x")) == 0.0
    assert reward(query("SELECT * FROM nowhere")) == 0.0  # a failing query is not equivalent
    assert reward("The answer is 3.") == 0.0  # a message where a call is expected
    answer_action = {"content": "", "tool_calls": [{"name": "answer", "arguments": {"answer": str(row["answer"])}}]}
    right = f'<tool_call>\n{json.dumps({"name": "answer", "arguments": {"answer": str(row["answer"])}})}\n</tool_call>'
    assert reward(right, answer_action) == 1.0
    wrong = '<tool_call>\n{"name": "answer", "arguments": {"answer": "zzz"}}\n</tool_call>'
    assert reward(wrong, answer_action) == 0.0


def test_a_users_task_file_runs_through_the_same_environment(tmp_path, spec):
    (tmp_path / "sales.csv").write_text("Region,Revenue\nNorth,10\nSouth,32\n")
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"file": "sales.csv", "question": "Total revenue?", "answer": 42}) + "\n")
    (row,) = spec.rows(str(path), "train", 0)
    assert row["answer_kind"] == "number" and row["file"].endswith("sales.csv")
    turns = iter(['<tool_call>\n{"name": "query", "arguments": {"sql": "SELECT SUM(Revenue) FROM sales"}}\n</tool_call>',
                  '<tool_call>\n{"name": "answer", "arguments": {"answer": "42"}}\n</tool_call>'])
    env = spec.make(row)
    trajectory = run_episode(env, row, lambda m: SimpleNamespace(text=next(turns), token_ids=[1], logprobs=[0.0]),
                             lambda history, new: [7], max_turns=4)
    assert "42" in trajectory.messages[3]["content"] and trajectory.reward == 1.0


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown keys \\['rows'\\]"):
        SpreadsheetOptions.from_dict({"rows": 3})
    with pytest.raises(ValueError, match="unknown tools \\['delete'\\]"):
        SpreadsheetOptions.from_dict({"tools": ["query", "delete"]})
    assert SpreadsheetOptions.from_dict({"tools": ["query"]}).tools == ("query",)
    assert task_rows("elsewhere", "train", 0, SpreadsheetOptions()) is None


def test_a_task_file_without_an_eval_file_holds_out_a_share_and_an_eval_file_is_read_whole(tmp_path, spec):
    from transformers import AutoTokenizer

    from posttrain.config import DataConfig
    from posttrain.models.tiny import build_tiny_model
    from posttrain.recipes.prompt_data import load_prompt_sets

    (tmp_path / "s.csv").write_text("Region,Revenue\nNorth,10\nSouth,32\n")
    for name, n in (("train.jsonl", 20), ("eval.jsonl", 3)):
        (tmp_path / name).write_text("".join(json.dumps({"file": "s.csv", "question": f"q{i}?", "answer": i}) + "\n"
                                             for i in range(n)))
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    train, held = load_prompt_sets(DataConfig(train=str(tmp_path / "train.jsonl"), eval_fraction=0.25,
                                              max_length=512), tokenizer, seed=0, source_rows=spec.rows)
    assert (len(train), len(held)) == (15, 5)
    assert not {r["question"] for r in train.rows} & {r["question"] for r in held.rows}
    train, held = load_prompt_sets(DataConfig(train=str(tmp_path / "train.jsonl"), eval=str(tmp_path / "eval.jsonl"),
                                              max_length=512), tokenizer, seed=0, source_rows=spec.rows)
    assert (len(train), len(held)) == (20, 3)
