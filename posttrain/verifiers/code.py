"""Code rewards: run a completion's Python against tests in the sandbox.

Two shapes of ``tests``:

* **input/output** (``[{"input": "1 2\n", "output": "3"}, ...]``, the format of competitive-
  programming sets): the solution runs as a program, once per test, with the input on stdin; its
  stdout is compared HERE, outside the sandbox -- as text (trailing whitespace ignored), or, when
  ``output`` is not a string, as JSON parsed here. The tests never enter the sandbox and the
  solution has no verdict to forge or objects to compare: the safest shape, use it when you can.
* **assert-style** (a list of strings of test code, or one string): the completion's code is
  saved as ``solution.py`` and a small harness (`_HARNESS`) runs it in one sandboxed process:

  1. reads a random nonce and then the tests from stdin (a pipe: once read, gone -- the tests are
     never on disk, so the solution cannot read them back), and puts /dev/null in its place;
  2. keeps its own references to ``exec``, ``compile`` and ``os.write``, so that the solution
     cannot monkeypatch the machinery;
  3. executes the solution (as module ``solution``, so its ``if __name__ == "__main__"`` block
     stays quiet);
  4. runs each test in the solution's namespace, each with its own alarm-based time limit;
  5. writes one line ``<nonce> <bits>`` (``1`` = passed) straight to file descriptor 1 and exits
     with status 0 at once, skipping any ``atexit`` handler the solution registered.

  The parent trusts nothing else: the process must exit with status 0 in time, and the LAST line
  of stdout must be the only one carrying the nonce, with one bit per test; output after it
  fails the run. A printed "all tests passed", an early ``sys.exit(0)`` or ``os._exit(0)``, or a
  crash all score 0. Processes the solution leaves behind cannot write after the verdict: the
  sandbox's PID namespace (or, as root, its per-run uid) has them killed when the harness exits.

  An ``assert a == b`` (or ``!=``) in a test is compiled to a check that fails when either side
  holds an object of a class made after the solution started running -- an ``__eq__`` that is
  always True, also hidden in an ``int`` subclass or inside a list -- so a solution that returns
  instances of its own classes cannot pass such a comparison (nor can a test that compares
  instances of classes it defines itself: compare their fields).

  Known limits of this shape, since the solution runs in the harness's interpreter: code that
  digs the nonce, the tests or the harness's checker out of its memory (frame or ``gc``
  introspection) can forge a verdict, and a bare ``assert f(x)`` trusts ``__bool__``. These
  rewards are for training, not for judging determined adversaries; where a policy learns such
  tricks, switch its data to input/output tests.

What runs is the completion's last ```python block, or the whole completion without one
(`extract_code`). A row may say otherwise (`build_program`): ``code_prefix`` is code the
completion continues (HumanEval's signature and docstring, which the model was prompted with), and
``stop`` lists sequences at which the completion is cut first (HumanEval's "\\ndef", "\\nif", ...),
so that what a model writes after the function is not run. The caller keeps the completion whole
(samples.jsonl); the cut happens here, at scoring.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from posttrain.verifiers.sandbox import SandboxLimits, SandboxResult, run_python
from posttrain.verifiers.workers import Outcome

Mode = Literal["all", "fraction"]

_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n", re.IGNORECASE)

_HARNESS = r'''
import json, os, signal, sys, traceback
_exec, _compile, _write, _read, _exit = exec, compile, os.write, os.read, os._exit

class _TestTimeout(BaseException):
    pass

def _on_alarm(signum, frame):
    raise _TestTimeout()

_type, _all, _id, _len = type, all, id, len
_CONTAINERS = (list, tuple, set, frozenset)

def _classes():
    """Every class that exists now (object's subclasses, recursively), by id."""
    seen, todo = set(), [object]
    while todo:
        cls = todo.pop()
        if _id(cls) not in seen:
            seen.add(_id(cls))
            try:
                todo.extend(_type.__subclasses__(cls))
            except TypeError:
                pass
    return seen

_known = None  # the classes that existed before the solution ran

def _trusted(value, depth=0):
    """Whether `value`, and whatever it holds, is of classes that existed before the solution ran:
    a class the solution made can answer `==` however it likes (always True)."""
    cls = _type(value)
    if _id(cls) not in _known or depth > 50:
        return False
    if cls in _CONTAINERS:
        return _all(_trusted(v, depth + 1) for v in value)
    if cls is dict:
        return _all(_trusted(k, depth + 1) and _trusted(v, depth + 1) for k, v in value.items())
    return True

def _strict_eq(left, right, negate):
    if not (_trusted(left) and _trusted(right)):
        raise AssertionError("compared a value of a class the solution defined")
    return (left != right) if negate else (left == right)

class _StrictAsserts(__import__("ast").NodeTransformer):
    """`assert a == b` / `assert a != b` -> `assert __posttrain_eq__(a, b, negate)`."""
    def visit_Assert(self, node):
        import ast
        test = node.test
        if isinstance(test, ast.Compare) and _len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.NotEq)):
            node.test = ast.Call(ast.Name("__posttrain_eq__", ast.Load()),
                                 [test.left, test.comparators[0], ast.Constant(isinstance(test.ops[0], ast.NotEq))], [])
            ast.fix_missing_locations(node)
        return self.generic_visit(node)

def _compile_test(source, name):
    import ast
    try:
        tree = _StrictAsserts().visit(ast.parse(source, name))
    except SyntaxError:
        return _compile(source, name, "exec")  # raises the SyntaxError the test would
    return _compile(tree, name, "exec")

def _main():
    received = b""
    while True:  # the nonce line, then the tests as JSON: stdin is a pipe, so once read, gone
        chunk = _read(0, 65536)
        if not chunk:
            break
        received += chunk
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    nonce, _, spec = received.partition(b"\n")
    spec = json.loads(spec)
    received = None
    tests, per_test_s = spec.pop("tests"), spec["per_test_timeout_s"]
    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    global _known
    _known = _classes()
    compiled = []
    for i, test in enumerate(tests):
        try:
            compiled.append(_compile_test(test, "test_%d" % i))
        except BaseException as err:
            compiled.append(err)
    loaded = True
    try:
        _exec(_compile(source, "solution.py", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        loaded = False
    bits = []
    for i, test in enumerate(tests):
        passed = False
        if loaded:
            try:
                signal.signal(signal.SIGALRM, _on_alarm)
                signal.setitimer(signal.ITIMER_REAL, per_test_s)
                try:
                    if isinstance(compiled[i], BaseException):
                        raise compiled[i]
                    namespace["__posttrain_eq__"] = _strict_eq
                    _exec(compiled[i], namespace)
                    passed = True
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _TestTimeout:
                print("test %d: timed out after %gs" % (i, per_test_s), file=sys.stderr)
            except BaseException as err:
                print("test %d: %s: %s" % (i, type(err).__name__, err), file=sys.stderr)
        bits.append("1" if passed else "0")
    _write(1, b"\n" + nonce.strip() + b" " + "".join(bits).encode() + b"\n")
    _exit(0)

_main()
'''


def extract_code(completion: str) -> str:
    """The last ```python (or ```py) fenced block; an unclosed final fence (the model was cut
    off) runs to the end; with no such fence at all, the whole completion."""
    opens = list(_OPEN_FENCE.finditer(completion))
    if not opens:
        return completion
    body_start = opens[-1].end()
    close = completion.find("```", body_start)
    return completion[body_start:close] if close != -1 else completion[body_start:]


def cut_at_stops(completion: str, stop: Sequence[str]) -> str:
    """`completion` up to (not including) the earliest occurrence of any of the `stop` sequences."""
    cut = len(completion)
    for sequence in stop:
        at = completion.find(sequence)
        if at != -1:
            cut = min(cut, at)
    return completion[:cut]


def build_program(completion: str, code_prefix: str | None = None, stop: Sequence[str] | None = None) -> str:
    """The program a completion stands for: cut at the first of the `stop` sequences (when given),
    then, with a `code_prefix`, the prefix followed by the cut completion (HumanEval's harness runs
    prompt + completion: the model continues the function it was shown), else the cut
    completion's code (`extract_code`)."""
    if stop is not None:
        if isinstance(stop, str) or not isinstance(stop, (list, tuple)) or \
                not all(isinstance(s, str) and s for s in stop):
            raise TypeError(f"field 'stop' must be a list of non-empty strings, got {stop!r:.80}")
        completion = cut_at_stops(completion, stop)
    if code_prefix is None:
        return extract_code(completion)
    if not isinstance(code_prefix, str):
        raise TypeError(f"field 'code_prefix' must be a string (the code the completion continues), "
                        f"got {type(code_prefix).__name__}")
    return code_prefix + completion


def _normalise_tests(tests: Any) -> list[str] | list[dict]:
    if isinstance(tests, str):
        tests = [tests]
    if isinstance(tests, (list, tuple)) and tests and all(isinstance(t, dict) for t in tests):
        for i, test in enumerate(tests):
            if set(test) != {"input", "output"} or not isinstance(test["input"], str):
                raise ValueError(f"field 'tests'[{i}]: an input/output test has exactly the keys 'input' (the "
                                 f"program's stdin, a string) and 'output'; got keys {sorted(test)}")
        return list(tests)
    if not isinstance(tests, (list, tuple)) or not all(isinstance(t, str) for t in tests):
        raise TypeError("field 'tests' must be a list of strings (assert-style test code), one string, or a list "
                        f"of {{'input': ..., 'output': ...}} objects, got {type(tests).__name__}")
    if not tests or not any(t.strip() for t in tests):
        raise ValueError("field 'tests' is empty")
    return list(tests)


def _normalised_text(text: str) -> str:
    """Output as competitive-programming judges compare it: trailing spaces and blank lines ignored."""
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").rstrip().split("\n"))


def io_output_matches(stdout: str, expected: Any) -> bool:
    """Whether a program's `stdout` is the `expected` output, judged here, outside the sandbox.

    A string is compared as text (`_normalised_text`); any other value is compared with the
    program's output parsed as JSON -- plain values built by this process's parser, so no object
    of the solution's (an ``__eq__`` that is always True) takes part."""
    if isinstance(expected, str):
        return _normalised_text(stdout) == _normalised_text(expected)
    try:
        value = json.loads(stdout)
    except ValueError:
        return False
    return value == expected and isinstance(value, bool) == isinstance(expected, bool)  # true is not 1


def _run_io_tests(code: str, tests: list[dict], limits: SandboxLimits, per_test_timeout_s: float) -> TestReport:
    """Input/output tests: the solution runs as a program, once per test, with the test's input on
    stdin; its stdout is judged here. The tests never enter the sandbox, and there is no verdict
    for the solution to forge: its only say is what it prints."""
    limits = dataclasses.replace(limits, timeout_s=min(limits.timeout_s, per_test_timeout_s))
    passed, last = [], None
    for test in tests:
        last = run_python(code, stdin=test["input"], limits=limits)
        passed.append(last.ok and io_output_matches(last.stdout, test["output"]))
    return TestReport(tuple(passed), True, last)


@dataclass(frozen=True)
class TestReport:
    """Which tests passed.

    Attributes:
        passed: one bool per test, in order (all False when the harness line is missing).
        verified: the harness's nonce line was found exactly once with one bit per test.
        sandbox: the raw sandbox result (stderr holds per-test failure reasons).
    """

    __test__ = False  # not a pytest test class, despite the name

    passed: tuple[bool, ...]
    verified: bool
    sandbox: SandboxResult

    @property
    def fraction(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


def run_tests(
    code: str,
    tests: Sequence[str] | str,
    *,
    limits: SandboxLimits | None = None,
    per_test_timeout_s: float = 3.0,
) -> TestReport:
    """Run `code` then each test in one sandboxed process; see the module docstring."""
    tests = _normalise_tests(tests)
    if not per_test_timeout_s > 0:
        raise ValueError(f"per_test_timeout_s must be > 0, got {per_test_timeout_s}")
    if isinstance(tests[0], dict):
        return _run_io_tests(code, tests, limits or SandboxLimits(), per_test_timeout_s)
    nonce = secrets.token_hex(16)
    spec = json.dumps({"tests": tests, "per_test_timeout_s": float(per_test_timeout_s)})
    result = run_python(_HARNESS, files={"solution.py": code}, stdin=nonce + "\n" + spec,
                        limits=limits or SandboxLimits())
    lines = result.stdout.rstrip("\n").split("\n")
    if result.ok and lines[-1].startswith(nonce + " ") and sum(nonce in line for line in lines) == 1:
        bits = lines[-1][len(nonce) + 1 :]
        if len(bits) == len(tests) and set(bits) <= {"0", "1"}:
            return TestReport(tuple(b == "1" for b in bits), True, result)
    return TestReport((False,) * len(tests), False, result)


def code_reward(
    prompt: Any,
    completion: str,
    tests: Sequence[str] | str | None = None,
    *,
    code_prefix: str | None = None,
    stop: Sequence[str] | None = None,
    mode: Mode = "all",
    limits: SandboxLimits | None = None,
    per_test_timeout_s: float = 3.0,
    **row: Any,
) -> float:
    """Reward function: run `completion`'s code against `tests` (the dataset's ``tests`` field).

    Args:
        tests: assert statements (each one test) or one string of test code (one test).
        code_prefix, stop: row columns that say how the program is built (`build_program`):
            the code the completion continues, and where the completion is cut.
        mode: "all" -> 1.0 iff every test passes; "fraction" -> the fraction that pass.
        limits, per_test_timeout_s: sandbox limits; time limit of each test.

    Use ``functools.partial(code_reward, mode="fraction")`` to fix options for a trainer.
    """
    if tests is None:
        raise ValueError(f"code reward needs a 'tests' field in the row (fields: {sorted(row)})")
    if mode not in ("all", "fraction"):
        raise ValueError(f"mode must be 'all' or 'fraction', got {mode!r}")
    program = build_program(completion, code_prefix, stop)
    report = run_tests(program, tests, limits=limits, per_test_timeout_s=per_test_timeout_s)
    if mode == "fraction":
        return report.fraction
    return 1.0 if report.passed and all(report.passed) else 0.0


# The dataset column it needs (`posttrain.rewards.check_reward_columns` checks prompt files for it).
code_reward.required_columns = ("tests",)  # type: ignore[attr-defined]


def _code_reward_batch(prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict]) -> list[Outcome]:
    # Each item is a sandboxed process that the sandbox itself times out, so a batch runs several at
    # once in threads (which only wait on the processes) instead of one by one in a worker process:
    # a HumanEval pass is hundreds of sandbox starts.
    return CodeVerifier(max_parallel=max(1, min(8, os.cpu_count() or 1))).batch(prompts, completions, rows)


class CodeVerifier:
    """`code_reward` with fixed options and a `batch` method that runs sandboxes in parallel.

    Each completion gets its own sandboxed process (~40 ms of start-up on a 2-core machine);
    `max_parallel` of them run at once from a thread pool (threads only wait on processes).
    """

    required_columns = ("tests",)

    def __init__(self, *, mode: Mode = "all", limits: SandboxLimits | None = None,
                 per_test_timeout_s: float = 3.0, max_parallel: int = 2) -> None:
        if mode not in ("all", "fraction"):
            raise ValueError(f"mode must be 'all' or 'fraction', got {mode!r}")
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
        self.mode, self.limits, self.per_test_timeout_s, self.max_parallel = mode, limits, per_test_timeout_s, max_parallel

    def __call__(self, prompt: Any, completion: str, tests: Sequence[str] | str | None = None, **row: Any) -> float:
        return code_reward(prompt, completion, tests, mode=self.mode, limits=self.limits,
                           per_test_timeout_s=self.per_test_timeout_s, **row)

    def batch(self, prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict]) -> list[Outcome]:
        """Outcomes in order; an item whose row is bad comes back as an "error" outcome."""
        def one(i: int) -> Outcome:
            try:
                return Outcome("ok", value=self(prompts[i], completions[i], **rows[i]))
            except Exception as err:  # noqa: BLE001 - reported per item, not raised for the batch
                return Outcome("error", error=f"row {i}: {type(err).__name__}: {err}")

        with ThreadPoolExecutor(max_workers=self.max_parallel) as pool:
            return list(pool.map(one, range(len(completions))))


# `RewardRunner` looks for a `batch` attribute and, when present, scores a whole batch through it.
code_reward.batch = _code_reward_batch  # type: ignore[attr-defined]
