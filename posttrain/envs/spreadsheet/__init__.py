"""The spreadsheet environment: answer questions about a workbook by calling tools (agentic RL).

A task is a question about an .xlsx / .csv workbook with a checkable answer. The model sees the
question and the workbook's name, and acts through tools over that workbook (`SpreadsheetTools`:
list_sheets, describe_sheet, read_rows, a sandboxed read-only SQL `query`, answer); the episode's
reward is `answer_matches` on its final answer. It follows the environment protocol of
`posttrain.envs.base` (reset -> step per model turn -> score) through a tool-use environment that
runs these methods as tools; nothing here depends on that runner, so the pieces are plain
functions and classes:

    workbook.py   WorkbookSpec, generate_workbook: seeded themed tables with join keys
    tables.py     the canonical DataFrame form; load_tables (.xlsx, .csv), write_xlsx
    questions.py  question kinds: the answer by pandas, the expert's SQL, degenerate cases rejected
    sampling.py   generate_questions: kinds and parameters by difficulty
    tools.py      SpreadsheetTools: the tools and the DuckDB sandbox (external access off, SELECT only)
    answers.py    answer_matches: numbers with tolerance, text, sets / ordered lists, dates
    tasks.py      SpreadsheetTask rows, generate_tasks / load_tasks (JSONL), prompt_messages
    expert.py     expert_messages (scripted SFT trajectories), queries_equivalent (PivotRL's check)
    example.py    example_tables: a hand-built workbook with answers worked out by eye

The first policy trained here is tiny (a 1-2k token context), so tool outputs are compact and
easy tasks take the expert four tool calls.
"""

from posttrain.envs.spreadsheet.answers import answer_matches
from posttrain.envs.spreadsheet.example import example_tables
from posttrain.envs.spreadsheet.expert import answer_from_output, expert_messages, queries_equivalent
from posttrain.envs.spreadsheet.questions import ANSWER_KINDS, QUESTION_KINDS, Condition, Degenerate, Question
from posttrain.envs.spreadsheet.sampling import DIFFICULTY_KINDS, generate_questions
from posttrain.envs.spreadsheet.tables import load_tables, write_xlsx
from posttrain.envs.spreadsheet.tasks import (SYSTEM_PROMPT, SpreadsheetTask, generate_tasks, infer_answer_kind,
                                              load_tasks, prompt_messages)
from posttrain.envs.spreadsheet.tools import SpreadsheetTools
from posttrain.envs.spreadsheet.workbook import DIFFICULTIES, THEMES, WorkbookSpec, generate_workbook

__all__ = ["ANSWER_KINDS", "DIFFICULTIES", "DIFFICULTY_KINDS", "QUESTION_KINDS", "SYSTEM_PROMPT", "THEMES",
           "Condition", "Degenerate", "Question", "SpreadsheetTask", "SpreadsheetTools", "WorkbookSpec",
           "answer_from_output", "answer_matches", "example_tables", "expert_messages", "generate_questions",
           "generate_tasks", "generate_workbook", "infer_answer_kind", "load_tables", "load_tasks", "prompt_messages",
           "queries_equivalent", "write_xlsx"]
