"""The environment protocol, driven by scripted policies (no model): SingleTurnEnv and a two-turn toy."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from posttrain.envs.arithmetic import arithmetic_reward
from posttrain.envs.base import (Environment, SingleTurnEnv, StepResult, Trajectory, run_episode,
                                 spans_are_contiguous)
from posttrain.engines.base import Completion


def encode(history, new_messages):
    """Toy chat template: one token per character of "<role>content", then "|" (ord 124) opening the
    next assistant turn. Only lengths and positions matter to these tests."""
    ids = []
    for m in new_messages:
        ids += [ord(c) for c in f"<{m['role']}>{m['content']}"]
    return ids + [124]


@dataclass
class Turn:
    text: str
    token_ids: list[int]
    logprobs: list[float]


def say(text: str, logprob: float = -0.5) -> Turn:
    return Turn(text, [ord(c) for c in text], [logprob] * len(text))


class GuessTheNumber:
    """Toy two-turn tool environment: the model may call <check>N</check> (answered "higher",
    "lower" or "equal" by a tool message), then commits with <answer>N</answer>."""

    def reset(self, row):
        self.secret = row["secret"]
        return [{"role": "user", "content": "Guess 1-10."}]

    def step(self, messages):
        text = messages[-1]["content"]
        check = re.fullmatch(r"<check>(\d+)</check>", text)
        if check:
            guess = int(check.group(1))
            verdict = "equal" if guess == self.secret else ("higher" if self.secret > guess else "lower")
            return StepResult([{"role": "tool", "content": verdict}], done=False)
        return StepResult([], done=True)

    def score(self, trajectory):
        answer = re.fullmatch(r"<answer>(\d+)</answer>", trajectory.final_completion)
        return 1.0 if answer and int(answer.group(1)) == self.secret else 0.0


def bisecting_policy(messages):
    """Checks 5 first, then answers from the tool's verdict (the secret in these tests is 7 or 3)."""
    if messages[-1]["role"] == "user":
        return say("<check>5</check>", -0.25)
    return say("<answer>7</answer>" if messages[-1]["content"] == "higher" else "<answer>3</answer>", -0.75)


def test_protocol_is_structural():
    assert isinstance(GuessTheNumber(), Environment)
    assert isinstance(SingleTurnEnv(arithmetic_reward), Environment)


def test_single_turn_env_scores_with_the_reward_function():
    row = {"prompt": [{"role": "user", "content": "12+34="}], "answer": "46"}
    right = run_episode(SingleTurnEnv(arithmetic_reward), row, lambda m: say("46"), encode)
    wrong = run_episode(SingleTurnEnv(arithmetic_reward), row, lambda m: say("45"), encode)
    assert (right.reward, wrong.reward) == (1.0, 0.0)
    # Prompt "<user>12+34=" is 12 chars + 1 header token = 13; the model's "46" is 2 tokens.
    assert right.prompt_length == 13
    assert [(s.source, s.start, s.end) for s in right.spans] == [("prompt", 0, 13), ("model", 13, 15)]
    assert right.loss_mask == [0] * 13 + [1, 1]
    assert right.messages[-1] == {"role": "assistant", "content": "46"} and not right.truncated


def test_single_turn_env_accepts_string_prompt_and_engine_completions():
    row = {"prompt": "2+2=", "answer": 4}
    completion = Completion(prompt_index=0, token_ids=[52, 2], logprobs=[-0.1, -0.2], text="4", finish_reason="stop")
    traj = run_episode(SingleTurnEnv(arithmetic_reward), row, lambda m: completion, encode)
    assert traj.messages[0] == {"role": "user", "content": "2+2="}
    assert traj.reward == 1.0
    assert traj.token_ids[-2:] == [52, 2] and traj.logprobs[-2:] == [-0.1, -0.2]


def test_single_turn_env_missing_prompt_names_the_columns():
    with pytest.raises(ValueError, match=r"no 'prompt' column.*\['answer'\]"):
        SingleTurnEnv(arithmetic_reward).reset({"answer": 1})


def test_two_turn_episode_records_turn_boundaries_and_masks():
    traj = run_episode(GuessTheNumber(), {"secret": 7}, bisecting_policy, encode)
    # Token layout, by the toy encoder's arithmetic:
    #   prompt  "<user>Guess 1-10." = 17 chars + header      -> [0, 18)
    #   model   "<check>5</check>"  = 16 tokens               -> [18, 34)
    #   env     "<tool>higher"      = 12 chars + header      -> [34, 47)
    #   model   "<answer>7</answer>" = 18 tokens              -> [47, 65)
    assert [(s.source, s.start, s.end, s.message_index) for s in traj.spans] == [
        ("prompt", 0, 18, 0), ("model", 18, 34, 1), ("env", 34, 47, 2), ("model", 47, 65, 3)]
    assert spans_are_contiguous(traj.spans) and len(traj.token_ids) == 65
    assert traj.loss_mask == [0] * 18 + [1] * 16 + [0] * 13 + [1] * 18
    # Sampler log-probs sit exactly on the model tokens; everything else is 0.0.
    assert traj.logprobs == [0.0] * 18 + [-0.25] * 16 + [0.0] * 13 + [-0.75] * 18
    assert traj.token_ids[34:47] == [ord(c) for c in "<tool>higher"] + [124]
    assert [m["role"] for m in traj.messages] == ["user", "assistant", "tool", "assistant"]
    assert traj.reward == 1.0 and not traj.truncated


def test_two_turn_episode_wrong_answer_scores_zero():
    traj = run_episode(GuessTheNumber(), {"secret": 6}, bisecting_policy, encode)  # answers 7 after "higher"
    assert traj.reward == 0.0


def test_max_turns_truncates():
    always_check = lambda m: say("<check>1</check>")  # noqa: E731
    traj = run_episode(GuessTheNumber(), {"secret": 7}, always_check, encode, max_turns=3)
    assert traj.truncated
    assert [s.source for s in traj.spans] == ["prompt", "model", "env", "model", "env", "model", "env"]
    assert traj.reward == 0.0  # never answered


def test_observation_on_done_is_kept_but_not_tokenised():
    class Farewell(SingleTurnEnv):
        def step(self, messages):
            return StepResult([{"role": "user", "content": "thanks"}], done=True)

    traj = run_episode(Farewell(arithmetic_reward), {"prompt": "1+1=", "answer": 2}, lambda m: say("2"), encode)
    assert traj.messages[-1] == {"role": "user", "content": "thanks"}
    assert traj.spans[-1].source == "model" and traj.spans[-1].end == len(traj.token_ids)
    assert traj.final_completion == "2" and traj.reward == 1.0


def test_bad_policy_and_environment_output_raise_clearly():
    row = {"prompt": "1+1=", "answer": 2}
    with pytest.raises(ValueError, match="turn 0: the policy returned 2 token ids but 1 log-probs"):
        run_episode(SingleTurnEnv(arithmetic_reward), row, lambda m: Turn("ab", [1, 2], [0.0]), encode)

    class Silent(GuessTheNumber):
        def step(self, messages):
            return StepResult([], done=False)

    with pytest.raises(ValueError, match="done=False with no observation"):
        run_episode(Silent(), {"secret": 1}, bisecting_policy, encode)

    class Garbled(GuessTheNumber):
        def step(self, messages):
            return StepResult(["higher"], done=False)

    with pytest.raises(ValueError, match=r"step \(turn 0\): message 0 must be a dict"):
        run_episode(Garbled(), {"secret": 1}, bisecting_policy, encode)


def test_empty_trajectory_properties():
    traj = Trajectory(row={}, messages=[])
    assert traj.prompt_length == 0 and traj.loss_mask == [] and traj.final_completion == ""
