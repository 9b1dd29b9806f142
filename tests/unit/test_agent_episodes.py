"""Lockstep multi-turn episodes: one engine call per turn over every live episode, token ids
appended exactly as sampled, environment tokens masked, each stop counted — on a scripted engine
and, for the log-prob check, on the real HF engine with the tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.agents.episodes import EpisodeLimits, TemplateEncoder, run_episodes
from posttrain.engines import HFEngine, SamplingParams
from posttrain.engines.base import Completion
from posttrain.envs.base import StepResult
from posttrain.models.passes import batch_logprobs
from posttrain.models.tiny import EOS_TOKEN, build_tiny_model
from posttrain.recipes.rl.batch import build_batch, trajectory_sequence


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("episodes") / "tiny")
    return SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(path),
                           model=AutoModelForCausalLM.from_pretrained(path).eval())


class EchoEnv:
    """Answers every turn with a tool message; done when the model says 'done' or after `turns`."""

    def __init__(self, turns: int = 10):
        self.turns = turns
        self.seen = 0
        self.stats = {"tool_calls": 0, "tool_errors": {"raised": 0}}

    def reset(self, row):
        return [{"role": "user", "content": row["q"]}]

    def step(self, messages):
        self.seen += 1
        self.stats["tool_calls"] += 1
        if "done" in messages[-1]["content"] or self.seen >= self.turns:
            return StepResult(observation=[], done=True)
        if "oops" in messages[-1]["content"]:
            self.stats["tool_errors"]["raised"] += 1
        return StepResult(observation=[{"role": "tool", "name": "echo", "content": f"obs {self.seen}"}], done=False)


class ScriptedEngine:
    """Returns canned texts: `scripts[q][turn]`, tokenised, with the EOS unless the text ends in '…'."""

    def __init__(self, tokenizer, scripts):
        self.tokenizer, self.scripts, self.calls = tokenizer, scripts, []
        self.prompts = {}

    def generate(self, prompt_ids, sampling):
        self.calls.append(len(prompt_ids))
        out = []
        for i, ids in enumerate(prompt_ids):
            text = self.tokenizer.decode(ids)
            q = next(q for q in self.scripts if f"user\n{q}<|im_end|>" in text)
            turn = text.count("<|im_start|>assistant\n") - 1
            reply = self.scripts[q][turn]
            tokens = self.tokenizer(reply.rstrip("…"), add_special_tokens=False)["input_ids"]
            stopped = not reply.endswith("…")
            if stopped:
                tokens = tokens + [self.tokenizer.eos_token_id]
            tokens = tokens[: sampling.max_new_tokens]
            stopped = stopped and len(tokens) <= sampling.max_new_tokens and tokens[-1] == self.tokenizer.eos_token_id
            out.append([Completion(i, tokens, [-0.5] * len(tokens), reply.rstrip("…"),
                                   "stop" if stopped else "length")])
        return out


def play(tiny, scripts, limits, turns=10):
    engine = ScriptedEngine(tiny.tokenizer, scripts)
    rows = [{"q": q} for q in scripts]
    envs = [EchoEnv(turns) for _ in rows]
    trajectories, stats = run_episodes(envs, rows, engine, tiny.tokenizer, SamplingParams(max_new_tokens=64, seed=0),
                                       limits)
    return engine, trajectories, stats


def test_episodes_run_in_lockstep_with_one_generate_call_per_turn(tiny):
    scripts = {"a": ["x1", "x2", "done"], "b": ["done"], "c": ["y1", "done"]}
    engine, trajectories, stats = play(tiny, scripts, EpisodeLimits(max_turns=8))
    assert engine.calls == [3, 2, 1]  # live episodes per turn: b ends after turn 1, c after turn 2
    assert stats.generate_calls == 3 and stats.model_turns == 6
    assert [t.stop_reason for t in trajectories] == ["done", "done", "done"]
    assert stats.stops["done"] == 3 and not any(t.truncated for t in trajectories)
    assert stats.env["tool_calls"] == 6
    assert [m["content"] for m in trajectories[0].messages] == ["a", "x1", "obs 1", "x2", "obs 2", "done"]


def test_model_tokens_are_the_sampled_ids_and_only_they_are_trained_on(tiny):
    tok = tiny.tokenizer
    _, (traj,), _ = play(tiny, {"a": ["x1", "done"]}, EpisodeLimits())
    eos = tok.eos_token_id
    x1 = tok("x1", add_special_tokens=False)["input_ids"] + [eos]
    done = tok("done", add_special_tokens=False)["input_ids"] + [eos]
    sources = [s.source for s in traj.spans]
    assert sources == ["prompt", "model", "env", "model"]
    prompt, m1, env, m2 = (traj.token_ids[s.start:s.end] for s in traj.spans)
    assert m1 == x1 and m2 == done
    assert tok.decode(prompt) == "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n"
    # The glue after the sampled <|im_end|>, the tool turn and the next assistant header; no second EOS.
    assert tok.decode(env) == "\n<|im_start|>tool\nobs 1<|im_end|>\n<|im_start|>assistant\n"
    assert traj.loss_mask == [0] * len(prompt) + [1] * len(m1) + [0] * len(env) + [1] * len(m2)
    assert traj.logprobs == [0.0] * len(prompt) + [-0.5] * len(m1) + [0.0] * len(env) + [-0.5] * len(m2)
    # The ids are what the chat template renders for the conversation (this template is prefix-stable).
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x1"},
                {"role": "tool", "name": "echo", "content": "obs 1"}, {"role": "assistant", "content": "done"}]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(traj.token_ids) + "\n" == rendered


def test_a_turn_cut_at_the_token_limit_gets_its_end_of_turn_from_the_environment(tiny):
    _, (traj,), _ = play(tiny, {"a": ["unfinished…", "done"]}, EpisodeLimits())
    env = traj.token_ids[traj.spans[2].start:traj.spans[2].end]
    assert tiny.tokenizer.decode(env).startswith(EOS_TOKEN + "\n<|im_start|>tool\n")
    assert traj.stop_reason == "done"


def test_each_limit_stops_an_episode_and_is_counted(tiny):
    long = ["w " * 20] * 10
    _, trajectories, stats = play(tiny, {"turns": ["x"] * 10}, EpisodeLimits(max_turns=3))
    assert trajectories[0].stop_reason == "max_turns" and stats.model_turns == 3 and trajectories[0].truncated

    _, (traj,), stats = play(tiny, {"budget": long}, EpisodeLimits(max_episode_tokens=30))
    assert traj.stop_reason == "token_budget" and sum(traj.loss_mask) == 30  # the last turn is cut at the budget
    assert stats.stops["token_budget"] == 1

    _, (traj,), _ = play(tiny, {"ctx": long}, EpisodeLimits(max_context=60))
    assert traj.stop_reason == "context" and len(traj.token_ids) <= 60

    _, (traj,), _ = play(tiny, {"env": ["x"] * 10}, EpisodeLimits(max_turns=8), turns=2)
    assert traj.stop_reason == "done"  # the environment ended it after its second step


def test_metrics_count_turns_stops_and_tool_errors(tiny):
    _, _, stats = play(tiny, {"a": ["oops", "done"], "b": ["x"] * 5}, EpisodeLimits(max_turns=4))
    m = stats.metrics()
    assert m["episodes/turns_mean"] == pytest.approx((2 + 4) / 2)
    assert m["episodes/stop_done"] == 0.5 and m["episodes/stop_max_turns"] == 0.5
    assert m["episodes/tool_calls_mean"] == pytest.approx(6 / 2)
    assert m["episodes/tool_error_rate"] == pytest.approx(1 / 6)
    assert m["episodes/rollout_turns"] == 6.0


def test_a_multi_turn_trajectory_scores_the_same_log_probs_in_the_trainer_as_in_the_sampler(tiny):
    """Token-in/token-out on the real engine: three sampled turns with tool turns between them."""
    torch.manual_seed(0)
    engine = HFEngine(tiny.model, tiny.tokenizer)
    rows = [{"q": "2+3="}, {"q": "hello"}]
    envs = [EchoEnv(turns=3) for _ in rows]
    trajectories, stats = run_episodes(envs, rows, engine, tiny.tokenizer,
                                       SamplingParams(max_new_tokens=12, temperature=1.0, seed=3),
                                       EpisodeLimits(max_turns=3))
    assert stats.model_turns == 6 and stats.generate_calls == 3
    sequences = [trajectory_sequence(t) for t in trajectories]
    batch = build_batch(sequences, [0.0, 0.0], [0, 1], tiny.tokenizer.pad_token_id)
    trainer = batch_logprobs(tiny.model, batch, temperature=1.0, micro_batch_size=2)
    mask = batch.mask > 0
    assert int(mask.sum()) == sum(sum(s.loss_mask) for s in sequences) > 6
    torch.testing.assert_close(trainer[mask], batch.sampler_logprobs[mask], atol=2e-4, rtol=0)


def test_the_template_encoder_refuses_a_template_that_is_not_prefix_stable(tiny):
    class Rewriting:
        chat_template = "x"
        def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=False):
            # Drops earlier turns' text once a new message arrives (as reasoning-stripping templates do).
            return "|".join(m["role"] for m in messages) if len(messages) > 2 else "|".join(m["content"] for m in messages)

    with pytest.raises(ValueError, match="renders a conversation differently"):
        TemplateEncoder(Rewriting()).observation_ids([{"role": "tool", "content": "x"}], None, None)
