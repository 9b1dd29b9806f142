"""Multi-turn RL learns: GRPO on whole tool-use episodes raises the reward of a task that needs two turns.

The task is a `ToolEnvironment` with one tool. "Look up the secret." — each row hides one of
seven words, the `lookup` tool is the only way to it, and the episode's reward (a trajectory-level
reward function of its final answer) is 1 exactly when the answer is that word. So success takes
two model turns: a Hermes tool call (``<tool_call>{"name": "lookup", "arguments": {}}</tool_call>``),
the tool's answer, then the word as a plain message. Answering at once scores 0.

The policy is SFT-warmed (250 steps) on expert episodes with label noise: 40 % of the
demonstrations skip the tool and answer "unknown", so the SFT model calls the tool in only part of
its sampled episodes but reads the tool's answer when it does. The reward arrives at the end of
the second turn, but the behaviour that must change is in the first: RL has to carry the final
answer's credit back over the tool's turn to the decision to call it. The checks: reward over the
last ten steps is above the first five's, and so is the number of tool calls per episode (a
multi-turn measure, from the episodes' own counters in metrics.jsonl); and in the first five
steps the episodes whose lookup ran mostly succeed, so that a model that cannot read the tool's
answer fails as such instead of passing by merely dropping "unknown".

Two concessions to a from-scratch 1 M-parameter model on one thread (posttrain/envs/copying.py
explains why copying comes late to such a model):
- the tool repeats the word on eight lines. Returned once, the word was not read after 300-500
  SFT steps (the answer stayed at chance among the words); repeated, it is read after 150-200.
  A key argument was tried too (`lookup(key)` over a per-row table): copying the key from the
  prompt into the call formed only after ~400 SFT steps, and without it a valid call was worth
  no more than a malformed one, which RL then drifted to.
- the tool's schema is not shown (the environment lists no schemas, so the chat template adds
  no tools block, which in the tiny tokenizer is ~170 tokens): SFT teaches the call. Schema
  rendering is covered by the spreadsheet plumbing tests.

Measured with `tests/seed_sweep.py --seeds 0-9` on the 2-core AVX512-BF16 EPYC, shared with
other jobs (load ~3.5), seeds 0-9: reward last10 - first5 = 0.22 / 0.29 / 0.22 / 0.22 / 0.17 /
0.38 / 0.24 / 0.42 / 0.21 / 0.09 (threshold 0.05), from first5 0.31-0.80; tool calls per episode
last10 - first5 = 0.27 / 0.24 / 0.21 / 0.27 / 0.17 / 0.39 / 0.22 / 0.43 / 0.23 / 0.13 (threshold
0.05); success when the lookup ran, first5 = 0.55-1.0 (threshold 0.3; chance is 1/7). The tool
error rate and the held-out sampled success are recorded, not checked. 70-100 s per seed there.
At lr 1e-3 the policy broke its call format within two steps; 3e-4 is the RL rate of
tests/integration/test_rl_learns.py.
"""

import json
import random

import pytest

from posttrain.agents.tool_env import ToolEnvironment
from posttrain.agents.tools import tool_from_function
from posttrain.config import load_config
from posttrain.envs.registry import EnvironmentSpec
from posttrain.recipes import rl, sft
from posttrain.recipes.rl import multi_turn

pytestmark = pytest.mark.integration

SOURCE = "toy:lookup"
VALUES = ("Paris", "Lagos", "Tokyo", "Lima", "Sam", "Ben", "Omar")  # one token each in the tiny tokenizer
SKIP_ANSWER = "unknown"
SKIP_NOISE = 0.4  # share of the SFT demonstrations that answer without the tool
REPEAT = 8  # lines of the tool's answer, each the secret (see the module docstring)
SFT_STEPS, RL_STEPS, EPISODES_PER_STEP = 250, 30, 32
FIRST, LAST = 5, 10  # steps compared: RL starts moving the policy within a few steps


def task_rows(n, seed):
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": "Look up the secret."}], "value": rng.choice(VALUES)}
            for _ in range(n)]


def lookup_rows(source, split, seed):
    if source != SOURCE:
        return None
    return task_rows(400, seed) if split == "train" else task_rows(40, seed + 1000)


def tool_output(value):
    return "\n".join([value] * REPEAT)


TOOL_CALL = '<tool_call>\n{"name": "lookup", "arguments": {}}\n</tool_call>'


def expert_messages(row, rng, skip):
    """The expert's episode (look the secret up, answer with it); with probability `skip` an
    answer without the tool."""
    if rng.random() < skip:
        return [*row["prompt"], {"role": "assistant", "content": SKIP_ANSWER}]
    return [*row["prompt"], {"role": "assistant", "content": TOOL_CALL},
            {"role": "tool", "name": "lookup", "content": tool_output(row["value"])},
            {"role": "assistant", "content": row["value"]}]


class UnlistedTools(ToolEnvironment):
    """A ToolEnvironment whose tools run but are not shown in the prompt (see the module docstring)."""

    @property
    def tool_schemas(self):
        return None


def make_env(row):
    def tools(r):
        def lookup() -> str:
            """This episode's secret."""
            return tool_output(r["value"])

        return [tool_from_function(lookup)]

    # No finish tool: a plain message is the final answer.
    return UnlistedTools(prompt=lambda r: r["prompt"], tools=tools, finish_tool=None,
                         score=lambda r, answer, trajectory: float((answer or "").strip() == r["value"]))


def lookup_spec(env_cfg):
    return EnvironmentSpec(make=make_env, rows=lookup_rows)


def exact_value(prompt, completion, value, **row):
    return float(completion.strip() == value)


def warm_sft(tmp_path, seed):
    rng = random.Random(seed)
    data = tmp_path / "experts.jsonl"
    data.write_text("".join(json.dumps({"messages": expert_messages(row, rng, SKIP_NOISE)}) + "\n"
                            for row in task_rows(800, seed + 2000)))
    return sft.train(load_config(sft.SFTConfig, None, [
        "model.name_or_path=tiny", "model.device=cpu", f"data.train={data}", "data.max_length=64",
        "data.eval_fraction=0.02", f"run.output_dir={tmp_path}", "run.name=warm", "run.report_to=[]",
        f"run.seed={seed}", f"steps={SFT_STEPS}", "sequences_per_step=16", "micro_batch_size=16",
        "optim.lr=3e-3", "optim.schedule=constant", "optim.warmup_steps=10", "run.save_every=1000",
        "run.eval_every=1000"]))


def rl_overrides(tmp_path, model_dir, seed):
    return [
        f"model.name_or_path={model_dir}", "model.device=cpu", f"run.output_dir={tmp_path}", "run.name=rl",
        "run.report_to=[]", "run.save_every=1000", f"run.seed={seed}", f"data.train={SOURCE}",
        "data.max_length=64", "env.name=test_rl_multi_turn_learns:lookup_spec", "env.max_turns=3",
        "reward.functions=[test_rl_multi_turn_learns:exact_value]",
        "eval.reward=test_rl_multi_turn_learns:exact_value", "eval.num_samples=20", "rollout.max_new_tokens=24",
        "rollout.prompts_per_step=4", "rollout.samples_per_prompt=8", "micro_batch_size=32",
        "algorithm.name=grpo", "algorithm.kl_coef=0", "optim.lr=3e-4", f"steps={RL_STEPS}"]


def answered_by_the_tool(trajectory):
    """Whether the episode's lookup ran (a valid call answered with the secret, not an error)."""
    return any(m["role"] == "tool" and m.get("name") == "lookup" and not m["content"].startswith("Error")
               for m in trajectory.messages)


def test_multi_turn_rl_learns_to_call_the_tool_it_needs(tmp_path, learning, monkeypatch):
    played = []  # every training episode, in order (evaluation episodes are not trained on)
    original = multi_turn.trajectory_sequence
    monkeypatch.setattr(multi_turn, "trajectory_sequence", lambda t: played.append(t) or original(t))
    warm = warm_sft(tmp_path, learning.seed)
    summary = rl.train(load_config(rl.RLConfig, None, rl_overrides(tmp_path, warm["model_dir"], learning.seed)))
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    evals = [r for r in rows if "eval/accuracy_sampled" in r]
    assert len(steps) == RL_STEPS and summary["rl_steps"] == RL_STEPS
    assert len(played) == RL_STEPS * EPISODES_PER_STEP

    def gain(key):  # mean over the last LAST steps minus the first FIRST (32 episodes a step)
        return (sum(r.get(key, 0.0) for r in steps[-LAST:]) / LAST
                - sum(r.get(key, 0.0) for r in steps[:FIRST]) / FIRST)

    def read_rate(episodes):  # success among the episodes whose lookup ran: the tool's answer is read
        looked_up = [t.reward for t in episodes if answered_by_the_tool(t)]
        return sum(looked_up) / max(len(looked_up), 1)

    early = played[:FIRST * EPISODES_PER_STEP]
    with learning.checks() as check:
        check("success when the lookup ran, first5", read_rate(early), ">", 0.3)
        check("reward last10 - first5", gain("reward/mean"), ">", 0.05)
        check("tool calls per episode last10 - first5", gain("episodes/tool_calls_mean"), ">", 0.05)
    learning.record("reward first5", sum(r["reward/mean"] for r in steps[:FIRST]) / FIRST)
    learning.record("episodes whose lookup ran, first5", sum(map(answered_by_the_tool, early)) / len(early))
    learning.record("success when the lookup ran, last10", read_rate(played[-LAST * EPISODES_PER_STEP:]))
    learning.record("tool error rate last10 - first5", gain("episodes/tool_error_rate"))
    learning.record("held-out sampled success gain",
                    evals[-1]["eval/accuracy_sampled"] - evals[0]["eval/accuracy_sampled"])
