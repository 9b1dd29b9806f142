"""SFT -> DPO versus SFT -> reward model -> PPO (and SFT -> GRPO with the exact verifier) on one task.

    python examples/compare/run.py            # from the repository root; ~5 min on 2 CPU cores
    python examples/compare/run.py --skip-sft  # reuse runs/compare/sft

Every stage is a plain `posttrain <command> examples/compare/<stage>.yaml`; this script only runs
them in order and tabulates their summary.json files: held-out task accuracy (greedy and sampled
at T = 1, the same 30 unseen problems), held-out preference accuracy where the method has one,
and the compute ledger (tokens and FLOPs per stage). See docs/preference-comparison.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from posttrain.cli import main as posttrain

HERE = Path(__file__).parent
RUNS = Path("runs/compare")
STAGES = [("sft", "sft"), ("dpo", "dpo"), ("reward-model", "reward_model"), ("rl", "ppo"), ("rl", "grpo")]


def run_stage(command: str, name: str) -> dict:
    code = posttrain([command, str(HERE / f"{name}.yaml"), "run.overwrite=true", "run.report_to=[]"])
    if code != 0:
        sys.exit(f"posttrain {command} {name}.yaml failed with exit code {code}")
    return json.loads((RUNS / name / "summary.json").read_text())


def fmt(value, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if percent else f"{value:.3g}"


def table(summaries: dict[str, dict]) -> str:
    sft = summaries["sft"]
    rows = [("method", "greedy acc", "sampled acc", "pref. acc (held-out)", "tokens", "FLOPs", "seconds")]
    rows.append(("SFT (start)", fmt(sft.get("after/eval/accuracy_greedy")), fmt(sft.get("after/eval/accuracy_sampled")),
                 "-", fmt(sft.get("compute/total/tokens"), False), fmt(sft.get("compute/total/flops"), False),
                 fmt(sft.get("seconds"), False)))
    labels = {"dpo": "+ DPO", "reward_model": "+ reward model", "ppo": "+ RM + PPO", "grpo": "+ GRPO (verifier)"}
    for name, label in labels.items():
        s = summaries.get(name)
        if s is None:
            continue
        pref = s.get("after/eval/preference_accuracy", s.get("after/eval/accuracy") if name == "reward_model" else None)
        greedy = None if name == "reward_model" else s.get("after/eval/accuracy_greedy")
        sampled = None if name == "reward_model" else s.get("after/eval/accuracy_sampled")
        rows.append((label, fmt(greedy), fmt(sampled), fmt(pref), fmt(s.get("compute/total/tokens"), False),
                     fmt(s.get("compute/total/flops"), False), fmt(s.get("seconds"), False)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-sft", action="store_true", help="reuse runs/compare/sft")
    args = parser.parse_args()
    summaries = {}
    for command, name in STAGES:
        if name == "sft" and args.skip_sft:
            summaries[name] = json.loads((RUNS / name / "summary.json").read_text())
            continue
        summaries[name] = run_stage(command, name)
    print(table(summaries))
    (RUNS / "comparison.json").write_text(json.dumps(summaries, indent=2))


if __name__ == "__main__":
    main()
