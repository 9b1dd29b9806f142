"""`posttrain report`: one self-contained HTML page per run directory, and the rollouts sample
the RL recipes keep for it (rollouts.jsonl)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from posttrain import checkpoint as ckpt
from posttrain.cli import RECIPES, main
from posttrain.config import load_config
from posttrain.recipes.rl.batch import TokenSequence
from posttrain.recipes.rl.rollouts import ScoredRound
from posttrain.recipes.rl.samples import RolloutLog, shorten, transcript
from posttrain.report import ReportError, build_report, write_report
from posttrain.report.render import find_chromium, screenshot
from posttrain.run import Run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ["Curves", "Evaluation", "Compute ledger", "Sample rollouts", "Summary", "Config (config.yaml)"]


def _png() -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 1))
    FigureCanvasAgg(figure)
    figure.subplots().plot([0, 1], [0, 1])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


LEDGER = {"compute/rollout/tokens": 6000, "compute/rollout/flops": 6_000_000, "compute/rollout/seconds": 3.0,
          "compute/scoring/tokens": 0, "compute/scoring/flops": 0, "compute/scoring/seconds": 1.0,
          "compute/reference/tokens": 3000, "compute/reference/flops": 1_000_000,
          "compute/reference/seconds": 0.5, "compute/update/tokens": 3000, "compute/update/flops": 3_000_000,
          "compute/update/seconds": 1.5, "compute/total/tokens": 12000, "compute/total/flops": 10_000_000}


def make_rl_run(run_dir: Path, *, name: str = "grpo-try", prompt: str = "3+4=", start_time: float = 1000.0) -> Path:
    """A finished RL run directory as the recipes write it, by hand."""
    run_dir.mkdir(parents=True)
    config = {"model": {"name_or_path": "tiny"}, "algorithm": {"name": "grpo"}, "steps": 30,
              "run": {"name": name, "log_every": 1}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    records = []
    for step in range(1, 31):
        records.append({"step": step, "time": start_time + step, "reward/mean": step / 30, "reward/accuracy": step / 40,
                        "kl/mean": 0.01 * step, "entropy/mean": 2.0 - step / 30, "response/length_mean": 4.0,
                        "train/loss": 1.0 / step, "train/grad_norm": 0.5,
                        **{k: v * step / 30 for k, v in LEDGER.items()}})
        if step % 10 == 0:
            records.append({"step": step, "time": start_time + step, "eval/accuracy_greedy": step / 60,
                            "eval/accuracy_sampled": step / 90})
    _jsonl(run_dir / "metrics.jsonl", records)
    summary = {"recipe": "rl", "algorithm": "grpo", "rl_steps": 30, "seconds": 12.5,
               "model_dir": str(run_dir / "model"),
               "before/eval/accuracy_greedy": 0.1, "before/eval/accuracy_sampled": 0.05,
               "after/eval/accuracy_greedy": 0.5, "after/eval/accuracy_sampled": 0.33, **LEDGER}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    _jsonl(run_dir / "rollouts.jsonl", [
        {"step": step, "group": 0, "sample": i, "prompt": prompt, "completion": f"{7 + i}", "reward": float(i == 0),
         "tokens": 2, "truncated": False} for step in (1, 15, 30) for i in range(2)])
    (run_dir / "eval.json").write_text(json.dumps({
        "model": "runs/grpo-try/model", "reward": "arithmetic", "weights": None, "num_prompts": 20, "samples": 4,
        "seconds": 3.0, "strategies": [
            {"strategy": "greedy", "k": 1, "accuracy": 0.5, "interval": [0.3, 0.7], "tokens_per_problem": 8.0,
             "flops_per_problem": 1.6e7, "num_prompts": 20},
            {"strategy": "pass@k", "k": 4, "accuracy": 0.8, "interval": [0.6, 0.95], "tokens_per_problem": 32.0,
             "flops_per_problem": 6.4e7, "num_prompts": 20}]}))
    (run_dir / "eval.png").write_bytes(_png())
    return run_dir


def images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_a_finished_rl_run_gets_every_section_with_embedded_pngs(tmp_path):
    run_dir = make_rl_run(tmp_path / "grpo-try")
    path, problems = write_report(run_dir)
    assert path == run_dir / "report.html" and problems == []
    page = path.read_text()
    for section in SECTIONS:
        assert f"<h3>{section}</h3>" in page
    pngs = images(page)
    # Six curves (reward, accuracy, KL, entropy, length, loss), the ledger's shares and eval.png.
    assert len(pngs) == 8 and all(png.startswith(PNG_MAGIC) for png in pngs)
    for title in ("Reward", "Accuracy", "KL to the reference", "Entropy", "Response length (tokens)", "Loss"):
        assert f'alt="{title}"' in page
    # The ledger: every stage with its share of the FLOPs (rollout 6/10) and of the seconds (3/6).
    for stage in ("rollout", "scoring", "reference", "update"):
        assert f"<td>{stage}</td>" in page
    assert "60.0%" in page and "50.0%" in page and "from summary.json" in page
    # Evaluation: before/after with the change, and the eval.json table.
    assert "eval/accuracy_greedy" in page and "+0.4" in page
    assert "pass@k" in page and "[0.600, 0.950]" in page
    # Rollouts, the config as YAML, the summary's other fields.
    assert "3+4=" in page and "step 15" in page and "same prompt" in page
    assert "name_or_path: tiny" in page and "rl_steps" in page
    # Self-contained: nothing fetched, no script.
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)


def test_curves_only_for_the_metrics_a_run_logged(tmp_path):
    run_dir = tmp_path / "sft"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("steps: 3\nrun: {name: sft}\n")
    _jsonl(run_dir / "metrics.jsonl", [{"step": s, "time": 1.0, "train/loss": 1.0 / s} for s in (1, 2, 3)])
    page, problems = build_report(run_dir)
    assert problems == [] and 'alt="Loss"' in page and len(images(page)) == 1
    assert 'alt="Reward"' not in page and 'alt="KL to the reference"' not in page
    assert "No rollouts.jsonl" in page and "No summary.json" in page and "still going" in page
    assert "last logged step 3 of 3" in page


def test_malformed_and_partial_files_are_named_and_the_page_still_written(tmp_path):
    run_dir = make_rl_run(tmp_path / "broken")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    (run_dir / "summary.json").write_text('{"recipe": "rl", ')  # cut short
    (run_dir / "config.yaml").write_text("steps: [1, 2\n")
    path, problems = write_report(run_dir)
    page = path.read_text()
    assert any("metrics.jsonl, line 2: not JSON" in p for p in problems)
    assert any("summary.json: not JSON" in p for p in problems)
    assert any("config.yaml: not YAML" in p for p in problems)
    assert "No curves:" in page and "metrics.jsonl, line 2" in page
    assert "steps: [1, 2" in page  # the unparsable config still shown as text
    for section in SECTIONS:
        assert f"<h3>{section}</h3>" in page


def test_a_last_line_cut_short_is_left_out_with_a_note(tmp_path):
    run_dir = make_rl_run(tmp_path / "running")
    (run_dir / "summary.json").unlink()
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 31, "reward/me')
    with open(run_dir / "rollouts.jsonl", "a") as handle:
        handle.write('{"step": 31, "prom')
    page, problems = build_report(run_dir)
    assert problems == []
    assert "cut short" in page and 'alt="Reward"' in page
    # Without summary.json the ledger comes from the latest metrics line that has it.
    assert "from metrics.jsonl, step 30 (no summary.json yet)" in page
    assert "latest evaluation (step 30)" in page


def test_text_from_the_run_is_escaped(tmp_path):
    evil = '<script>alert("x")</script> & <b>bold</b>'
    run_dir = make_rl_run(tmp_path / "evil", name=evil, prompt=evil)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["note"] = evil
    (run_dir / "summary.json").write_text(json.dumps(summary))
    page, _ = build_report(run_dir)
    assert "<script" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page


def test_not_a_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="no such run directory"):
        build_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="not a run directory"):
        build_report(tmp_path / "empty")
    with pytest.raises(ReportError, match="no eval.json"):
        build_report(make_rl_run(tmp_path / "ok"), [tmp_path / "empty"])


def test_a_demo_directory_gets_one_page_with_a_section_per_stage_in_order(tmp_path):
    demo = tmp_path / "demo"
    make_rl_run(demo / "dapo", name="dapo", start_time=2000.0)
    make_rl_run(demo / "sft", name="sft", start_time=1000.0)
    (demo / "summary.json").write_text(json.dumps({"accuracy_before": 0.2, "accuracy_after": 0.45}))
    eval_dir = make_rl_run(tmp_path / "elsewhere")
    path, problems = write_report(demo, tmp_path / "out" / "demo.html", [eval_dir])
    page = path.read_text()
    assert problems == [] and page.count('<section class="run"') == 3  # two stages and the --eval results
    assert page.index('id="stage-0"><h2>sft') < page.index('id="stage-1"><h2>dapo')
    assert "accuracy_after" in page and 'href="#stage-1"' in page and "posttrain eval results" in page


def test_the_cli_writes_the_page_and_report_needs_no_example_config(tmp_path, capsys):
    run_dir = make_rl_run(tmp_path / "cli")
    assert main(["report", str(run_dir), "--out", str(tmp_path / "page.html")]) == 0
    assert "report:" in capsys.readouterr().out and (tmp_path / "page.html").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert "no such run directory" in capsys.readouterr().err
    # `report` takes a directory, not a config: it is no recipe, so test_examples asks no example of it.
    assert "report" not in RECIPES


# ------------------------------------------------------------------------------ rollouts.jsonl


class _Run:
    def __init__(self):
        self.logged = []

    def log_rollouts(self, step, records):
        self.logged.append((step, records))


def _round(n: int, texts: list[str]) -> ScoredRound:
    sequences = [TokenSequence([1, 2, 3], [0, 1, 1], [0.0, -0.5, -0.5], truncated=i == 1) for i in range(n)]
    return ScoredRound(sequences, [1.0, None, 0.0, 0.5][:n], [0, 0, 1, 1][:n], texts=texts)


def test_the_rollout_log_keeps_the_first_samples_of_logged_steps_only():
    run = _Run()
    log = RolloutLog(run, per_step=3, log_every=2, steps=5)
    rows = [{"prompt": "1+1="}, {"prompt": [{"role": "user", "content": "2+2="}]}]
    for step in range(5):
        log.record(step, rows, _round(4, ["2", "3", "4", "x"]), [10, 10, 11, 11])
    assert [step for step, _ in run.logged] == [2, 4, 5]  # every 2 steps and the last
    records = run.logged[0][1]
    assert [(r["group"], r["sample"]) for r in records] == [(10, 0), (10, 1), (11, 0)]
    assert [r["reward"] for r in records] == [1.0, None, 0.0]
    assert records[1]["truncated"] and records[0]["tokens"] == 2
    assert records[2]["prompt"] == "[user] 2+2=" and records[2]["completion"] == "4"
    RolloutLog(run, per_step=0, log_every=1, steps=5).record(0, rows, _round(4, []), [0, 0, 1, 1])
    assert len(run.logged) == 3


def test_texts_are_shortened_at_both_ends_and_conversations_rendered():
    text = "a" * 3000 + "THE END"
    short = shorten(text, 300)
    assert len(short) < 330 and short.endswith("THE END") and "characters cut" in short
    assert shorten("short", 300) == "short"
    chat = transcript([{"role": "assistant", "content": "", "tool_calls": [{"name": "query"}]},
                       {"role": "tool", "name": "query", "content": "42"}])
    assert chat == '[assistant] tool call: {"name": "query"}\n[tool query] 42'


def test_an_episode_is_kept_as_its_conversation_from_the_first_model_turn():
    from posttrain.envs.base import Span, Trajectory
    from posttrain.recipes.rl.multi_turn import episode_text

    messages = [{"role": "system", "content": "tools..."}, {"role": "user", "content": "sum column B"},
                {"role": "assistant", "content": "<tool_call>{...}</tool_call>"},
                {"role": "tool", "name": "query", "content": "42"}, {"role": "assistant", "content": "42"}]
    spans = [Span("prompt", 0, 5, 0), Span("model", 5, 8, 2), Span("env", 8, 10, 3), Span("model", 10, 11, 4)]
    text = episode_text(Trajectory(row={}, messages=messages, token_ids=list(range(11)), spans=spans))
    assert text == "[assistant] <tool_call>{...}</tool_call>\n[tool query] 42\n[assistant] 42"


def test_resume_drops_rollouts_logged_after_the_checkpoint(tmp_path):
    def start(**kwargs):
        return Run.start(tmp_path, "r", {"x": 1}, report_to=[], console=Console(file=io.StringIO()), **kwargs)

    with start() as run:
        for step in (1, 2, 3):
            run.log(step, {"loss": 1.0})
            run.log_rollouts(step, [{"prompt": "p", "reward": 1.0}])
        checkpoint = run.checkpoints_dir / ckpt.checkpoint_name(2)
        checkpoint.mkdir(parents=True)
        (checkpoint / ckpt.TRAINER_STATE).write_text(json.dumps({"step": 2}))
    with open(run.rollouts_path, "a") as handle:
        handle.write('{"step": 4, "pro')  # killed mid-line
    with start(resume=True) as run:
        run.log_rollouts(3, [{"prompt": "again", "reward": 0.0}])
    steps = [json.loads(line)["step"] for line in run.rollouts_path.read_text().splitlines()]
    assert steps == [1, 2, 3]


# ------------------------------------------------------------------------- a real run, rendered


@pytest.mark.integration
def test_a_tiny_rl_run_writes_rollouts_and_gets_reported(tmp_path):
    from posttrain.recipes import rl

    cfg = load_config(rl.RLConfig, None, [
        "model.name_or_path=tiny", "model.device=cpu", f"run.output_dir={tmp_path}", "run.name=rl",
        "run.report_to=[]", "run.save_every=1000", "run.log_every=2", "data.arithmetic.max_operand=9",
        "data.arithmetic.num_train=40", "data.arithmetic.num_eval=4", "data.max_length=32", "eval.num_samples=4",
        "eval.reward=arithmetic", "rollout.max_new_tokens=4", "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=2", "rollout.log_samples=3", "micro_batch_size=4", "steps=3",
        "algorithm.kl_coef=0.01"])
    rl.train(cfg)
    run_dir = tmp_path / "rl"
    records = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 2, 2, 3, 3, 3]  # logged steps only, 3 each
    assert all(r["reward"] in (0.0, 1.0) and r["prompt"] and "completion" in r for r in records)
    assert [r["group"] for r in records[:3]] == [0, 0, 1]
    # The same steps as the training lines of metrics.jsonl (both follow training.loop.logged_step).
    trained = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if "reward/mean" in line]
    assert sorted({r["step"] for r in records}) == trained
    path, problems = write_report(run_dir)
    page = path.read_text()
    assert problems == []
    for stage in ("rollout", "scoring", "reference", "update", "eval"):
        assert f"<td>{stage}</td>" in page
    assert 'alt="Reward"' in page and 'alt="Accuracy"' in page and 'alt="KL to the reference"' in page
    assert all(png.startswith(PNG_MAGIC) for png in images(page))
    assert "recipe <b>rl</b>" in page and "finished" in page


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Chromium (apt-get install chromium)")
def test_the_page_renders_headless_to_a_non_blank_screenshot(tmp_path):
    run_dir = make_rl_run(tmp_path / "shot")
    path, _ = write_report(run_dir)
    png, whole = screenshot(path, tmp_path / "shot.png", browser=find_chromium(), timeout_s=120)
    from matplotlib import image as mpimg

    pixels = mpimg.imread(png)[:, :, :3]
    assert whole and pixels.shape[1] == 1280 and pixels.shape[0] > 1500
    # Text, tables and plots: a good share of the pixels is not background (or white).
    background = pixels[-1, 0]
    ink = (np.abs(pixels - background).max(axis=2) > 0.1) & (pixels.min(axis=2) < 0.95)
    assert ink.mean() > 0.03, ink.mean()
    # The plots are there: blue curve pixels (matplotlib's C0) in the upper part of the page.
    blue = (np.abs(pixels - np.array([0.12, 0.47, 0.71])).max(axis=2) < 0.08)
    assert blue.sum() > 500
