"""The RL loop with the sandboxed code reward survives hostile completions.

The tiny model cannot write Python, so a scripted engine stands in for the sampler: each
group holds one correct solution and hostile snippets (infinite loop, fork bomb, huge
allocation, writes outside the sandbox, network access, killing the parent). The full
`posttrain rl` loop must score every hostile one 0 and the correct one 1, keep training
(finite loss, weights change), checkpoint, and leave the host untouched.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import torch

from posttrain.config import load_config
from posttrain.engines.base import Completion
from posttrain.engines.factory import ENGINES
from posttrain.recipes import rl
from posttrain.recipes.rl.config import RLConfig
from posttrain.verifiers.code import code_reward
from posttrain.verifiers.sandbox import SandboxLimits

pytestmark = pytest.mark.integration  # trains the tiny model

CORRECT = "```python\ndef add(a, b):\n    return a + b\n```"


def hostile_snippets(marker: Path) -> list[str]:
    return [
        "def add(a, b):\n    while True:\n        pass",
        "import os\nwhile True:\n    os.fork()",
        "x = bytearray(8 * 1024 ** 3)\ndef add(a, b):\n    return a + b",
        f"open({str(marker)!r}, 'w').write('escaped')\ndef add(a, b):\n    return a + b",
        "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\ndef add(a, b):\n    return a + b",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef add(a, b):\n    return a + b",
        # No add() after it: the sandbox makes the walk harmless (and, with Landlock, quick), so a
        # correct add() here would rightly score 1.
        "import shutil\nshutil.rmtree('/', ignore_errors=True)",
    ]


def quick_code_reward(prompt, completion, **row):
    """The built-in code reward with short limits, so the hostile loops cost seconds, not minutes."""
    return code_reward(prompt, completion, limits=SandboxLimits(timeout_s=3.0), per_test_timeout_s=0.5, **row)


class ScriptedEngine:
    """Engine protocol double: every prompt gets the same scripted completions, in order."""

    def __init__(self, model, tokenizer, texts: list[str]):
        self.tokenizer = tokenizer
        self.texts = texts

    def load_weights(self, model) -> None:
        pass

    def shares_weights(self, model) -> bool:
        return False  # it does not sample from the model: its (scripted) log-probs are the old ones

    def close(self) -> None:
        pass

    def generate(self, prompt_ids, sampling):
        groups = []
        for index, _ in enumerate(prompt_ids):
            group = []
            for sample in range(sampling.n):
                text = self.texts[sample % len(self.texts)]
                ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
                group.append(Completion(index, ids, [0.0] * len(ids), text, "stop"))
            groups.append(group)
        return groups


def test_rl_with_the_code_reward_survives_hostile_completions(tmp_path, monkeypatch):
    marker = Path("/tmp") / f"posttrain-escape-{uuid.uuid4().hex}"
    texts = [CORRECT] + hostile_snippets(marker)
    monkeypatch.setitem(ENGINES, "hf", lambda model, tokenizer: ScriptedEngine(model, tokenizer, texts))
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Write add(a, b), try {i}.", "tests": tests}) + "\n"
                               for i in range(4)))
    cfg = load_config(RLConfig, None, [
        f"data.train={prompts}", f"data.eval={prompts}", "model.device=cpu",
        "reward.functions=[test_rl_code_reward:quick_code_reward]",
        "eval.reward=test_rl_code_reward:quick_code_reward", "eval.num_samples=1",
        "rollout.prompts_per_step=1", f"rollout.samples_per_prompt={len(texts)}", "rollout.max_new_tokens=64",
        "data.max_length=256", f"micro_batch_size={len(texts)}", "steps=2", "optim.lr=1e-3",
        f"run.output_dir={tmp_path}", "run.name=code", "run.report_to=[]", "run.save_every=1",
    ])
    before = {k: v.clone() for k, v in _initial_weights(cfg).items()}

    summary = rl.train(cfg)

    rows = [json.loads(line) for line in (tmp_path / "code" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 2
    for row in steps:
        # One correct completion out of len(texts): every hostile one scored exactly 0.
        assert row["reward/mean"] == 1 / len(texts)
        assert row["rewards/test_rl_code_reward:quick_code_reward/raised"] == 0
        assert torch.isfinite(torch.tensor(row["train/loss"]))
    assert summary["after/eval/accuracy_greedy"] == 1.0  # greedy eval takes the first script: the correct one
    assert (tmp_path / "code" / "checkpoints").is_dir()
    assert not marker.exists(), "a snippet wrote outside its sandbox"
    after = _saved_weights(summary["model_dir"])
    assert any(not torch.equal(before[k], after[k]) for k in before), "the trainer stopped updating"
    os.kill(os.getpid(), 0)  # and this process (the snippets' grandparent) is alive


def _initial_weights(cfg: RLConfig) -> dict[str, torch.Tensor]:
    from posttrain.models.build import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(cfg.model)
    return model.state_dict()


def _saved_weights(model_dir: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
