"""`posttrain rl` and `posttrain pivotrl` with `env.name: spreadsheet` run end to end on the
untrained tiny agent model (seconds): whole tool-use episodes in training and evaluation, the
expert's turns profiled and trained on. Learning on this environment is measured by
`examples/agentic/compare.py` (docs/results/agentic/), not here."""

import json

import pytest

from posttrain.config import load_config
from posttrain.recipes import pivotrl, rl

pytestmark = pytest.mark.integration

COMMON = ["model.name_or_path=tiny:qwen2:agent", "model.device=cpu", "run.report_to=[]", "run.save_every=1000",
          "data.train=builtin:spreadsheet", "data.max_length=1024", "env.name=spreadsheet",
          "env.options={num_train: 4, num_eval: 2}", "env.max_turns=3", "eval.num_samples=2",
          "eval.reward=spreadsheet", "reward.functions=[spreadsheet]", "rollout.max_new_tokens=12",
          "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "micro_batch_size=4", "steps=2"]


def logged(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rl_on_spreadsheet_episodes(tmp_path):
    summary = rl.train(load_config(rl.RLConfig, None, COMMON + [f"run.output_dir={tmp_path}", "run.name=rl"]))
    steps = [r for r in logged(tmp_path / "rl") if "reward/mean" in r]
    assert len(steps) == 2 and summary["rl_steps"] == 2
    for r in steps:
        assert r["episodes/count"] == 4 and 1 <= r["episodes/turns_mean"] <= 3
        assert r["episodes/rollout_turns"] == r["episodes/turns_mean"] * 4
        assert sum(r[f"episodes/stop_{k}"] for k in ("done", "max_turns", "token_budget", "context")) == pytest.approx(1)
        assert "episodes/env/tool_calls" in r and "episodes/env/parse_errors" in r


def test_pivotrl_on_the_spreadsheet_experts_turns(tmp_path):
    summary = pivotrl.train(load_config(pivotrl.PivotRLConfig, None, COMMON + [
        f"run.output_dir={tmp_path}", "run.name=pivot", "pivot.samples_per_candidate=2", "pivot.reprofile_at=null"]))
    rows = logged(tmp_path / "pivot")
    profile = next(r for r in rows if "pivots/candidates" in r)
    # Easy tasks: list_sheets, describe_sheet, query, answer = 4 expert turns per task.
    assert profile["pivots/candidates"] == 4 * 4 == summary["candidates"]
    assert summary["profile_rollout_turns"] == 16 * 2
    evals = [r for r in rows if "eval/accuracy_greedy" in r]
    assert evals and "eval/episodes_greedy/turns_mean" in evals[-1]
