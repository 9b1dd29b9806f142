"""The scratchpad variant of the arithmetic task (posttrain/envs/scratchpad.py): hand-checked SFT
rows, steps that agree with the answer, its config checks, and delimiters that tokenise the same
inside a row as alone (what the thinking-budget controller matches on)."""

import pytest
from transformers import AutoTokenizer

from posttrain.config import ConfigError, DataConfig, load_config
from posttrain.envs.arithmetic import ArithmeticTask
from posttrain.envs.scratchpad import (parse_expression, scratchpad_reward, scratchpad_rows, scratchpad_steps,
                                       scratchpad_target)
from posttrain.models.build import resolve_model_path


def problem(content, answer):
    return {"prompt": [{"role": "user", "content": content}], "answer": answer}


def test_a_three_term_sum_writes_its_partial_sums():
    rows = scratchpad_rows([problem("12+34+7=", "53")], ArithmeticTask(num_terms=3))
    assert rows == [{"messages": [{"role": "user", "content": "12+34+7="},
                                  {"role": "assistant", "content": "<think>12+34=46,46+7=53</think>53"}]}]


def test_products_come_first_then_left_to_right():
    assert parse_expression("12+3*4-5") == ((12, 3, 4, 5), ("+", "*", "-"))
    assert scratchpad_target("12+3*4-5") == "<think>3*4=12,12+12=24,24-5=19</think>19"
    assert scratchpad_steps((2, -3), ("-",)) == ["2--3=5"]
    assert scratchpad_target("12+34+7", think=False) == "<think></think>53"


def test_every_last_step_is_the_answer_and_the_template_is_stripped():
    task = ArithmeticTask(ops=("+", "-", "*"), num_terms=4, max_operand=20, template="Compute {expr} now.")
    problems = task.problems(200, seed=1)
    for p, row in zip(problems, scratchpad_rows(problems, task)):
        target = row["messages"][-1]["content"]
        steps, answer = target[len("<think>"):].split("</think>")
        assert answer == p["answer"] and steps.split(",")[-1].endswith(f"={answer}")
        assert len(steps.split(",")) == 3  # one binary operation per step


def test_direct_fraction_empties_that_share_of_think_blocks():
    task = ArithmeticTask(num_terms=3, max_operand=49)
    rows = scratchpad_rows(task.problems(400, seed=0), task, direct_fraction=0.25, seed=0)
    empty = sum("<think></think>" in r["messages"][-1]["content"] for r in rows)
    assert 70 <= empty <= 130  # 25 % of 400, seeded


def test_scratchpad_reward_reads_the_answer_after_the_think_block():
    assert scratchpad_reward(None, "<think>12+34=46,46+7=53</think>53", answer="53") == 1.0
    assert scratchpad_reward(None, "<think>12+34=46,46+7=53", answer="53") == 0.0  # never closed
    assert scratchpad_reward(None, "<think>53</think>52", answer="53") == 0.0


@pytest.mark.parametrize("overrides", [
    ["arithmetic.direct_fraction=0.5"],  # without a scratchpad it means nothing
    ["arithmetic.scratchpad=true", "arithmetic.direct_fraction=1.5"],
])
def test_direct_fraction_checks_name_the_field(overrides):
    with pytest.raises(ConfigError, match=r"data\.arithmetic\.direct_fraction"):
        load_config(DataConfig, None, overrides)


def test_label_noise_and_scratchpad_do_not_mix():
    with pytest.raises(ConfigError, match=r"data\.arithmetic\.label_noise"):
        load_config(DataConfig, None, ["arithmetic.scratchpad=true", "arithmetic.label_noise=0.3"])
    assert load_config(DataConfig, None, ["arithmetic.scratchpad=true", "arithmetic.direct_fraction=0.2"]
                       ).arithmetic.direct_fraction == 0.2


def test_the_delimiters_tokenise_inside_a_row_as_alone():
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny"))
    task = ArithmeticTask(num_terms=3, max_operand=49)
    problems = task.problems(50, seed=0)
    rows = scratchpad_rows(problems, task) + scratchpad_rows(problems, task, direct_fraction=1.0)

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    open_ids, close_ids = ids("<think>"), ids("</think>")
    for p, row in zip(problems + problems, rows):
        prompt = tokenizer.apply_chat_template(row["messages"][:1], add_generation_prompt=True, tokenize=False)
        full = ids(tokenizer.apply_chat_template(row["messages"], tokenize=False))
        head = ids(prompt)
        assert full[: len(head)] == head and full[len(head): len(head) + len(open_ids)] == open_ids
        after_close = ids(p["answer"])
        end = full.index(tokenizer.eos_token_id, len(head))
        assert full[end - len(after_close) - len(close_ids): end] == close_ids + after_close
