"""What a run directory holds, read for the report without ever trusting it to be complete.

A run that is still going (or was killed) has a metrics.jsonl whose last line may be cut short
and no summary.json yet; another may have a hand-edited config. Each file is read on its own: a
missing one is None (its section says so), a malformed one becomes a `problem` naming the file
(and line) and its section shows that message, and the rest of the page is still written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A directory is a run (or a `posttrain eval` output) when it holds one of these.
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "eval.json")


class ReportError(ValueError):
    """A file the report cannot use; the message names it."""


@dataclass
class EvalResult:
    """An `eval.json` of `posttrain eval` and the `eval.png` beside it (None when absent)."""

    path: Path
    data: dict
    png: bytes | None


@dataclass
class RunFiles:
    """One run directory as read. `None` means the file is absent (or unreadable: see `problems`)."""

    dir: Path
    config_text: str | None = None
    config: dict | None = None
    metrics: list[dict] | None = None
    summary: dict | None = None
    rollouts: list[dict] | None = None
    evals: list[EvalResult] = field(default_factory=list)
    # file name -> what is wrong with it, shown in that file's section and printed by the CLI.
    problems: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # file name -> e.g. "last line cut short"

    @property
    def name(self) -> str:
        run = (self.config or {}).get("run") if isinstance(self.config, dict) else None
        return str(run.get("name")) if isinstance(run, dict) and run.get("name") else self.dir.name

    @property
    def recipe(self) -> str:
        """summary.json's `recipe`, else a guess from the config's sections ('?' when neither says)."""
        if isinstance(self.summary, dict) and self.summary.get("recipe"):
            return str(self.summary["recipe"])
        config = self.config if isinstance(self.config, dict) else {}
        if "pivot" in config:
            return "pivotrl"
        if "algorithm" in config:
            return "rl"
        if isinstance(config.get("loss"), dict):
            return "dpo"
        if "strategies" in (self.evals[0].data if self.evals else {}):
            return "eval"
        return "?"

    @property
    def algorithm(self) -> str | None:
        if isinstance(self.summary, dict) and self.summary.get("algorithm"):
            return str(self.summary["algorithm"])
        algorithm = (self.config or {}).get("algorithm") if isinstance(self.config, dict) else None
        return str(algorithm["name"]) if isinstance(algorithm, dict) and "name" in algorithm else None

    @property
    def planned_steps(self) -> int | None:
        steps = (self.config or {}).get("steps") if isinstance(self.config, dict) else None
        return steps if isinstance(steps, int) and not isinstance(steps, bool) else None

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.metrics or [] if isinstance(r.get("step"), int)]
        return max(steps) if steps else None


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in RUN_FILES)


def read_jsonl(path: Path) -> tuple[list[dict], str | None]:
    """The records of a JSON-lines file and a note when its last line was cut short (a run still
    writing, or killed mid-line: that line is left out). Any other bad line raises ReportError."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: cannot be read ({err})") from None
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    records, note = [], None
    for position, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except ValueError as err:
            if position == len(numbered) - 1:
                note = f"line {number} is cut short (the run is still writing, or was stopped): left out"
                break
            raise ReportError(f"{path}, line {number}: not JSON ({err})") from None
        if not isinstance(record, dict) or isinstance(record.get("step"), bool) \
                or not isinstance(record.get("step"), int):
            raise ReportError(f"{path}, line {number}: not a record with an integer 'step'")
        records.append(record)
    return records, note


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: cannot be read ({err})") from None
    except ValueError as err:
        raise ReportError(f"{path}: not JSON ({err}); a run writes it at its end, so it may be incomplete") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_eval(path: Path) -> EvalResult:
    """`path` is an eval.json or a directory holding one."""
    file = path / "eval.json" if path.is_dir() else path
    if not file.is_file():
        raise ReportError(f"{file}: no eval.json of `posttrain eval` there")
    data = read_json(file)
    strategies = data.get("strategies")
    if not isinstance(strategies, list) or not all(isinstance(row, dict) for row in strategies):
        raise ReportError(f"{file}: has no 'strategies' list; not an eval.json of `posttrain eval`")
    png = None
    image = file.with_name("eval.png")
    try:
        raw = image.read_bytes() if image.is_file() else b""
    except OSError:
        raw = b""  # an unreadable plot: its place says there is none
    png = raw if raw.startswith(PNG_MAGIC) else None
    return EvalResult(file, data, png)


def read_run(run_dir: Path) -> RunFiles:
    """Every file of one run directory that the report shows."""
    run = RunFiles(run_dir)

    def attempt(name: str, read) -> None:
        path = run_dir / name
        if not path.is_file():
            return
        try:
            read(path)
        except ReportError as err:
            run.problems[name] = str(err)

    def config(path: Path) -> None:
        try:
            run.config_text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ReportError(f"{path}: cannot be read ({err})") from None
        try:
            parsed = yaml.safe_load(run.config_text)
        except yaml.YAMLError as err:
            raise ReportError(f"{path}: not YAML ({err}); shown as text") from None
        run.config = parsed if isinstance(parsed, dict) else None

    def jsonl(attribute: str):
        def read(path: Path) -> None:
            records, note = read_jsonl(path)
            setattr(run, attribute, records)
            if note:
                run.notes[path.name] = note
        return read

    def summary(path: Path) -> None:
        run.summary = read_json(path)

    def evaluation(path: Path) -> None:
        run.evals.append(read_eval(path))

    attempt("config.yaml", config)
    attempt("metrics.jsonl", jsonl("metrics"))
    attempt("summary.json", summary)
    attempt("rollouts.jsonl", jsonl("rollouts"))
    attempt("eval.json", evaluation)
    return run


def finite_number(value: Any) -> float | None:
    """`value` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def stage_dirs(path: Path) -> list[Path]:
    """The run directories directly inside `path` (a demo's stages), in the order they started
    (their first metrics line's time, else their config's modification time)."""
    def started(run_dir: Path) -> float:
        try:
            with open(run_dir / "metrics.jsonl", encoding="utf-8") as handle:
                first = json.loads(handle.readline())
            return float(first["time"])
        except (OSError, ValueError, KeyError, TypeError):
            config = run_dir / "config.yaml"
            return config.stat().st_mtime if config.exists() else math.inf

    children = [p for p in sorted(path.iterdir()) if is_run_dir(p)] if path.is_dir() else []
    return sorted(children, key=lambda p: (started(p), p.name))
