"""The report page: plain HTML with inline CSS and the figures as base64 PNGs, so the one file
opens anywhere, offline, with nothing to fetch and no script to run.

Every text that comes from a run (names, config, metric keys, prompts, completions, summary
values) goes through `html.escape`; nothing from a run is ever markup.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import re
from pathlib import Path
from typing import Any

from posttrain import __version__
from posttrain.report import figures
from posttrain.report.inputs import EvalResult, RunFiles, finite_number

# What each ledger stage of the recipes is (posttrain/compute.py; stages are free strings).
STAGES = {
    "rollout": "rollouts: generating completions / episodes",
    "scoring": "scoring: reward functions (no model FLOPs)",
    "reference": "reference and old log-probs",
    "values": "critic values (PPO)",
    "update": "policy update (forward + backward)",
    "eval": "held-out evaluation",
    "sft": "SFT update (forward + backward)",
    "dpo": "DPO update (forward + backward)",
    "reward_model": "reward-model update (forward + backward)",
}
# Evaluation figures shown first; the rest (counts of prompts, errors...) are folded away.
HEADLINE = re.compile(r"accuracy|loss|margin|reward_(greedy|sampled)$|/reward_mean$")
ROLLOUT_STEPS_SHOWN = 3  # logged steps whose rollouts the page shows: the first, middle and last

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       background: #f4f5f7; color: #1d2330; line-height: 1.4; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 24px 40px; }
h1 { font-size: 1.6em; margin: 0.3em 0; } h2 { font-size: 1.3em; margin: 0.2em 0 0.4em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; border-bottom: 1px solid #e3e6eb; padding-bottom: 2px; }
h4 { font-size: 0.95em; margin: 0.8em 0 0.3em; }
section.run { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 14px 20px 18px;
              margin: 18px 0; }
.meta { color: #4b5563; font-size: 0.92em; }
table { border-collapse: collapse; font-size: 13.5px; margin: 6px 0 10px; }
th, td { border: 1px solid #dde1e7; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 12px; }
.figures img { width: 100%; height: auto; border: 1px solid #eceef1; }
img.wide { width: auto; max-width: 100%; height: auto; border: 1px solid #eceef1; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 12.5px;
      font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; }
pre.config { max-height: 640px; overflow: auto; background: #f7f8fa; padding: 8px 10px; border: 1px solid #e3e6eb; }
table.rollouts { table-layout: fixed; width: 100%; }
table.rollouts td pre { max-height: 260px; overflow: auto; }
.problem { background: #fff1ee; border-left: 4px solid #d9534f; padding: 6px 10px; margin: 6px 0; }
.note { background: #fff9e6; border-left: 4px solid #e0a800; padding: 4px 10px; margin: 6px 0; font-size: 0.92em; }
.absent, .same { color: #6b7280; font-style: italic; }
.good { background: #e8f6ec; } .bad { background: #fbeaea; }
nav a { margin-right: 14px; }
"""

esc = html.escape


def number(value: Any) -> str:
    """A figure for a table: ints with separators, floats to 4 significant digits (or e-notation)."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:,.0f}" if abs(value) >= 1e3 else f"{value:.4g}"
    return str(value)


def table(header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset(), css: str = "",
          widths: list[int] | None = None) -> str:
    """An HTML table; cells are escaped unless they are `Markup` (already HTML built here).
    `numeric` columns are right-aligned figures; `widths` are column widths in percent."""
    head = "".join(f'<th class="num">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            content = cell.html if isinstance(cell, Markup) else esc(number(cell) if i in numeric else str(cell))
            classes = " ".join(c for c in ("num" if i in numeric else "", getattr(cell, "css", "")) if c)
            klass = f' class="{classes}"' if classes else ""
            cells.append(f"<td{klass}>{content}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    klass = f' class="{css}"' if css else ""
    columns = "<colgroup>" + "".join(f'<col style="width:{w}%">' for w in widths) + "</colgroup>" if widths else ""
    return f"<table{klass}>{columns}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Markup:
    """HTML this module built (its run texts already escaped): put in a table cell as it is,
    the cell getting the `css` class."""

    def __init__(self, html_text: str, css: str = "") -> None:
        self.html, self.css = html_text, css


def image(png: bytes, alt: str, css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    return f'<img{klass} alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def value_cell(value: Any) -> Markup:
    """A summary value in a table cell: a figure, a text, or lists and objects as JSON."""
    text = json.dumps(value, indent=1, default=str) if isinstance(value, (dict, list)) else number(value)
    return Markup(f"<pre>{esc(text)}</pre>")


def absent(text: str) -> str:
    return f'<p class="absent">{esc(text)}</p>'


def problem(text: str) -> str:
    return f'<p class="problem">{esc(text)}</p>'


# ------------------------------------------------------------------------------------ sections


def header(run: RunFiles) -> str:
    parts = [f"recipe <b>{esc(run.recipe)}</b>"]
    if run.algorithm:
        parts.append(f"algorithm <b>{esc(run.algorithm)}</b>")
    last, planned = run.last_step, run.planned_steps
    if last is not None:
        parts.append(f"last logged step {last:,}" + (f" of {planned:,}" if planned else ""))
    if run.summary is not None:
        status = "finished (summary.json written)"
        if finite_number(run.summary.get("seconds")) is not None:
            status += f" in {run.summary['seconds']:,.0f} s"
    else:
        status = "no summary.json: the run is still going, was stopped or failed"
    parts.append(status)
    lines = [f'<p class="meta">{" · ".join(parts)}<br>directory <code>{esc(str(run.dir))}</code></p>']
    lines += [problem(message) for message in run.problems.values()]
    lines += [f'<p class="note">{esc(name)}: {esc(note)}</p>' for name, note in run.notes.items()]
    return "\n".join(lines)


def curves(run: RunFiles) -> str:
    if "metrics.jsonl" in run.problems:
        return problem(f"No curves: {run.problems['metrics.jsonl']}")
    if run.metrics is None:
        return absent("No metrics.jsonl in this directory: no curves.")
    series = figures.metric_series(run.metrics)
    groups = figures.curve_groups(series)
    if not groups:
        return absent("metrics.jsonl holds none of the metrics drawn here (reward, accuracy, KL, entropy, "
                      "response length, loss).")
    shown = {k for _, keys in groups for k in keys}
    images = "".join(image(figures.curve_png(title, keys, series), title) for title, keys in groups)
    others = sorted(k for k in series if k not in shown)
    more = (f'<details><summary class="meta">{len(others)} other metrics in metrics.jsonl</summary>'
            f'<p class="meta">{esc(", ".join(others))}</p></details>') if others else ""
    return f'<div class="figures">{images}</div>{more}'


def _first_and_last_eval(metrics: list[dict]) -> tuple[dict, dict, int, int] | None:
    evals = [r for r in metrics if any(k.startswith("eval/") for k in r)]
    if not evals:
        return None
    pick = lambda r: {k: v for k, v in r.items() if k.startswith("eval/")}  # noqa: E731
    return pick(evals[0]), pick(evals[-1]), evals[0]["step"], evals[-1]["step"]


def evaluation(run: RunFiles, extra: list[EvalResult]) -> str:
    parts = []
    summary = run.summary or {}
    before = {k[len("before/"):]: v for k, v in summary.items() if k.startswith("before/")}
    after = {k[len("after/"):]: v for k, v in summary.items() if k.startswith("after/")}
    labels = ("before training", "after training")
    if not before and not after and run.metrics:
        found = _first_and_last_eval(run.metrics)
        if found:
            before, after, first, last = found
            labels = (f"first evaluation (step {first})", f"latest evaluation (step {last})")
    if before or after:
        rows: dict[bool, list] = {True: [], False: []}
        for key in sorted(dict.fromkeys([*before, *after]), key=lambda k: (not k.startswith("eval/accuracy"), k)):
            a, b = finite_number(before.get(key)), finite_number(after.get(key))
            change = b - a if a is not None and b is not None else None
            rows[bool(HEADLINE.search(key))].append(
                [key, before.get(key), after.get(key), f"{change:+.4g}" if change is not None else "—"])
        header_row = ["metric", *labels, "change"]
        parts.append(table(header_row, rows[True] or rows[False], numeric={1, 2, 3}))
        if rows[True] and rows[False]:  # counts (prompts, errors, unscorable) and the like, folded
            parts.append(f'<details><summary class="meta">{len(rows[False])} more evaluation figures</summary>'
                         f'{table(header_row, rows[False], numeric={1, 2, 3})}</details>')
    else:
        parts.append(absent("No evaluation figures (summary.json has no before/after figures and metrics.jsonl "
                            "no eval/ metrics)."))
    for result in [*run.evals, *extra]:
        parts.append(eval_result(result))
    return "\n".join(parts)


def eval_result(result: EvalResult) -> str:
    d = result.data
    facts = [f"model <code>{esc(str(d.get('model', '?')))}</code>", f"reward {esc(str(d.get('reward', '?')))}",
             f"{esc(number(d.get('num_prompts')))} prompts", f"{esc(number(d.get('samples')))} samples per prompt"]
    if d.get("weights"):
        facts.append(f"weights {esc(str(d['weights']))}")
    rows = []
    for row in d["strategies"]:
        interval = row.get("interval")
        bounds = [finite_number(x) for x in interval] if isinstance(interval, list) and len(interval) == 2 else []
        shown = f"[{bounds[0]:.3f}, {bounds[1]:.3f}]" if len(bounds) == 2 and None not in bounds else "—"
        accuracy = finite_number(row.get("accuracy"))
        rows.append([row.get("strategy", "?"), row.get("k"), "—" if accuracy is None else f"{accuracy:.3f}", shown,
                     row.get("tokens_per_problem"), row.get("flops_per_problem"), row.get("num_prompts")])
    out = [f"<h4>posttrain eval: <code>{esc(str(result.path))}</code></h4>",
           f'<p class="meta">{" · ".join(facts)}</p>',
           table(["strategy", "k", "accuracy", "interval", "tokens / problem", "FLOPs / problem", "prompts"], rows,
                 numeric={1, 2, 4, 5, 6})]
    out.append(image(result.png, "eval.png", "wide") if result.png else absent("No eval.png (or not a PNG) beside it."))
    return "\n".join(out)


def ledger_figures(run: RunFiles) -> tuple[dict[str, dict[str, float]], str]:
    """stage -> {tokens, flops, seconds} from summary.json, else from the latest metrics line that
    has them; and where they came from."""
    source, where = None, ""
    if run.summary and any(k.startswith("compute/") for k in run.summary):
        source, where = run.summary, "summary.json"
    elif run.metrics:
        lines = [r for r in run.metrics if any(k.startswith("compute/") for k in r)]
        if lines:
            source, where = lines[-1], f"metrics.jsonl, step {lines[-1]['step']} (no summary.json yet)"
    stages: dict[str, dict[str, float]] = {}
    for key, value in (source or {}).items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "compute" and parts[1] != "total" and finite_number(value) is not None:
            stages.setdefault(parts[1], {})[parts[2]] = value
    return stages, where


def compute(run: RunFiles) -> str:
    stages, where = ledger_figures(run)
    if not stages:
        return absent("No compute ledger (compute/<stage>/* figures) in summary.json or metrics.jsonl.")
    total_flops = sum(s.get("flops", 0) for s in stages.values())
    total_seconds = sum(s.get("seconds", 0.0) for s in stages.values())
    rows, names, flop_share, time_share = [], [], [], []
    for name, s in stages.items():
        fs = s.get("flops", 0) / total_flops if total_flops else 0.0
        ts = s.get("seconds", 0.0) / total_seconds if total_seconds else 0.0
        rate = s["tokens"] / s["seconds"] if s.get("seconds") and s.get("tokens") else None
        rows.append([name, STAGES.get(name, ""), s.get("tokens"), s.get("flops"), f"{fs:.1%}", s.get("seconds"),
                     f"{ts:.1%}", rate])
        names.append(name)
        flop_share.append(fs)
        time_share.append(ts)
    rows.append([Markup("<b>total</b>"), "", sum(s.get("tokens", 0) for s in stages.values()), total_flops,
                 "100%" if total_flops else "—", total_seconds, "100%" if total_seconds else "—", None])
    note = ("FLOPs: 2·N per token forward, 4·N backward (N = matmul parameters; posttrain/compute.py). "
            "Seconds are wall-clock per stage; shares of seconds are of their sum over the stages.")
    return "\n".join([
        f'<p class="meta">from {esc(where)}</p>',
        table(["stage", "what", "tokens", "FLOPs", "FLOP share", "seconds", "time share", "tokens/s"], rows,
              numeric={2, 3, 4, 5, 6, 7}),
        image(figures.ledger_png(names, flop_share, time_share), "compute shares", "wide"),
        f'<p class="meta">{esc(note)}</p>',
    ])


def rollouts(run: RunFiles, steps_shown: int = ROLLOUT_STEPS_SHOWN) -> str:
    if "rollouts.jsonl" in run.problems:
        return problem(f"No rollouts: {run.problems['rollouts.jsonl']}")
    if run.rollouts is None:
        return absent("No rollouts.jsonl: only the RL recipes (rl, pivotrl) write one "
                      "(rollout.log_samples rollouts of each logged step).")
    if not run.rollouts:
        return absent("rollouts.jsonl is empty (no step logged yet, or rollout.log_samples=0).")
    steps = sorted({r["step"] for r in run.rollouts})
    if len(steps) > steps_shown:
        picks = {steps[round(i * (len(steps) - 1) / (steps_shown - 1))] for i in range(steps_shown)} \
            if steps_shown > 1 else {steps[-1]}
        chosen = sorted(picks)
    else:
        chosen = steps
    out = [f'<p class="meta">{len(run.rollouts):,} rollouts kept at {len(steps):,} logged steps; shown: '
           f'step {esc(", ".join(map(str, chosen)))} (every one is in rollouts.jsonl).</p>']
    for step in chosen:
        rows, previous = [], None
        for r in (r for r in run.rollouts if r["step"] == step):
            prompt = str(r.get("prompt", ""))
            prompt_cell = Markup('<span class="same">same prompt</span>' if prompt == previous
                                 else f"<pre>{esc(prompt)}</pre>")
            previous = prompt
            reward = finite_number(r.get("reward"))
            mark = "" if reward is None else ("good" if reward >= 0.5 else "bad")
            reward_cell = Markup(esc(number(reward)), css=f"num {mark}".strip())
            ident = f"{r.get('group', '?')}·{r.get('sample', '?')}"
            tokens = f"{number(r.get('tokens'))}" + (" (cut)" if r.get("truncated") else "")
            completion = Markup(f"<pre>{esc(str(r.get('completion', '')))}</pre>")
            rows.append([ident, reward_cell, tokens, prompt_cell, completion])
        out.append(f"<h4>step {step}</h4>")
        out.append(table(["group · sample", "reward", "tokens", "prompt", "completion"], rows, css="rollouts",
                         widths=[9, 7, 8, 30, 46]))
    return "\n".join(out)


def other_summary(run: RunFiles) -> str:
    if run.summary is None:
        return absent("No summary.json (written when a run finishes).")
    rows = [[key, value_cell(value)] for key, value in run.summary.items()
            if not key.startswith(("before/", "after/", "compute/"))]
    return table(["field", "value"], rows) if rows else absent("summary.json has no other fields.")


def config(run: RunFiles) -> str:
    if run.config_text is None:
        return absent("No config.yaml in this directory.")
    return f'<pre class="config">{esc(run.config_text)}</pre>'


def run_section(run: RunFiles, anchor: str, extra_evals: list[EvalResult] = ()) -> str:
    """Everything about one run directory, one `<section>`."""
    return "\n".join([
        f'<section class="run" id="{anchor}"><h2>{esc(run.name)}</h2>', header(run),
        "<h3>Curves</h3>", curves(run),
        "<h3>Evaluation</h3>", evaluation(run, list(extra_evals)),
        "<h3>Compute ledger</h3>", compute(run),
        "<h3>Sample rollouts</h3>", rollouts(run),
        "<h3>Summary</h3>", other_summary(run),
        "<h3>Config (config.yaml)</h3>", config(run),
        "</section>",
    ])


def overview(stages: list[RunFiles], top_summary: dict | None) -> str:
    """A directory of stages (the demo): a table of the stages, and the directory's summary.json."""
    rows = []
    for index, run in enumerate(stages):
        final = {k[len("after/"):]: v for k, v in (run.summary or {}).items() if k.startswith("after/")}
        if not final and run.metrics:
            found = _first_and_last_eval(run.metrics)
            final = found[1] if found else {}
        stages_flops = sum(s.get("flops", 0) for s in ledger_figures(run)[0].values())
        rows.append([Markup(f'<a href="#stage-{index}">{esc(run.name)}</a>'), run.recipe,
                     f"{number(run.last_step)} / {number(run.planned_steps)}",
                     final.get("eval/accuracy_greedy"), final.get("eval/accuracy_sampled"),
                     (run.summary or {}).get("seconds"), stages_flops or None])
    out = [table(["stage", "recipe", "steps logged / planned", "final greedy accuracy", "final sampled accuracy",
                  "seconds", "FLOPs"], rows, numeric={3, 4, 5, 6})]
    if top_summary:
        items = [[key, value_cell(value)] for key, value in top_summary.items()]
        out += ["<h3>summary.json of the directory</h3>", table(["field", "value"], items)]
    return "\n".join(out)


def page(title: str, source: Path, body: str) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>"
            f"<h1>{esc(title)}</h1><p class=\"meta\">posttrain {esc(__version__)} report of "
            f"<code>{esc(str(source))}</code>, written {when}</p>\n{body}\n</main></body></html>\n")
