"""Run the learning tests for several seeds and print what they measured as markdown tables.

    python tests/seed_sweep.py                       # seeds 0-4, every learning test (-m learning)
    python tests/seed_sweep.py --seeds 0,1 -- tests/integration/test_sft_learns.py
    python tests/seed_sweep.py --from sweep.jsonl    # re-print the tables of an earlier sweep

Each learning test takes the ``learning_seed`` argument (see tests/conftest.py) and records its
measurements with their thresholds; this script runs pytest with ``POSTTRAIN_TEST_SEEDS`` and
``POSTTRAIN_TEST_RECORD`` set, then prints three tables: every check (test, seed, measure, value,
threshold, pass/fail), the spread of each measure over the seeds (worst seed and its margin to
the threshold: what thresholds are set from), and each test's outcome and time per seed.
``OMP_NUM_THREADS`` defaults to 1 (set it to override). The exit status is pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _short(test: str) -> str:
    return test.removeprefix("tests/integration/").removeprefix("tests/")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _threshold(entry: dict) -> str:
    return "—" if entry["op"] is None else f"{entry['op']} {entry['threshold']:g}"


def _margin(entry: dict, value: float | None) -> float | None:
    """How far ``value`` is on the passing side of the threshold (negative: it fails)."""
    if entry["op"] is None or value is None:
        return None
    return value - entry["threshold"] if entry["op"] in (">", ">=") else entry["threshold"] - value


def tables(records: list[dict]) -> str:
    checks = [r for r in records if r.get("kind") == "check"]
    outcomes = [r for r in records if r.get("kind") == "outcome"]
    seeds = sorted({r["seed"] for r in records})
    out = ["### Checks", "", "| test | seed | measure | value | threshold | pass |", "|---|---|---|---|---|---|"]
    for r in checks:
        out.append(f"| {_short(r['test'])} | {r['seed']} | {r['name']} | {_num(r['value'])} | {_threshold(r)} | "
                   f"{'pass' if r['passed'] else '**FAIL**'} |")

    out += ["", "### Spread over seeds", "",
            "| test | measure | threshold | " + " | ".join(f"seed {s}" for s in seeds) + " | worst | margin |",
            "|---|---|---|" + "---|" * len(seeds) + "---|---|"]
    by_measure: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in checks:
        by_measure[(r["test"], r["name"])][r["seed"]] = r  # a re-run of a seed replaces it
    for (test, name), per_seed in by_measure.items():
        first = next(iter(per_seed.values()))
        cells = [_num(per_seed[s]["value"]) if s in per_seed else "" for s in seeds]
        margins = [(_margin(first, r["value"]), r["value"]) for r in per_seed.values()]
        scored = [m for m in margins if m[0] is not None]
        worst_margin, worst = min(scored) if scored else (None, None)
        out.append(f"| {_short(test)} | {name} | {_threshold(first)} | " + " | ".join(cells)
                   + f" | {_num(worst)} | {_num(worst_margin)} |")

    out += ["", "### Outcomes", "", "| test | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|" + "---|" * len(seeds)]
    by_test: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in outcomes:
        by_test[r["test"]][r["seed"]] = r
    for test, per_seed in by_test.items():
        cells = [f"{per_seed[s]['outcome']} ({per_seed[s]['seconds']:g} s)" if s in per_seed else "" for s in seeds]
        out.append(f"| {_short(test)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 0,2,3 (default 0-4)")
    parser.add_argument("--record", type=Path, help="keep the measurements in this JSONL file (appended to)")
    parser.add_argument("--from", dest="from_file", type=Path, help="only print the tables of an earlier --record")
    parser.add_argument("pytest_args", nargs="*", help="after --: test paths / pytest options "
                                                       "(default: tests/integration)")
    args = parser.parse_args(argv)

    if args.from_file:
        print(tables(read_records(args.from_file)))
        return 0

    record = args.record or Path(tempfile.mkstemp(prefix="seed-sweep-", suffix=".jsonl")[1])
    env = dict(os.environ, POSTTRAIN_TEST_SEEDS=args.seeds, POSTTRAIN_TEST_RECORD=str(record.resolve()))
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "learning",
               *(args.pytest_args or ["tests/integration"])]
    print("$ " + " ".join(command), f"(seeds {args.seeds}, record {record})", file=sys.stderr, flush=True)
    status = subprocess.call(command, cwd=ROOT, env=env)
    print(tables(read_records(record)))
    return status


if __name__ == "__main__":
    sys.exit(main())
