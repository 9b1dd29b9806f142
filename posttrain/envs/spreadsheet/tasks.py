"""Spreadsheet tasks: a question about a workbook file and its answer, as JSONL rows.

A row is ``{"id", "file", "question", "answer", "answer_kind", "ordered", ...}``. Generated rows
also carry ``kind``, ``difficulty`` and the expert's ``plan`` (sheets to describe, the SQL);
users' own rows need only ``file``, ``question`` and ``answer``: the answer kind is inferred when
absent, and a relative ``file`` is resolved against the JSONL file's folder, so a task folder
can be moved or shared as a whole (generated files are written that way too).

`generate_tasks` writes several questions per workbook: a workbook costs far more to write and
read than a question, and several questions over one table teach reading that table, not
memorising one answer.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

from posttrain.envs.spreadsheet.answers import answer_matches, parse_date, parse_number
from posttrain.envs.spreadsheet.questions import ANSWER_KINDS
from posttrain.envs.spreadsheet.sampling import generate_questions
from posttrain.envs.spreadsheet.tables import write_xlsx
from posttrain.envs.spreadsheet.workbook import WorkbookSpec, generate_workbook

__all__ = ["SYSTEM_PROMPT", "SpreadsheetTask", "generate_tasks", "infer_answer_kind", "load_tasks",
           "prompt_messages"]

SYSTEM_PROMPT = ("Answer the question about the workbook. Use the tools to look at it; query runs SQL "
                 "with one table per sheet. Finish by calling answer.")
TASKS_FILE = "tasks.jsonl"
_WORKBOOK_SUFFIXES = (".xlsx", ".xlsm", ".csv")
_REQUIRED = ("file", "question", "answer")
_FIELDS = ("id", "file", "question", "answer", "answer_kind", "ordered", "kind", "difficulty", "plan")


@dataclasses.dataclass(frozen=True)
class SpreadsheetTask:
    """One question about one workbook.

    Attributes:
        id: unique within its task file.
        file: the workbook's path (.xlsx or .csv), resolved (absolute) after `load_tasks`.
        question, answer, answer_kind, ordered: what is asked and how `matches` checks a reply.
        kind, difficulty, plan: for generated tasks (questions.py); None for users' own.
        extra: a user's other columns, kept for rewards that want them.
    """

    id: str
    file: str
    question: str
    answer: Any
    answer_kind: str
    ordered: bool = False
    kind: str | None = None
    difficulty: str | None = None
    plan: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def matches(self, predicted: Any) -> bool:
        """Whether `predicted` is a correct answer (answers.py)."""
        return answer_matches(predicted, self.answer, self.answer_kind, self.ordered)

    def to_row(self) -> dict[str, Any]:
        """The task as a JSON-ready row (extra columns at the top level, as they were read)."""
        row = {name: getattr(self, name) for name in _FIELDS}
        row.update(self.extra)
        return row


def prompt_messages(task: SpreadsheetTask | Mapping[str, Any]) -> list[dict[str, str]]:
    """The opening messages: a short system message, then the question and the workbook's file name
    (only the name: the tools already hold the workbook, and a path would waste context)."""
    file, question = _get(task, "file"), _get(task, "question")
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Workbook: {Path(file).name}\nQuestion: {question}"}]


def generate_tasks(out_dir: str | Path, n: int, seed: int, spec: WorkbookSpec | None = None, *,
                   questions_per_workbook: int = 4) -> Path:
    """Write `n` tasks under `out_dir`: ``workbooks/workbook_NNNN.xlsx`` and ``tasks.jsonl``
    (returned). The same (n, seed, spec, questions_per_workbook) writes the same files."""
    spec = spec or WorkbookSpec()
    if n < 1 or questions_per_workbook < 1:
        raise ValueError(f"generate_tasks needs n >= 1 and questions_per_workbook >= 1, got {n}, "
                         f"{questions_per_workbook}")
    out_dir = Path(out_dir)
    tasks: list[SpreadsheetTask] = []
    index = 0
    while len(tasks) < n:
        if index > 10 * n + 10:  # a spec whose workbooks give no question at all
            raise ValueError(f"generate_tasks: only {len(tasks)} of {n} tasks after {index} workbooks; "
                             f"the spec {spec} leaves too little to ask about")
        tables = generate_workbook(spec, f"{seed}/{index}")
        wanted = min(questions_per_workbook, n - len(tasks))
        questions = generate_questions(tables, wanted, f"{seed}/{index}", spec.difficulty)
        if questions:
            relative = f"workbooks/workbook_{index:04d}.xlsx"
            write_xlsx(tables, out_dir / relative)
            for number, question in enumerate(questions):
                tasks.append(SpreadsheetTask(
                    id=f"{seed}-{index}-{number}", file=relative, question=question.text, answer=question.answer,
                    answer_kind=question.answer_kind, ordered=question.ordered, kind=question.kind,
                    difficulty=spec.difficulty, plan=question.plan))
        index += 1
    path = out_dir / TASKS_FILE
    with path.open("w", encoding="utf-8") as handle:
        for task in tasks:
            handle.write(json.dumps(task.to_row(), ensure_ascii=False) + "\n")
    return path


def load_tasks(jsonl_path: str | Path) -> list[SpreadsheetTask]:
    """Tasks from a JSONL file, one object per line (blank lines skipped).

    Raises ValueError naming the file, the line and the field for a malformed row: bad JSON, a
    missing or mistyped field, an unknown answer_kind, a workbook that does not exist or is not
    .xlsx / .csv. Workbooks are not opened here (that happens per episode, and is cached).
    """
    path = Path(jsonl_path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read task file {str(path)!r}: {err}") from err
    tasks, ids = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        task = _task_from_row(row, where, path.parent, f"{path.stem}-{number}")
        if task.id in ids:
            raise ValueError(f"{where}: field 'id': {task.id!r} is used by an earlier row")
        ids.add(task.id)
        tasks.append(task)
    if not tasks:
        raise ValueError(f"task file {str(path)!r} has no tasks")
    return tasks


def infer_answer_kind(answer: Any) -> str:
    """"list" for a JSON list, "number" for a number (or text that is just one, like "$1,234"),
    "date" for an ISO date, else "text"."""
    if isinstance(answer, (list, tuple)):
        return "list"
    if isinstance(answer, bool):
        return "text"
    if isinstance(answer, (int, float)):
        return "number"
    text = str(answer).strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) and parse_date(text) is not None:
        return "date"
    if parse_number(text) is not None and not re.search(r"[^\W\d_]", text):  # no letters: "12 apples" is text
        return "number"
    return "text"


def _task_from_row(row: dict[str, Any], where: str, folder: Path, default_id: str) -> SpreadsheetTask:
    for name in _REQUIRED:
        if name not in row or row[name] is None:
            raise ValueError(f"{where}: missing field {name!r} (a task needs {', '.join(_REQUIRED)})")
    for name in ("file", "question"):
        if not isinstance(row[name], str) or not row[name].strip():
            raise ValueError(f"{where}: field {name!r} must be a non-empty string, got {row[name]!r}")
    answer = row["answer"]
    if not isinstance(answer, (str, int, float, list)) or isinstance(answer, bool):
        raise ValueError(f"{where}: field 'answer' must be a string, number or list, got {type(answer).__name__}")
    kind = row.get("answer_kind") or infer_answer_kind(answer)
    if kind not in ANSWER_KINDS:
        raise ValueError(f"{where}: field 'answer_kind' must be one of {ANSWER_KINDS}, got {kind!r}")
    ordered = row.get("ordered", False)
    if not isinstance(ordered, bool):
        raise ValueError(f"{where}: field 'ordered' must be true or false, got {ordered!r}")
    plan = row.get("plan")
    if plan is not None and not (isinstance(plan, dict) and isinstance(plan.get("sql"), str)
                                 and isinstance(plan.get("sheets"), list)):
        raise ValueError(f"{where}: field 'plan' must be {{\"sheets\": [...], \"sql\": \"...\"}}, got {plan!r}")
    file = Path(row["file"]).expanduser()
    resolved = file if file.is_absolute() else folder / file
    if resolved.suffix.lower() not in _WORKBOOK_SUFFIXES:
        raise ValueError(f"{where}: field 'file': {row['file']!r} is not a workbook ({', '.join(_WORKBOOK_SUFFIXES)})")
    if not resolved.is_file():
        raise ValueError(f"{where}: field 'file': workbook {row['file']!r} not found (looked for {resolved})")
    extra = {k: v for k, v in row.items() if k not in _FIELDS}
    return SpreadsheetTask(id=str(row.get("id") or default_id), file=str(resolved.resolve()), question=row["question"],
                           answer=answer, answer_kind=kind, ordered=ordered, kind=row.get("kind"),
                           difficulty=row.get("difficulty"), plan=plan, extra=extra)


def _get(task: SpreadsheetTask | Mapping[str, Any], name: str) -> Any:
    return task[name] if isinstance(task, Mapping) else getattr(task, name)
