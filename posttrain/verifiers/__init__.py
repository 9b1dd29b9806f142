"""Verifiers and reward plumbing for RL with verifiable rewards.

A reward function is a plain callable ``(prompt, completion, **row) -> float | None``; `row`
holds the dataset's columns (``answer``, ``tests``, ...), None means "not scorable".

* `math_reward` / `MathVerifier`: math_verify (gold first), timeouts by worker process.
* `code_reward` / `CodeVerifier`: unit tests run in `sandbox.run_python`.
* `tag_format_reward`, `extract_tag`, `extract_boxed`: format checks and extractors.
* `weighted_sum`, `safe_reward`, `RewardRunner`: combine rewards and count their failures.

Importing this package is cheap: SymPy and math_verify load on first use.
"""

from posttrain.verifiers.code import CodeVerifier, TestReport, code_reward, extract_code, run_tests
from posttrain.verifiers.combine import (
    RewardError,
    RewardReport,
    RewardRunner,
    RewardStats,
    SafeReward,
    safe_reward,
    weighted_sum,
)
from posttrain.verifiers.format import extract_boxed, extract_tag, tag_format_reward
from posttrain.verifiers.math import MathVerifier, math_reward, score_math
from posttrain.verifiers.sandbox import SandboxLimits, SandboxResult, run_python
from posttrain.verifiers.workers import Outcome, WorkerPool

__all__ = [
    "CodeVerifier", "MathVerifier", "Outcome", "RewardError", "RewardReport", "RewardRunner",
    "RewardStats", "SafeReward", "SandboxLimits", "SandboxResult", "TestReport", "WorkerPool",
    "code_reward", "extract_boxed", "extract_code", "extract_tag", "math_reward", "run_python",
    "run_tests", "safe_reward", "score_math", "tag_format_reward", "weighted_sum",
]
