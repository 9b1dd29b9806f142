"""The demo task: procedurally generated integer arithmetic, seeded and split by a stable hash.

A problem belongs to the test split when a SHA-256 hash of its expression text falls in the
lowest `TEST_PERCENT` percent, so train and test never share a problem, whatever the seed or
sizes, and the split survives Python's per-process `hash()` salting.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

TEST_PERCENT = 10
# Spaces up to this size are enumerated exactly; beyond it problems are drawn by rejection.
_ENUMERATE_LIMIT = 200_000
_OPS = ("+", "-", "*")
# An optional minus sign (ASCII or Unicode), digits, and an optional fractional part -- the
# fraction is matched only so that "3.5" is recognised as *not* an integer.
_NUMBER = re.compile(r"[-\u2212]?\d+(?:\.\d+)?")


def split_of(expression: str) -> Literal["train", "test"]:
    """The split an expression belongs to (stable across processes and machines)."""
    bucket = int(hashlib.sha256(expression.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "test" if bucket < TEST_PERCENT else "train"


def evaluate(operands: tuple[int, ...], ops: tuple[str, ...]) -> int:
    """Value of ``operands[0] ops[0] operands[1] ...`` with the usual precedence (* before +/-)."""
    terms = [operands[0]]  # running list of additive terms; '*' folds into the last one
    signs = [1]
    for op, value in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= value
        else:
            terms.append(value)
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms))


@dataclass(frozen=True)
class ArithmeticTask:
    """Problems like ``12+34=`` with integer answers.

    Attributes:
        min_operand, max_operand: operand range, inclusive.
        ops: operators to draw from, any of "+", "-", "*".
        num_terms: operands per problem (>= 2).
        template: user message text; ``{expr}`` is replaced by the expression, e.g. "12+34".
    """

    min_operand: int = 0
    max_operand: int = 99
    ops: tuple[str, ...] = ("+",)
    num_terms: int = 2
    template: str = "{expr}="

    def __post_init__(self) -> None:
        if self.min_operand > self.max_operand:
            raise ValueError(f"min_operand ({self.min_operand}) > max_operand ({self.max_operand})")
        if not self.ops or any(op not in _OPS for op in self.ops):
            raise ValueError(f"ops must be a non-empty subset of {_OPS}, got {self.ops!r}")
        if self.num_terms < 2:
            raise ValueError(f"num_terms must be at least 2, got {self.num_terms}")
        if "{expr}" not in self.template:
            raise ValueError(f"template must contain '{{expr}}', got {self.template!r}")

    @property
    def num_distinct(self) -> int:
        """Distinct expressions across both splits."""
        values = self.max_operand - self.min_operand + 1
        return values ** self.num_terms * len(set(self.ops)) ** (self.num_terms - 1)

    def problems(self, n: int, *, seed: int, split: Literal["train", "test"] = "train") -> list[dict[str, Any]]:
        """`n` problems of `split`, deterministic for (task, seed, split).

        Rows look like ``{"prompt": [{"role": "user", "content": "12+34="}], "answer": "46"}``.
        Problems are distinct while the split has enough of them. Beyond that, train repeats
        problems (every distinct one at least once, the rest drawn with replacement, with a
        warning); test raises instead, since repeated test problems would inflate a score.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"{seed}/{split}")  # str seeds are hashed deterministically
        if self.num_distinct <= _ENUMERATE_LIMIT:
            chosen = self._from_enumeration(n, rng, split)
        else:
            chosen = self._by_rejection(n, rng, split)
        return [self._row(operands, ops) for operands, ops in chosen]

    def _expression(self, operands: tuple[int, ...], ops: tuple[str, ...]) -> str:
        parts = [str(operands[0])]
        for op, value in zip(ops, operands[1:]):
            parts += [op, str(value)]
        return "".join(parts)

    def _row(self, operands: tuple[int, ...], ops: tuple[str, ...]) -> dict[str, Any]:
        content = self.template.format(expr=self._expression(operands, ops))
        return {"prompt": [{"role": "user", "content": content}], "answer": str(evaluate(operands, ops))}

    def _from_enumeration(self, n: int, rng: random.Random, split: str) -> list[tuple]:
        pool = _split_pool(self, split)
        if n <= len(pool):
            return rng.sample(pool, n)
        if split == "test" or not pool:
            raise ValueError(f"asked for {n} {split} problems but this task has only {len(pool)} distinct "
                             f"ones in that split; widen the operand range or add terms/operators")
        warnings.warn(f"asked for {n} train problems but only {len(pool)} are distinct; "
                      f"the remaining {n - len(pool)} are drawn with replacement", stacklevel=3)
        return rng.sample(pool, len(pool)) + rng.choices(pool, k=n - len(pool))

    def _by_rejection(self, n: int, rng: random.Random, split: str) -> list[tuple]:
        # The space is large (> _ENUMERATE_LIMIT), so about TEST_PERCENT% of draws land in test
        # and duplicates are rare; the attempt cap only guards against absurd n.
        ops = sorted(set(self.ops))
        seen: set[str] = set()
        chosen = []
        attempts = 0
        while len(chosen) < n:
            attempts += 1
            if attempts > 100 * n + 10_000:
                raise ValueError(f"could not draw {n} distinct {split} problems; the task space is too small")
            operands = tuple(rng.randint(self.min_operand, self.max_operand) for _ in range(self.num_terms))
            op_seq = tuple(rng.choice(ops) for _ in range(self.num_terms - 1))
            expression = self._expression(operands, op_seq)
            if expression in seen or split_of(expression) != split:
                continue
            seen.add(expression)
            chosen.append((operands, op_seq))
        return chosen


@functools.lru_cache(maxsize=8)
def _split_pool(task: ArithmeticTask, split: str) -> list[tuple]:
    """Every (operands, ops) of `task` in `split`, in a fixed order; cached because hashing the
    whole space costs ~0.1 s per 20k problems and recipes ask for train and test repeatedly."""
    values = range(task.min_operand, task.max_operand + 1)
    ops = sorted(set(task.ops))
    return [
        (operands, op_seq)
        for operands in itertools.product(values, repeat=task.num_terms)
        for op_seq in itertools.product(ops, repeat=task.num_terms - 1)
        if split_of(task._expression(operands, op_seq)) == split
    ]


def sft_rows(problems: list[dict[str, Any]], *, label_noise: float = 0.0, seed: int = 0) -> list[dict[str, Any]]:
    """Problems as SFT rows: ``{"messages": [user prompt..., {"role": "assistant", "content": answer}]}``.

    `label_noise` replaces that fraction of the answers (a seeded choice) by a near miss
    (`near_miss`): imperfect demonstrations, like human or model-written SFT data. A model
    imitating them puts probability on wrong answers, which RL against the exact verifier
    can take away (the demo shows this).
    """
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise}")
    rng = random.Random(f"{seed}/label-noise")
    rows = []
    for problem in problems:
        answer = int(problem["answer"])
        if label_noise and rng.random() < label_noise:
            answer = near_miss(answer, rng)
        rows.append({"messages": list(problem["prompt"]) + [{"role": "assistant", "content": str(answer)}]})
    return rows


def near_miss(answer: int, rng: random.Random) -> int:
    """A plausible wrong answer: off by a small amount, by ten, or with one digit changed."""
    kind = rng.choice(("small", "ten", "digit"))
    if kind == "small":
        return answer + rng.choice((-3, -2, -1, 1, 2, 3))
    if kind == "ten":
        return answer + rng.choice((-10, 10))
    digits = list(str(abs(answer)))
    position = rng.randrange(len(digits))
    choices = [d for d in "0123456789" if d != digits[position] and not (position == 0 and d == "0" and len(digits) > 1)]
    digits[position] = rng.choice(choices)
    value = int("".join(digits))
    return -value if answer < 0 else value


def preference_rows(problems: list[dict[str, Any]], *, seed: int) -> list[dict[str, Any]]:
    """Problems as preference pairs: the correct answer is chosen, a near miss (`near_miss`) rejected.

    Rows look like ``{"prompt": [...], "chosen": "46", "rejected": "45", "answer": "46"}``;
    deterministic for (problems, seed).
    """
    rng = random.Random(f"{seed}/preference")
    rows = []
    for problem in problems:
        answer = int(problem["answer"])
        rows.append({"prompt": list(problem["prompt"]), "chosen": str(answer),
                     "rejected": str(near_miss(answer, rng)), "answer": str(answer)})
    return rows


def extract_integer(text: str) -> int | None:
    """The first number in `text` if it is an integer (leading minus allowed), else None.

    >>> extract_integer("  -12 apples"), extract_integer("3.5"), extract_integer("none")
    (-12, None, None)
    """
    match = _NUMBER.search(text)
    if match is None or "." in match.group():
        return None
    return int(match.group().replace("\u2212", "-"))


def arithmetic_reward(prompt: Any, completion: Any, answer: str | int, **row: Any) -> float:
    """1.0 when the completion's first integer equals `answer`, else 0.0.

    `completion` may be a string or a list of chat messages (the last message's content is used).
    Extra row columns arrive in `row` and are ignored.
    """
    if isinstance(completion, list):
        completion = (completion[-1].get("content") or "") if completion else ""
    value = extract_integer(str(completion))
    return 1.0 if value is not None and value == int(answer) else 0.0
