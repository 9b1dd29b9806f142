"""SFT teaches the tiny model held-out arithmetic it could not do before (the recipe learns, not just runs)."""

import json

import pytest
import yaml

from posttrain.config import load_config
from posttrain.recipes import sft

pytestmark = pytest.mark.integration


def test_sft_raises_held_out_accuracy_and_fills_the_run_directory(tmp_path):
    cfg = load_config(sft.SFTConfig, "examples/sft_arithmetic.yaml", [
        f"run.output_dir={tmp_path}", "run.name=learns", "steps=600", "run.eval_every=300",
        "run.save_every=300", "data.arithmetic.max_operand=29", "data.arithmetic.num_train=800",
        "data.arithmetic.num_eval=80", "eval.num_samples=80",
    ])
    summary = sft.train(cfg)

    # 0-29 addition: 900 problems, the 80 held-out ones never trained on. Chance is ~1/59.
    assert summary["before/eval/accuracy_greedy"] <= 0.05
    assert summary["after/eval/accuracy_greedy"] >= 0.5, summary
    assert summary["after/eval/accuracy_sampled"] > summary["before/eval/accuracy_sampled"] + 0.2
    assert summary["after/eval/loss"] < summary["before/eval/loss"] / 3

    run_dir = tmp_path / "learns"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["steps"] == 600
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 600
    # The compute ledger: SFT tokens cost 6·N FLOPs each (forward 2·N + backward 4·N).
    last = [r for r in rows if "compute/sft/tokens" in r][-1]
    assert last["compute/sft/flops"] / last["compute/sft/tokens"] == pytest.approx(6 * 1_116_288, rel=0.05)
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "step-00000300" / "trainer_state.json").is_file()
    assert (run_dir / "model" / "config.json").is_file() and (run_dir / "model" / "tokenizer.json").is_file()
    assert (run_dir / "sft_curves.png").stat().st_size > 10_000
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 600
