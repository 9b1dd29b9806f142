"""The RL loops with an engine that does not share the trainer's weights, and with gradient
checkpointing: the bugs the recipe reshape fixed, on the untrained tiny model (seconds)."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.config import load_config
from posttrain.engines.factory import ENGINES
from posttrain.engines.hf import HFEngine
from posttrain.recipes import rl

pytestmark = pytest.mark.integration


class SeparateEngine(HFEngine):
    """An HF engine over its own copy of the policy: what a vLLM or Ray engine looks like to the loop."""

    made: list["SeparateEngine"] = []

    def __init__(self, model, tokenizer):
        super().__init__(copy.deepcopy(model), tokenizer)
        self.syncs = 0
        SeparateEngine.made.append(self)

    def load_weights(self, source):
        self.syncs += 1
        super().load_weights(source)


def overrides(tmp_path, name, *extra):
    return [
        "model.name_or_path=tiny", "model.device=cpu", f"run.output_dir={tmp_path}", f"run.name={name}",
        "run.report_to=[]", "run.save_every=2", "data.arithmetic.max_operand=9", "data.arithmetic.num_train=60",
        "data.arithmetic.num_eval=4", "data.max_length=32", "eval.num_samples=4", "eval.reward=arithmetic",
        "rollout.max_new_tokens=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
        "micro_batch_size=4", "optim.lr=1e-3", "steps=3", *extra,
    ]


def logged(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_a_separate_engine_gets_the_trained_weights_after_every_update_and_a_resume(tmp_path, monkeypatch, algorithm):
    """Before the fix PPO never called `engine.load_weights`, so a separate engine sampled from the
    initial weights forever. Each loop syncs once at the start (after a possible resume) and after
    every update; at the end the engine's weights are the saved policy's."""
    SeparateEngine.made.clear()
    monkeypatch.setitem(ENGINES, "separate", SeparateEngine)
    extra = ["rollout.engine=separate", f"algorithm.name={algorithm}"]
    if algorithm == "ppo":
        extra += ["rollout.samples_per_prompt=1", "micro_batch_size=4"]
    summary = rl.train(load_config(rl.RLConfig, None, overrides(tmp_path, algorithm, *extra)))
    engine = SeparateEngine.made[-1]
    assert engine.syncs == 1 + 3
    saved = AutoModelForCausalLM.from_pretrained(summary["model_dir"]).state_dict()
    for key, value in engine.model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    rows = [r for r in logged(tmp_path / algorithm) if "train/loss" in r]
    # A separate engine's own log-probs are the old ones; its gap to the trainer's is logged.
    assert all("train/sampler_logprob_gap" in r for r in rows)

    # Resume from the step-2 checkpoint: the engine starts from the restored weights, not the initial ones.
    resumed = load_config(rl.RLConfig, None, overrides(tmp_path, algorithm, *extra) + ["run.resume=true"])
    rl.train(resumed)
    assert SeparateEngine.made[-1].syncs == 1 + 1


def test_the_sampler_gap_is_logged_with_one_update_per_batch_and_is_tiny_in_process(tmp_path):
    rl.train(load_config(rl.RLConfig, None, overrides(tmp_path, "gap", "updates_per_batch=1")))
    rows = [r for r in logged(tmp_path / "gap") if "train/loss" in r]
    assert rows and all(0 <= r["train/sampler_logprob_gap"] < 1e-4 for r in rows), rows


def test_gradient_checkpointing_is_active_in_the_rl_update(tmp_path, monkeypatch):
    """transformers checkpoints a decoder layer only in train mode. Before the fix the policy
    stayed in eval(), so `model.gradient_checkpointing=true` never reached the checkpoint
    function; now every update micro-batch goes through it (and sampling, in eval mode, never)."""
    from posttrain.recipes.rl import grpo

    calls = []
    load = grpo.load_model_and_tokenizer

    def load_and_watch(cfg):
        model, tokenizer = load(cfg)
        layer = model.model.layers[0]
        checkpoint = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, **k: calls.append(torch.is_grad_enabled()) or checkpoint(*a, **k)
        return model, tokenizer

    monkeypatch.setattr(grpo, "load_model_and_tokenizer", load_and_watch)
    rl.train(load_config(rl.RLConfig, None, overrides(tmp_path, "ckpt", "model.gradient_checkpointing=true",
                                                      "steps=2")))
    update_forwards = 2 * (4 * 2 // 4)  # steps × micro-batches per step
    assert calls == [True] * update_forwards
