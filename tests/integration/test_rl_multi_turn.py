"""`posttrain rl` with `env.name` set trains on whole episodes: the plumbing of multi-turn RL on
the untrained tiny model and a toy environment (seconds). The spreadsheet environment's own
learning test lives with it."""

import json

import pytest

from posttrain.config import load_config
from posttrain.envs.base import StepResult
from posttrain.recipes import rl
from posttrain.recipes.rl import multi_turn

pytestmark = pytest.mark.integration


CREATED: list = []


class TwoTurnEnv:
    """Answers the model's first turn with a 'tool' message, ends the episode after the second."""

    def __init__(self):
        self.turns = 0
        self.final_answer = None
        self.stats = {"tool_calls": 0}
        self.closed = 0
        CREATED.append(self)

    def close(self):
        self.closed += 1

    def reset(self, row):
        return list(row["prompt"])

    def step(self, messages):
        self.turns += 1
        if self.turns == 2:
            self.final_answer = messages[-1]["content"]
            return StepResult(observation=[], done=True)
        self.stats["tool_calls"] += 1
        return StepResult(observation=[{"role": "tool", "name": "probe", "content": "again"}], done=False)


def two_turn_factory(env_cfg):
    assert env_cfg.options == {"flavour": "toy"}
    return lambda row: TwoTurnEnv()


def starts_with_digit(prompt, completion, **row):
    return 1.0 if completion.strip()[:1].isdigit() else 0.0


def test_rl_trains_on_two_turn_episodes_with_the_loss_on_model_turns_only(tmp_path, monkeypatch):
    seen = []
    original = multi_turn.trajectory_sequence

    def spy(trajectory):
        sequence = original(trajectory)
        seen.append((trajectory, sequence))
        return sequence

    monkeypatch.setattr(multi_turn, "trajectory_sequence", spy)
    cfg = load_config(rl.RLConfig, None, [
        "model.name_or_path=tiny", "model.device=cpu", f"run.output_dir={tmp_path}", "run.name=mt",
        "run.report_to=[]", "run.save_every=1000", "data.arithmetic.max_operand=9", "data.arithmetic.num_train=40",
        "data.arithmetic.num_eval=4", "data.max_length=32", "eval.num_samples=4",
        "eval.reward=test_rl_multi_turn:starts_with_digit", "reward.functions=[test_rl_multi_turn:starts_with_digit]",
        "rollout.max_new_tokens=6", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
        "micro_batch_size=8", "optim.lr=1e-3", "steps=2",
        "env.name=test_rl_multi_turn:two_turn_factory", "env.options={flavour: toy}", "env.max_turns=4",
    ])
    CREATED.clear()
    summary = rl.train(cfg)
    assert CREATED and all(env.closed == 1 for env in CREATED)  # every episode's environment, once
    rows = [json.loads(line) for line in (tmp_path / "mt" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["episodes/count"] == 8 and r["episodes/rollout_turns"] == 16 and r["episodes/generate_calls"] == 2
        assert r["episodes/turns_mean"] == 2.0 and r["episodes/stop_done"] == 1.0
        assert r["episodes/tool_calls_mean"] == 1.0
        assert r["train/update_skipped"] == 0.0 and "train/sampler_logprob_gap" in r
    evals = [r for r in rows if "eval/accuracy_greedy" in r]
    assert evals and evals[-1]["eval/episodes_greedy/turns_mean"] == 2.0
    assert summary["rl_steps"] == 2
    # Every trained sequence: prompt, model turn, env turn, model turn; the mask is 1 exactly on the model spans.
    assert len(seen) == 16
    for trajectory, sequence in seen:
        assert [s.source for s in trajectory.spans] == ["prompt", "model", "env", "model"]
        model = {i for s in trajectory.spans if s.source == "model" for i in range(s.start, s.end)}
        assert [i for i, m in enumerate(sequence.loss_mask) if m] == sorted(model)
        assert trajectory.reward in (0.0, 1.0)
    # The sampler's log-probs of the model tokens came along; the env tokens carry none.
    trajectory, sequence = seen[0]
    env = trajectory.spans[2]
    assert all(lp == 0.0 for lp in sequence.sampler_logprobs[env.start:env.end])
    assert all(lp < 0 for lp, m in zip(sequence.sampler_logprobs, sequence.loss_mask) if m)


def first_turn_only(prompt, completion, turn_index, **row):
    return 1.0 if turn_index == 0 else 0.0


def test_per_turn_scores_shape_the_episode_reward(tmp_path, monkeypatch):
    seen = []
    original = multi_turn.trajectory_sequence
    monkeypatch.setattr(multi_turn, "trajectory_sequence", lambda t: seen.append(t) or original(t))
    cfg = load_config(rl.RLConfig, None, [
        "model.name_or_path=tiny", "model.device=cpu", f"run.output_dir={tmp_path}", "run.name=turns",
        "run.report_to=[]", "run.save_every=1000", "run.eval_every=1000", "data.arithmetic.max_operand=9",
        "data.arithmetic.num_train=40", "data.arithmetic.num_eval=4", "data.max_length=32", "eval.num_samples=4",
        "eval.reward=test_rl_multi_turn:starts_with_digit", "reward.functions=[test_rl_multi_turn:starts_with_digit]",
        "reward.turn_functions=[test_rl_multi_turn:first_turn_only]", "reward.turn_coef=0.5",
        "rollout.max_new_tokens=6", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
        "micro_batch_size=4", "steps=1", "env.name=test_rl_multi_turn:two_turn_factory",
        "env.options={flavour: toy}", "env.max_turns=4",
    ])
    rl.train(cfg)
    row = next(json.loads(line) for line in (tmp_path / "turns" / "metrics.jsonl").read_text().splitlines()
               if "reward/mean" in json.loads(line))
    assert row["turn_rewards/turns"] == 8.0 and row["turn_rewards/test_rl_multi_turn:first_turn_only/mean"] == 0.5
    assert len(seen) == 4
    for trajectory in seen:
        outcome = starts_with_digit(None, trajectory.final_completion)
        assert trajectory.turn_rewards == [1.0, 0.0]
        assert trajectory.reward == pytest.approx(outcome + 0.5 * 0.5)


def test_per_turn_scores_need_an_environment():
    with pytest.raises(Exception, match="turn_functions"):
        load_config(rl.RLConfig, None, ["reward.turn_functions=[arithmetic]"])
