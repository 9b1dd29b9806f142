"""Spreadsheet task files: generated folders, users' own rows (a CSV workbook), and errors that
name the file, the line and the field."""

from __future__ import annotations

import json

import pytest

from posttrain.envs.spreadsheet import (SYSTEM_PROMPT, SpreadsheetTools, WorkbookSpec, generate_tasks,
                                        infer_answer_kind, load_tasks, prompt_messages)


def test_generated_folder_is_deterministic_and_relocatable(tmp_path):
    spec = WorkbookSpec.for_difficulty("medium")
    first = generate_tasks(tmp_path / "a", 9, seed=1, spec=spec, questions_per_workbook=4)
    second = generate_tasks(tmp_path / "b", 9, seed=1, spec=spec, questions_per_workbook=4)
    assert first.name == "tasks.jsonl" and first.read_text() == second.read_text()
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    assert len(rows) == 9 and len({r["id"] for r in rows}) == 9
    assert sorted({r["file"] for r in rows}) == ["workbooks/workbook_0000.xlsx", "workbooks/workbook_0001.xlsx",
                                                 "workbooks/workbook_0002.xlsx"]  # 4 + 4 + 1 questions
    assert all(set(r) >= {"id", "file", "question", "answer", "answer_kind", "ordered", "kind", "difficulty", "plan"}
               for r in rows)
    (tmp_path / "a").rename(tmp_path / "moved")
    tasks = load_tasks(tmp_path / "moved" / "tasks.jsonl")
    assert tasks[0].file == str((tmp_path / "moved" / "workbooks" / "workbook_0000.xlsx").resolve())
    assert tasks[0].difficulty == "medium" and tasks[0].plan == rows[0]["plan"]
    assert tasks[0].to_row()["id"] == rows[0]["id"]


def test_a_users_csv_task(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cities.csv").write_text(
        "City,Country,Population,Founded\nOslo,Norway,709000,1048-01-01\nBergen,Norway,291000,1070-01-01\n"
        "Lund,Sweden,,0990-01-01\n", encoding="utf-8")
    rows = [{"file": "data/cities.csv", "question": "How many cities are in Norway?", "answer": 2, "source": "mine"},
            {"file": "data/cities.csv", "question": "Which city was founded first?", "answer": "Lund"},
            {"file": "data/cities.csv", "question": "When was Oslo founded?", "answer": "1048-01-01"},
            {"file": "data/cities.csv", "question": "Which cities are in Norway?", "answer": ["Oslo", "Bergen"]}]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    tasks = load_tasks(path)
    assert [t.answer_kind for t in tasks] == ["number", "text", "date", "list"]
    assert [t.id for t in tasks] == ["mine-1", "mine-2", "mine-3", "mine-4"]  # file stem and line
    assert tasks[0].extra == {"source": "mine"} and tasks[0].plan is None and tasks[0].to_row()["source"] == "mine"
    assert prompt_messages(tasks[0]) == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Workbook: cities.csv\nQuestion: How many cities are in Norway?"}]
    with SpreadsheetTools(tasks[0].file) as tools:
        assert tools.list_sheets() == "cities: 3 rows"
        assert tools.describe_sheet("cities") == ("cities: 3 rows\nCity: text\nCountry: text\n"
                                                  "Population: int (1 blank)\nFounded: date")
        assert tools.query("SELECT COUNT(*) AS n FROM cities WHERE Country = 'Norway'") == "n\n2"
        assert tools.query("SELECT City FROM cities ORDER BY Founded LIMIT 1") == "City\nLund"
    assert tasks[0].matches("2") and not tasks[0].matches("3")
    assert tasks[3].matches("Bergen, Oslo") and tasks[2].matches("1048-01-01")


def test_infer_answer_kind():
    assert [infer_answer_kind(a) for a in (3, 2.5, "42", "$1,234.50", "12%", "2024-03-05", "North", "P16",
                                           "12 apples", ["a"], True, "2024-02-30")] == [
        "number", "number", "number", "number", "number", "date", "text", "text", "text", "list", "text", "text"]


GOOD = {"file": "wb.csv", "question": "How many?", "answer": 3}


@pytest.mark.parametrize("lines, message", [
    ([GOOD, "{not json"], r":2: not valid JSON"),
    (["[1, 2]"], r":1: expected a JSON object, got list"),
    ([{"file": "wb.csv", "question": "How many?"}], r":1: missing field 'answer'"),
    ([{"question": "How many?", "answer": 3}], r":1: missing field 'file'"),
    ([GOOD, {**GOOD, "question": ""}], r":2: field 'question' must be a non-empty string"),
    ([{**GOOD, "file": "nowhere.xlsx"}], r":1: field 'file': workbook 'nowhere.xlsx' not found"),
    ([{**GOOD, "file": "notes.txt"}], r":1: field 'file': 'notes.txt' is not a workbook"),
    ([{**GOOD, "answer_kind": "colour"}], r":1: field 'answer_kind' must be one of"),
    ([{**GOOD, "ordered": "yes"}], r":1: field 'ordered' must be true or false"),
    ([{**GOOD, "answer": {"a": 1}}], r":1: field 'answer' must be a string, number or list"),
    ([{**GOOD, "plan": {"sql": 3}}], r":1: field 'plan'"),
    ([{**GOOD, "id": "x"}, {**GOOD, "id": "x"}], r":2: field 'id': 'x' is used by an earlier row"),
    ([], r"has no tasks"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, lines, message):
    (tmp_path / "wb.csv").write_text("a\n1\n")
    (tmp_path / "notes.txt").write_text("x")
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines))
    with pytest.raises(ValueError, match=message) as err:
        load_tasks(path)
    assert str(path) in str(err.value)


def test_missing_task_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read task file '.*absent.jsonl'"):
        load_tasks(tmp_path / "absent.jsonl")
