"""Per-turn scores of multi-turn episodes (`reward.turn_functions`): which inputs each turn is
scored with, how turn scores combine with the outcome, and that a failing turn reward is handled
and counted by the same runner as an outcome reward."""

from __future__ import annotations

import math
import time

import pytest

from posttrain.envs.base import Span, Trajectory
from posttrain.recipes.rl.multi_turn import score_turns, turn_inputs, with_turn_scores
from posttrain.verifiers.combine import RewardRunner


def episode(turn_texts: list[str], row: dict | None = None) -> Trajectory:
    """A hand-built trajectory: system prompt, then model turns each answered by a tool message
    (token ids are placeholders; only spans and messages matter here)."""
    messages = [{"role": "user", "content": "q"}]
    spans, position = [Span("prompt", 0, 2, 0)], 2
    for k, text in enumerate(turn_texts):
        messages.append({"role": "assistant", "content": text})
        spans.append(Span("model", position, position + 3, len(messages) - 1))
        position += 3
        if k < len(turn_texts) - 1:
            messages.append({"role": "tool", "name": "t", "content": f"obs{k}"})
            spans.append(Span("env", position, position + 2, len(messages) - 1))
            position += 2
    return Trajectory(row=row or {"prompt": messages[:1], "answer": "4"}, messages=messages,
                      token_ids=list(range(position)), logprobs=[0.0] * position, spans=spans)


def test_each_model_turn_is_scored_with_the_conversation_before_it():
    trajectories = [episode(["call a", "call b", "4"]), episode(["5"])]
    owner, prompts, completions, rows = turn_inputs(trajectories)
    assert owner == [0, 0, 0, 1]
    assert completions == ["call a", "call b", "4", "5"]
    # Turn 2 of episode 0 sees the question, its two earlier turns and their observations.
    assert [m["content"] for m in prompts[2]] == ["q", "call a", "obs0", "call b", "obs1"]
    assert prompts[0] == [{"role": "user", "content": "q"}] and prompts[3] == prompts[0]
    assert [(r["turn_index"], r["num_turns"]) for r in rows] == [(0, 3), (1, 3), (2, 3), (0, 1)]
    assert all(r["answer"] == "4" for r in rows)  # the row's columns come along


def test_turn_scores_add_their_mean_times_the_coefficient_to_the_outcome():
    combined = with_turn_scores([1.0, 0.0, None, 0.5, 1.0], [[1.0, 0.0, 0.5], [1.0], [1.0], [None, 0.0], []], 0.2)
    # 1 + 0.2 × 0.5; 0 + 0.2 × 1; unscorable outcome stays None; the None turn is left out; no turns.
    assert combined[0] == pytest.approx(1.1) and combined[1] == pytest.approx(0.2)
    assert combined[2] is None and combined[3] == pytest.approx(0.5) and combined[4] == 1.0
    assert with_turn_scores([1.0], [[None, None]], 1.0) == [1.0]  # no scorable turn: the outcome as is
    with pytest.raises(ValueError):
        with_turn_scores([1.0, 0.0], [[1.0]], 1.0)


def well_formed(prompt, completion, **row):
    return 1.0 if completion.startswith("call") else 0.0


def fails_on_the_second_turn(prompt, completion, turn_index, **row):
    if turn_index == 1:
        raise RuntimeError("turn reward bug")
    if turn_index == 2:
        return math.nan
    return 1.0


def hangs_on_the_last_turn(prompt, completion, turn_index, num_turns, **row):
    if turn_index == num_turns - 1:
        time.sleep(60)
    return 1.0


def test_turn_scores_are_set_on_the_trajectories_and_reported():
    trajectories = [episode(["call a", "call b", "4"]), episode(["5"])]
    with RewardRunner({"well_formed": well_formed}) as runner:
        scores, metrics = score_turns(runner, trajectories)
    assert scores == [[1.0, 1.0, 0.0], [0.0]]
    assert trajectories[0].turn_rewards == [1.0, 1.0, 0.0]
    assert metrics["turn_rewards/turns"] == 4.0
    assert metrics["turn_rewards/well_formed/mean"] == pytest.approx(0.5)


def test_a_turn_reward_that_raises_or_returns_nan_is_handled_and_counted():
    warnings = []
    trajectories = [episode(["a", "b", "c"])]
    with RewardRunner({"flaky": fails_on_the_second_turn}, warn=warnings.append) as runner:
        scores, metrics = score_turns(runner, trajectories)
    assert scores == [[1.0, 0.0, 0.0]]  # on_error "zero"
    assert metrics["turn_rewards/flaky/raised"] == 1.0 and metrics["turn_rewards/flaky/invalid"] == 1.0
    assert warnings and "turn reward bug" in warnings[0]
    with RewardRunner({"flaky": fails_on_the_second_turn}, on_error="none") as runner:
        scores, _ = score_turns(runner, [episode(["a", "b", "c"])])
    assert scores == [[1.0, None, None]]
    assert with_turn_scores([0.0], scores, 1.0) == [1.0]  # the two failed turns do not count


def test_a_turn_reward_that_hangs_times_out_instead_of_stopping_the_run():
    with RewardRunner({"slow": hangs_on_the_last_turn}, timeout_s=2.0) as runner:
        start = time.perf_counter()
        scores, metrics = score_turns(runner, [episode(["a", "b"])])
    assert time.perf_counter() - start < 30
    assert scores == [[1.0, 0.0]] and metrics["turn_rewards/slow/timed_out"] == 1.0
