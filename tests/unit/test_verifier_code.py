"""Code rewards: extraction, all/fraction scoring, and reward hacks that must score 0."""

import pytest

from posttrain.verifiers.code import CodeVerifier, code_reward, extract_code, run_tests
from posttrain.verifiers.sandbox import SandboxLimits

TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4", "assert add(0, 5) == 5"]
LIMITS = SandboxLimits(timeout_s=3.0)


def reward(completion, mode="all", tests=TESTS):
    return code_reward("Write add(a, b).", completion, tests, mode=mode, limits=LIMITS, per_test_timeout_s=0.5)


def test_extract_code():
    two_blocks = "first\n```python\nx = 1\n```\nthen\n```py\nx = 2\n```\ndone"
    assert extract_code(two_blocks) == "x = 2\n"
    assert extract_code("```python\nx = 1\n```\nand ```python\nx = 3") == "x = 3"  # cut off mid-block
    assert extract_code("x = 4") == "x = 4"  # no fence: the whole completion
    assert extract_code("```\nplain fence\n```") == "```\nplain fence\n```"  # unlabelled: not python


def test_correct_code_scores_one():
    good = "Sure:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert reward(good) == 1.0
    assert reward(good, mode="fraction") == 1.0


def test_partially_correct_code_scores_the_fraction_of_tests_passed():
    # add(a, b) = a + b only for a > 0: tests 0 (1+2) and 2 (2+2) pass, tests 1 (a=-1) and
    # 3 (a=0) fail -> 2/4 = 0.5 in fraction mode, 0.0 in all mode.
    partial = "```python\ndef add(a, b):\n    return a + b if a > 0 else -99\n```"
    report = run_tests(extract_code(partial), TESTS, limits=LIMITS)
    assert report.verified and report.passed == (True, False, True, False)
    assert reward(partial, mode="fraction") == 0.5
    assert reward(partial, mode="all") == 0.0


def test_a_hanging_test_fails_alone():
    # Only test 1 (a = -1) loops forever: 3 of 4 pass -> 0.75.
    looping = "def add(a, b):\n    while a < 0:\n        pass\n    return a + b"
    assert reward(looping, mode="fraction") == 0.75


def test_single_test_code_string_is_one_test():
    suite = "def check(f):\n    assert f(1, 1) == 2\n    assert f(2, 3) == 5\ncheck(add)"
    assert reward("def add(a, b):\n    return a + b", mode="fraction", tests=suite) == 1.0
    assert reward("def add(a, b):\n    return 2", mode="fraction", tests=suite) == 0.0


@pytest.mark.parametrize(
    "hack",
    [
        # Prints what a naive harness would look for.
        "def add(a, b):\n    return 0\nprint('All tests passed')\nprint('1111')",
        # Leaves before any test runs, with success status.
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        # Reads stdin hoping to find the nonce, prints a forged result line and leaves.
        "import os, sys\nline = sys.stdin.readline().strip()\nprint(line, '1111')\nos._exit(0)",
        # Disables exec so that the tests "pass" without running.
        "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef add(a, b):\n    return 0",
        # Replaces the tests on disk.
        "open('tests.json', 'w').write('{\"tests\": [\"pass\"], \"per_test_timeout_s\": 1}')\n"
        "def add(a, b):\n    return 0",
        # Kills itself after a forged line.
        "import os, signal\nprint('x 1111')\nos.kill(os.getpid(), signal.SIGKILL)",
        # Syntax error.
        "def add(a, b) return a + b",
    ],
)
def test_reward_hacks_do_not_pay(hack):
    assert reward(hack, mode="all") == 0.0
    # add(-1, 1) == 0 holds for `return 0`, so at most test 1 of 4 can pass honestly.
    assert reward(hack, mode="fraction") <= 0.25


def test_bad_tests_field_is_reported():
    with pytest.raises(ValueError, match="'tests' is empty"):
        reward("x = 1", tests=[])
    with pytest.raises(TypeError, match="field 'tests'"):
        reward("x = 1", tests=[1, 2])
    with pytest.raises(ValueError, match="needs a 'tests' field"):
        code_reward("p", "x = 1", answer="2")
    with pytest.raises(ValueError, match="mode"):
        reward("x = 1", mode="most")


def test_code_verifier_batch_reports_bad_rows_per_item():
    verifier = CodeVerifier(mode="fraction", limits=LIMITS, max_parallel=2)
    outcomes = verifier.batch(
        ["p", "p", "p"],
        ["def add(a, b):\n    return a + b", "def add(a, b):\n    return 0", "x = 1"],
        [{"tests": TESTS}, {"tests": TESTS}, {"tests": []}],
    )
    assert [o.status for o in outcomes] == ["ok", "ok", "error"]
    assert [o.value for o in outcomes[:2]] == [1.0, 0.25]
    assert "row 2" in outcomes[2].error and "empty" in outcomes[2].error
