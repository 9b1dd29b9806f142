"""The scripted expert as the environment's scripted-policy test: it must solve every generated
instance (every kind, every difficulty) through the real tools, in short conversations; and
queries_equivalent, PivotRL's check for a sampled query."""

from __future__ import annotations

import collections
import time

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from posttrain.envs.spreadsheet import (DIFFICULTY_KINDS, QUESTION_KINDS, SpreadsheetTask, SpreadsheetTools,
                                        WorkbookSpec, example_tables, expert_messages, generate_questions,
                                        generate_tasks, generate_workbook, load_tasks, queries_equivalent)
from posttrain.models.tiny import CHAT_TEMPLATE

SEEDS_PER_DIFFICULTY = 18
QUESTIONS_PER_WORKBOOK = 4


def _task(question, file: str = "workbook_0000.xlsx") -> SpreadsheetTask:
    return SpreadsheetTask(id="t", file=file, question=question.text, answer=question.answer,
                           answer_kind=question.answer_kind, ordered=question.ordered, kind=question.kind,
                           plan=question.plan)


def _rendered(messages) -> str:
    """The conversation as the tiny model sees it (its chat template; tool schemas not included)."""
    out, _ = render_jinja_template(conversations=[messages], chat_template=CHAT_TEMPLATE)
    return out[0]


def _calls(messages) -> list[str]:
    return [m["tool_calls"][0]["function"]["name"] for m in messages if m["role"] == "assistant"]


def test_expert_solves_every_kind_at_every_difficulty():
    solved, kinds, lengths = 0, collections.defaultdict(set), collections.defaultdict(list)
    for difficulty in ("easy", "medium", "hard"):
        for seed in range(SEEDS_PER_DIFFICULTY):
            tables = generate_workbook(WorkbookSpec.for_difficulty(difficulty), seed)
            with SpreadsheetTools(tables) as tools:
                for question in generate_questions(tables, QUESTIONS_PER_WORKBOOK, seed, difficulty):
                    task = _task(question)
                    messages = expert_messages(task, tools)
                    assert task.matches(tools.answered), (question, tools.answered)
                    assert messages[-1]["tool_calls"][0]["function"]["arguments"] == {"answer": tools.answered}
                    calls = _calls(messages)
                    assert calls == ["list_sheets"] + ["describe_sheet"] * len(question.sheets) + ["query", "answer"]
                    kinds[difficulty].add(question.kind)
                    lengths[difficulty].append(len(_rendered(messages)))
                    solved += 1
    assert solved >= 200
    for difficulty, allowed in DIFFICULTY_KINDS.items():
        assert kinds[difficulty] == set(allowed)  # every kind of the difficulty came up, and no other
    assert kinds["hard"] == set(QUESTION_KINDS)
    assert max(lengths["easy"]) < 1200 and max(lengths["hard"]) < 1600  # chars, for a 1-2k token context


def test_conversation_format_holds_real_tool_outputs():
    tables = example_tables()
    with SpreadsheetTools(tables) as tools:
        from posttrain.envs.spreadsheet import questions as q

        question = q.aggregate(tables, "Sales", "Revenue", "sum", [q.Condition("Region", "=", "North")])
        messages = expert_messages(_task(question, file="/data/shop.xlsx"), tools)
        sql = "SELECT SUM(Revenue) FROM Sales WHERE Region = 'North'"
        assert messages == [
            {"role": "system", "content": messages[0]["content"]},
            {"role": "user", "content": "Workbook: shop.xlsx\nQuestion: In Sales, what is the total Revenue "
                                        "where Region is North?"},
            _call("list_sheets", {}),
            {"role": "tool", "name": "list_sheets", "content": "Sales: 6 rows\nProducts: 3 rows\nOrders: 4 rows"},
            _call("describe_sheet", {"sheet": "Sales"}),
            {"role": "tool", "name": "describe_sheet", "content": tools.describe_sheet("Sales")},
            _call("query", {"sql": sql}),
            {"role": "tool", "name": "query", "content": "sum(Revenue)\n220.5"},
            _call("answer", {"answer": "220.5"}),
        ]
        assert len(_rendered(messages)) < 1100


def _call(name, arguments):
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def test_expert_over_generated_files(tmp_path):
    path = generate_tasks(tmp_path, 10, seed=3, spec=WorkbookSpec.for_difficulty("medium"))
    for task in load_tasks(path):
        with SpreadsheetTools(task.file) as tools:
            expert_messages(task, tools)
            assert task.matches(tools.answered), (task, tools.answered)


def test_expert_needs_a_plan():
    task = SpreadsheetTask(id="mine", file="x.csv", question="How many?", answer=3, answer_kind="number")
    with SpreadsheetTools(example_tables()) as tools, pytest.raises(ValueError, match="task 'mine' has no plan"):
        expert_messages(task, tools)


@pytest.fixture(scope="module")
def tools():
    with SpreadsheetTools(example_tables()) as t:
        yield t


@pytest.mark.parametrize("a, b", [
    ("SELECT SUM(Revenue) FROM Sales WHERE Region = 'North'",
     "select sum(s.Revenue) as total from Sales s where s.Region in ('North')"),
    ("SELECT AVG(Units) FROM Sales", "SELECT SUM(Units) / COUNT(Units) FROM Sales"),      # float tolerance
    ("SELECT 3", "SELECT 3.0"),
    ("SELECT Name FROM Products WHERE Category = 'Tools' ORDER BY Name",
     "SELECT Name FROM Products WHERE Category = 'Tools' ORDER BY Name DESC"),           # a multiset
    ("SELECT Region, COUNT(*) FROM Sales GROUP BY Region",
     "SELECT Region, SUM(1) FROM Sales GROUP BY Region ORDER BY Region"),
    ("SELECT SUM(Orders.Quantity) FROM Orders JOIN Products ON Orders.ProductID = Products.ProductID "
     "WHERE Products.Category = 'Tools'",
     "SELECT SUM(Quantity) FROM Orders WHERE ProductID IN (SELECT ProductID FROM Products WHERE Category = 'Tools')"),
    ("SELECT Date FROM Orders WHERE OrderID = 1002", "SELECT DATE '2024-02-02'"),
    ("SELECT Units FROM Sales WHERE Region = 'East'", "SELECT NULL"),                    # a blank is a blank
])
def test_equivalent_queries(tools, a, b):
    assert queries_equivalent(tools, a, b) is True


@pytest.mark.parametrize("a, b", [
    ("SELECT SUM(Revenue) FROM Sales WHERE Region = 'North'", "SELECT SUM(Revenue) FROM Sales WHERE Region = 'South'"),
    ("SELECT Region FROM Sales", "SELECT DISTINCT Region FROM Sales"),                   # multiplicity counts
    ("SELECT Region, Units FROM Sales", "SELECT Region FROM Sales"),                     # width counts
    ("SELECT 3", "SELECT '3'"),                                                          # a number is not text
    ("SELECT SUM(Revenue) FROM Sales", "SELECT SUM(Revenu) FROM Sales"),                 # a failing query
    ("SELECT 1", "DROP TABLE Sales"),
])
def test_different_queries(tools, a, b):
    assert queries_equivalent(tools, a, b) is False


def test_equivalence_ordered_and_timeout(tools):
    asc = "SELECT Name FROM Products ORDER BY Price"
    desc = "SELECT Name FROM Products ORDER BY Price DESC"
    assert queries_equivalent(tools, asc, desc) and not queries_equivalent(tools, asc, desc, ordered=True)
    assert queries_equivalent(tools, asc, "SELECT Name FROM Products ORDER BY Price ASC", ordered=True)
    # 6^12 rows: each must be visited (DuckDB would count a plain cross join without enumerating it).
    bomb = "SELECT SUM(a.Units * b.Units) FROM " + ", ".join(f"Sales {chr(97 + i)}" for i in range(12))
    started = time.monotonic()
    assert queries_equivalent(tools, bomb, "SELECT 1", timeout_s=0.3) is False
    assert time.monotonic() - started < 1.5
