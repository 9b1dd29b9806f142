"""`posttrain report RUN_DIR`: one self-contained HTML page about a run directory.

    posttrain report runs/rl                      # -> runs/rl/report.html
    posttrain report runs/demo --screenshot demo.png
    posttrain report runs/rl --eval runs/eval-rl  # with a `posttrain eval` result beside it

Any recipe's directory works: the page shows what the run wrote — its curves (reward, accuracy,
KL, entropy, response length, loss: each when logged), evaluation figures (summary.json's
before/after, eval.json tables and plots), the compute ledger per stage, a sample of rollouts
(RL: rollouts.jsonl) and the resolved config. A directory of stage runs (`posttrain demo`'s)
gets one page with a section per stage. Missing files leave their section saying so; a
malformed one is named in its section (and returned as a problem); nothing needs a network to
view: figures are embedded PNGs, the style is inline, there is no script.

Modules: `inputs` reads a run directory, `figures` draws, `page` writes the HTML, `render`
takes a screenshot with headless Chromium.
"""

from __future__ import annotations

import os
from pathlib import Path

from posttrain.report.inputs import ReportError, is_run_dir, read_eval, read_json, read_run, stage_dirs
from posttrain.report.page import esc, eval_result, overview, page, problem, run_section
from posttrain.report.render import screenshot

__all__ = ["ReportError", "build_report", "screenshot", "write_report"]
REPORT_NAME = "report.html"


def build_report(run_dir: str | os.PathLike, eval_paths: list[str | os.PathLike] = ()) -> tuple[str, list[str]]:
    """The page's HTML and the problems met (each naming its file). `eval_paths` are extra
    `posttrain eval` outputs (eval.json files or their directories) to show with the run."""
    source = Path(run_dir)
    if not source.is_dir():
        raise ReportError(f"{source}: " + ("a file, not a run directory" if source.exists() else "no such run directory"))
    extra, problems = [], []
    for path in eval_paths:
        extra.append(read_eval(Path(path)))  # asked for by name: a bad one is an error, not a note
    stages = stage_dirs(source)
    # A run has its own config or metrics; a directory with only a summary.json and runs inside
    # it (the demo) is a directory of stages.
    own = any((source / name).is_file() for name in ("config.yaml", "metrics.jsonl"))
    if is_run_dir(source) and (own or not stages):
        run = read_run(source)
        problems += list(run.problems.values())
        return page(f"{run.name}: {run.recipe} run", source, run_section(run, "stage-0", extra)), problems
    if not stages:
        raise ReportError(f"{source}: not a run directory (none of config.yaml, metrics.jsonl, summary.json, "
                          "eval.json) and no run directories inside it")
    runs = [read_run(path) for path in stages]
    top = None
    if (source / "summary.json").is_file():
        try:
            top = read_json(source / "summary.json")
        except ReportError as err:
            problems.append(str(err))
    page_problems = "".join(problem(message) for message in problems)
    for run in runs:
        problems += list(run.problems.values())
    body = ["<nav>" + "".join(f'<a href="#stage-{i}">{esc(r.name)}</a>' for i, r in enumerate(runs)) + "</nav>",
            page_problems, overview(runs, top)]
    body += [run_section(run, f"stage-{i}") for i, run in enumerate(runs)]
    if extra:
        body.append('<section class="run" id="evals"><h2>posttrain eval results</h2>'
                    + "\n".join(eval_result(result) for result in extra) + "</section>")
    title = f"{source.resolve().name}: {len(runs)} stages ({', '.join(r.name for r in runs)})"
    return page(title, source, "\n".join(body)), problems


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 eval_paths: list[str | os.PathLike] = ()) -> tuple[Path, list[str]]:
    """Write the page (default `<run_dir>/report.html`); returns its path and the problems met."""
    text, problems = build_report(run_dir, eval_paths)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path, problems
