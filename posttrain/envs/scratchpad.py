"""The arithmetic task with a scratchpad: SFT targets that think before they answer.

    12+34+7=   ->   <think>12+34=46,46+7=53</think>53

A tiny model cannot add several numbers in one step, but it can add two and copy the result:
written out, each partial result is a two-operand sum of numbers in its context. So its accuracy
depends on how much of the scratchpad it may write -- a task on which a thinking budget
(`posttrain eval` with `thinking:`, posttrain/scaling/thinking.py) shows test-time compute
buying accuracy. Products are worked out first, then the terms left to right, as `evaluate`
does. The target is plain text: the delimiters tokenise to the same ids inside the row as
alone (digits on both sides), which the budget controller relies on (tests/unit/test_scratchpad.py).

`direct_fraction` of the targets leave the think block empty (``<think></think>53``): the model
then also learns to answer without thinking, so budget 0 measures its direct answer rather than
a format it never saw.
"""

from __future__ import annotations

import random
import re
from typing import Any

from posttrain.envs.arithmetic import ArithmeticTask, arithmetic_reward, evaluate
from posttrain.scaling.thinking import answer_part

__all__ = ["THINK_CLOSE", "THINK_OPEN", "parse_expression", "scratchpad_reward", "scratchpad_rows",
           "scratchpad_steps", "scratchpad_target"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
STEP_SEPARATOR = ","

_TERM = re.compile(r"([+\-*])(-?\d+)")
_EXPRESSION = re.compile(r"-?\d+(?:[+\-*]-?\d+)+")


def parse_expression(expression: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The operands and operators of an expression `ArithmeticTask` wrote ("3+-4*2")."""
    if not _EXPRESSION.fullmatch(expression):
        raise ValueError(f"not an arithmetic expression of the task: {expression!r}")
    first = re.match(r"-?\d+", expression)
    terms = _TERM.findall(expression, first.end())
    return (int(first.group()), *(int(v) for _, v in terms)), tuple(op for op, _ in terms)


def scratchpad_steps(operands: tuple[int, ...], ops: tuple[str, ...]) -> list[str]:
    """The intermediate results, one binary operation each: products first, then left to right.

    >>> scratchpad_steps((12, 3, 4, 5), ("+", "*", "-"))
    ['3*4=12', '12+12=24', '24-5=19']
    """
    terms, signs, steps = [operands[0]], [], []
    for op, value in zip(ops, operands[1:]):
        if op == "*":
            steps.append(f"{terms[-1]}*{value}={terms[-1] * value}")
            terms[-1] *= value
        else:
            terms.append(value)
            signs.append(op)
    total = terms[0]
    for sign, term in zip(signs, terms[1:]):
        result = total + term if sign == "+" else total - term
        steps.append(f"{total}{sign}{term}={result}")
        total = result
    return steps


def scratchpad_target(expression: str, *, think: bool = True) -> str:
    """``<think>`` steps ``</think>`` answer; with ``think=False`` an empty think block."""
    operands, ops = parse_expression(expression)
    steps = STEP_SEPARATOR.join(scratchpad_steps(operands, ops)) if think else ""
    return f"{THINK_OPEN}{steps}{THINK_CLOSE}{evaluate(operands, ops)}"


def scratchpad_rows(problems: list[dict[str, Any]], task: ArithmeticTask, *, direct_fraction: float = 0.0,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Problems of `task` as SFT rows whose assistant turn is `scratchpad_target`; a seeded
    `direct_fraction` of them without the steps."""
    if not 0.0 <= direct_fraction <= 1.0:
        raise ValueError(f"direct_fraction must be in [0, 1], got {direct_fraction}")
    prefix, suffix = task.template.split("{expr}", 1)
    rng = random.Random(f"{seed}/scratchpad-direct")
    rows = []
    for problem in problems:
        content = problem["prompt"][-1]["content"]
        expression = content[len(prefix): len(content) - len(suffix)]
        think = not (direct_fraction and rng.random() < direct_fraction)
        target = scratchpad_target(expression, think=think)
        rows.append({"messages": list(problem["prompt"]) + [{"role": "assistant", "content": target}]})
    return rows


def scratchpad_reward(prompt: Any, completion: Any, answer: str | int, **row: Any) -> float:
    """`arithmetic_reward` on the answer after the think block (none when it never closes): the
    reasoning's partial results are not the answer. For SFT's held-out accuracy on scratchpad
    models (`eval.reward: posttrain.envs.scratchpad:scratchpad_reward`)."""
    if isinstance(completion, list):
        completion = (completion[-1].get("content") or "") if completion else ""
    return arithmetic_reward(prompt, answer_part(str(completion), THINK_OPEN, THINK_CLOSE), answer)
