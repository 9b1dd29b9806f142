"""Thinking budgets on the tiny model: SFT on scratchpad sums, then accuracy against the budget.

    python examples/thinking/run.py              # from the repository root; ~4 min with OMP_NUM_THREADS=1
    python examples/thinking/run.py --skip-sft   # reuse runs/thinking/sft
    python examples/thinking/run.py --sft-steps 1000 --modes cap force

1. `posttrain sft examples/sft_scratchpad.yaml`: three-term sums of 0-29 whose targets write the
   partial sums in a think block (`<think>12+34=46,46+7=53</think>53`), a fifth of them with an
   empty block (the answer straight away).
2. `posttrain eval examples/eval_thinking.yaml` once per mode: each thinking budget B is a strategy
   row of eval.json (cap: at most B thinking tokens, then `</think>` is appended; force: s1's budget
   forcing, an early `</think>` replaced by "Wait"), on the same held-out problems.

It prints accuracy and tokens per problem for every budget, next to the model thinking as long as
it likes (the greedy row). The scratchpad needs 11-17 thinking tokens, so a budget below that cuts
it off before the last partial sum.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from posttrain.cli import main as posttrain

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent
RUNS = Path("runs/thinking")


def run(command: list[str]) -> None:
    code = posttrain(command)
    if code != 0:
        sys.exit(f"posttrain {' '.join(command)} failed with exit code {code}")


def table(results: dict[str, dict]) -> str:
    lines = ["| mode | budget B | accuracy | 95 % interval | thinking tokens | generated tokens | tokens/problem |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for mode, result in results.items():
        rows = result["strategies"]
        greedy = next(r for r in rows if r["strategy"] == "greedy")
        if mode == next(iter(results)):
            lo, hi = greedy["interval"]
            lines.append(f"| free (greedy) | - | {greedy['accuracy']:.1%} | [{lo:.1%}, {hi:.1%}] | - | - "
                         f"| {greedy['tokens_per_problem']:.1f} |")
        for r in rows:
            if r["strategy"].startswith("thinking_"):
                lo, hi = r["interval"]
                lines.append(f"| {mode} | {r['budget']} | {r['accuracy']:.1%} | [{lo:.1%}, {hi:.1%}] "
                             f"| {r['thinking_tokens_per_problem']:.1f} | {r['generated_tokens_per_problem']:.1f} "
                             f"| {r['tokens_per_problem']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-sft", action="store_true", help="reuse runs/thinking/sft")
    parser.add_argument("--sft-steps", type=int, default=700)
    parser.add_argument("--modes", nargs="+", default=["cap", "force"], choices=["cap", "force"])
    parser.add_argument("--num-eval", type=int, default=200, help="held-out problems")
    args = parser.parse_args()
    if not args.skip_sft:
        run(["sft", str(EXAMPLES / "sft_scratchpad.yaml"), f"steps={args.sft_steps}", "run.overwrite=true"])
    results = {}
    for mode in args.modes:
        out = RUNS / f"eval_{mode}"
        run(["eval", str(EXAMPLES / "eval_thinking.yaml"), f"thinking.mode={mode}", f"out={out}", "overwrite=true",
             f"data.arithmetic.num_eval={args.num_eval}"])
        results[mode] = json.loads((out / "eval.json").read_text())
    print(table(results))
    (RUNS / "thinking.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
