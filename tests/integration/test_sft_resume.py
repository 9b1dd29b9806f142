"""A killed SFT run resumed from its last checkpoint reproduces the uninterrupted run's losses."""

import json

import pytest

from posttrain.config import load_config
from posttrain.recipes import sft
from simulated_kill import killed_after_step

pytestmark = pytest.mark.integration

OVERRIDES = [
    "steps=6", "sequences_per_step=8", "micro_batch_size=4", "run.save_every=3", "run.log_every=1",
    "data.arithmetic.num_train=64", "data.arithmetic.num_eval=8", "data.max_length=32",
    "optim.lr=3e-3", "optim.warmup_steps=2", "model.device=cpu", "run.report_to=[]",
]


def train_losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in lines if "train/loss" in row}


def test_resumed_run_reproduces_uninterrupted_losses(tmp_path, monkeypatch):
    straight = load_config(sft.SFTConfig, None, OVERRIDES + [f"run.output_dir={tmp_path}", "run.name=straight"])
    sft.train(straight)
    expected = train_losses(tmp_path / "straight")
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]

    # Kill the second run after it has logged step 5: past its step-3 checkpoint, before the end.
    killed = load_config(sft.SFTConfig, None, OVERRIDES + [f"run.output_dir={tmp_path}", "run.name=killed"])
    with killed_after_step(monkeypatch, 5, "train/loss"):
        sft.train(killed)
    assert (tmp_path / "killed" / "checkpoints" / "step-00000003").is_dir()

    # Starting again without resume refuses to clobber the run; with resume it continues from step 3.
    with pytest.raises(FileExistsError, match="resume=true"):
        sft.train(killed)
    resumed = load_config(sft.SFTConfig, None, OVERRIDES + [f"run.output_dir={tmp_path}", "run.name=killed",
                                                             "run.resume=true"])
    summary = sft.train(resumed)
    got = train_losses(tmp_path / "killed")
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # steps 4-5 logged before the kill were replaced, not duplicated
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    assert (tmp_path / "killed" / "model" / "config.json").is_file()
    assert summary["steps"] == 6
