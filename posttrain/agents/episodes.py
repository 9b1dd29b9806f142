"""Multi-turn episodes in lockstep, token-in/token-out.

`run_episodes` plays many episodes at once: each turn is ONE `engine.generate` call over every
live episode (not one call per episode, which would leave a batched engine idle), then every
environment answers the turn it was given. An episode's token sequence is built by appending,
never by re-rendering:

    prompt ids   = the chat template's rendering of `env.reset(row)` (with the episode's tools)
    + model ids  = exactly the ids the engine sampled (its stop token included), trained on
    + env ids    = the template's glue after the assistant turn, the observation messages and
                   the header of the next assistant turn, tokenised once; masked out of the loss
    + model ids  ...

So the trainer scores the very ids the sampler produced (docs/architecture.md, "Masks");
re-tokenising the finished conversation can merge BPE tokens across a turn boundary differently
from what was sampled, and a template that rewrites history (Qwen3 drops earlier reasoning)
would change the context the sampled tokens were conditioned on.

The env ids come from the template itself, without knowing its format: render a placeholder
conversation, then the same conversation plus the observation with the generation prompt; the
second must extend the first, and the extension — plus whatever the template puts after an
assistant message's content that the model did not sample (ChatML: the newline after
`<|im_end|>`; `<|im_end|>` too when the turn was cut at the token limit) — is the env text.

Stops, each counted in `EpisodeStats.stops`:
    done          the environment ended the episode (an answer, a final message)
    max_turns     the model spoke `max_turns` times
    token_budget  the episode's model tokens reached `max_episode_tokens` (the turn is cut there)
    context       the next turn would not fit the model's context (`max_context` tokens)
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from posttrain.engines.base import Engine, SamplingParams
from posttrain.envs.base import Environment, Message, Span, Trajectory

__all__ = ["EpisodeLimits", "EpisodeStats", "TemplateEncoder", "run_episodes"]

STOP_REASONS = ("done", "max_turns", "token_budget", "context")

# A placeholder turn: its text never reaches the model, it only shows where the template puts
# its glue around an assistant message.
_PLACEHOLDER = "\u2063posttrain-placeholder\u2063"


@dataclass(frozen=True)
class EpisodeLimits:
    """Per-episode limits. `max_new_tokens` caps one turn; `max_episode_tokens` caps the model
    tokens of the whole episode (None: no cap); `max_context` caps prompt + every turn (None: the
    engine's own limit applies)."""

    max_turns: int = 8
    max_new_tokens: int = 128
    max_episode_tokens: int | None = None
    max_context: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"EpisodeLimits.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_episode_tokens", "max_context"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"EpisodeLimits.{name} must be >= 1 or None, got {value}")


@dataclass
class EpisodeStats:
    """What a batch of episodes cost and how it ended."""

    episodes: int = 0
    model_turns: int = 0           # rollout turns: one per model call, over all episodes
    generate_calls: int = 0        # engine.generate calls (one per turn while any episode lives)
    model_tokens: int = 0          # sampled tokens
    env_tokens: int = 0            # appended observation/glue tokens
    prompt_tokens: int = 0
    prefill_tokens: int = 0        # context read before each turn (no KV cache is kept between turns)
    stops: Counter = field(default_factory=Counter)
    env: Counter = field(default_factory=Counter)  # summed `env.stats` counters (tool calls, errors, ...)

    def add(self, other: "EpisodeStats") -> None:
        """Fold another batch's figures into these (a step's refill rounds, evaluation chunks)."""
        for f in dataclasses.fields(self):
            if f.name in ("stops", "env"):
                getattr(self, f.name).update(getattr(other, f.name))
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def metrics(self, prefix: str = "episodes") -> dict[str, float]:
        n = max(self.episodes, 1)
        out = {
            f"{prefix}/count": float(self.episodes),
            f"{prefix}/turns_mean": self.model_turns / n,
            f"{prefix}/rollout_turns": float(self.model_turns),
            f"{prefix}/generate_calls": float(self.generate_calls),
            f"{prefix}/model_tokens": float(self.model_tokens),
            f"{prefix}/env_tokens": float(self.env_tokens),
        }
        for reason in STOP_REASONS:
            out[f"{prefix}/stop_{reason}"] = self.stops[reason] / n
        calls = self.env.get("tool_calls", 0)
        errors = sum(v for k, v in self.env.items() if k.startswith("tool_errors"))
        if calls or errors:
            out[f"{prefix}/tool_calls_mean"] = calls / n
            out[f"{prefix}/tool_error_rate"] = errors / max(calls + self.env.get("parse_errors", 0), 1)
        for key, value in sorted(self.env.items()):
            out[f"{prefix}/env/{key}"] = float(value)
        return out


class TemplateEncoder:
    """Token ids the chat template adds around the model's turns (see the module docstring)."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("multi-turn episodes need a tokenizer with a chat_template")
        self.tokenizer = tokenizer
        # The placeholder conversation's rendering depends only on the tools: rendered once per tool set.
        self._placeholder_cache: dict[str, str] = {}

    def render(self, messages: list[Message], tools: list[dict] | None, generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                                  add_generation_prompt=generation_prompt)
        return text if isinstance(text, str) else text[0]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: list[Message], tools: list[dict] | None) -> list[int]:
        return self.encode(self.render(messages, tools, generation_prompt=True))

    def observation_ids(self, observation: list[Message], tools: list[dict] | None,
                        stop_text: str | None) -> list[int]:
        """Ids appended after a model turn; `stop_text` is the text of the stop token the turn
        ended on (None when it was cut at the token limit)."""
        base = [{"role": "user", "content": _PLACEHOLDER}, {"role": "assistant", "content": _PLACEHOLDER}]
        key = json.dumps(tools, sort_keys=True, default=str)
        if key not in self._placeholder_cache:
            self._placeholder_cache[key] = self.render(base, tools, generation_prompt=False)
        before = self._placeholder_cache[key]
        after = self.render(base + list(observation), tools, generation_prompt=True)
        if not after.startswith(before):
            raise ValueError("the chat template renders a conversation differently once messages are added "
                             "after it, so observation tokens cannot be appended turn by turn; "
                             f"rendered {before[-80:]!r} then {after[len(before) - 80:len(before) + 40]!r}")
        glue = before[before.rindex(_PLACEHOLDER) + len(_PLACEHOLDER):]  # e.g. "<|im_end|>\n"
        # A turn that ended on its stop token already holds the start of the glue; a turn cut at
        # the token limit gets the template's end-of-turn from the environment (masked).
        if stop_text and glue.startswith(stop_text):
            glue = glue[len(stop_text):]
        return self.encode(glue + after[len(before):])


@dataclass
class _Episode:
    env: Environment
    trajectory: Trajectory
    tools: list[dict] | None
    model_tokens: int = 0
    turns: int = 0
    stop: str | None = None


def run_episodes(envs: Sequence[Environment], rows: Sequence[Mapping[str, Any]], engine: Engine, tokenizer: Any,
                 sampling: SamplingParams, limits: EpisodeLimits, *,
                 encoder: TemplateEncoder | None = None,
                 on_turn: Callable[[int, int], None] | None = None) -> tuple[list[Trajectory], EpisodeStats]:
    """Play `envs[i]` on `rows[i]`, all in lockstep; one engine call per turn.

    `sampling.n` must be 1: for G samples of a task pass G environments (each holds its own
    episode's state). `sampling.max_new_tokens` is replaced by `limits.max_new_tokens`. Episode
    seeds differ per turn (`sampling.seed + turn`) so turns are not correlated draws.

    Returns the trajectories (their `reward` left None: scoring is the caller's, through its
    reward runner's timeouts and error accounting) and the batch's statistics. Each trajectory's
    `stop_reason` is one of STOP_REASONS; `truncated` is True when a limit, not the environment,
    ended it.
    """
    if len(envs) != len(rows):
        raise ValueError(f"run_episodes: {len(envs)} environments for {len(rows)} rows")
    if sampling.n != 1:
        raise ValueError("run_episodes samples one continuation per episode; pass one environment per sample")
    encoder = encoder or TemplateEncoder(tokenizer)
    stats = EpisodeStats(episodes=len(envs))
    episodes = []
    for env, row in zip(envs, rows):
        messages = [dict(m) for m in env.reset(row)]
        tools = getattr(env, "tool_schemas", None)
        trajectory = Trajectory(row=dict(row), messages=messages)
        ids = encoder.prompt_ids(messages, tools)
        _append(trajectory, "prompt", ids, None, 0)
        stats.prompt_tokens += len(ids)
        episode = _Episode(env, trajectory, tools)
        if limits.max_context is not None and len(ids) >= limits.max_context:
            episode.stop = "context"
        episodes.append(episode)

    turn = 0
    while True:
        live = [e for e in episodes if e.stop is None]
        if not live:
            break
        budgets = [_turn_budget(e, limits) for e in live]
        turn_sampling = dataclasses.replace(
            sampling, max_new_tokens=max(budgets),
            seed=None if sampling.seed is None else sampling.seed + turn)
        groups = engine.generate([e.trajectory.token_ids for e in live], turn_sampling)
        stats.generate_calls += 1
        stats.prefill_tokens += sum(len(e.trajectory.token_ids) for e in live)
        for episode, budget, group in zip(live, budgets, groups):
            completion = group[0]
            ids, logprobs = list(completion.token_ids), list(completion.logprobs)
            cut = len(ids) > budget
            if cut:  # a prefix of a sample is a sample: keep the first `budget` tokens and their log-probs
                ids, logprobs = ids[:budget], logprobs[:budget]
            stopped = completion.finish_reason == "stop" and not cut
            stop_text = tokenizer.decode(ids[-1:], skip_special_tokens=False) if stopped else None
            content = completion.text if not cut else tokenizer.decode(ids, skip_special_tokens=True)
            traj = episode.trajectory
            traj.messages.append({"role": "assistant", "content": content})
            _append(traj, "model", ids, logprobs, len(traj.messages) - 1)
            episode.model_tokens += len(ids)
            episode.turns += 1
            stats.model_turns += 1
            stats.model_tokens += len(ids)
            if cut:
                episode.stop = _limit_stop(episode, limits)
                continue
            result = episode.env.step([dict(m) for m in traj.messages])
            observation = [dict(m) for m in result.observation]
            if result.done:
                traj.messages.extend(observation)
                episode.stop = "done"
                continue
            if episode.turns >= limits.max_turns:
                traj.messages.extend(observation)
                episode.stop = "max_turns"
                continue
            env_ids = encoder.observation_ids(observation, episode.tools, stop_text)
            first = len(traj.messages)
            traj.messages.extend(observation)
            if limits.max_context is not None and len(traj.token_ids) + len(env_ids) >= limits.max_context:
                episode.stop = "context"  # no room for the observation and a reply: it stays in the messages only
                continue
            _append(traj, "env", env_ids, None, first)
            stats.env_tokens += len(env_ids)
            if limits.max_episode_tokens is not None and episode.model_tokens >= limits.max_episode_tokens:
                episode.stop = "token_budget"
        if on_turn is not None:
            on_turn(turn, len(live))
        turn += 1

    for episode in episodes:
        stats.stops[episode.stop] += 1
        episode.trajectory.stop_reason = episode.stop
        episode.trajectory.truncated = episode.stop != "done"
        for key, value in (getattr(episode.env, "stats", None) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                stats.env[key] += value
            elif isinstance(value, Mapping):
                for sub, count in value.items():
                    stats.env[f"{key}/{sub}"] += count
    return [e.trajectory for e in episodes], stats


def _turn_budget(episode: _Episode, limits: EpisodeLimits) -> int:
    budget = limits.max_new_tokens
    if limits.max_episode_tokens is not None:
        budget = min(budget, limits.max_episode_tokens - episode.model_tokens)
    if limits.max_context is not None:
        budget = min(budget, limits.max_context - len(episode.trajectory.token_ids))
    return max(budget, 1)


def _limit_stop(episode: _Episode, limits: EpisodeLimits) -> str:
    """Which limit cut the turn (the context wins when both bind)."""
    if limits.max_context is not None and len(episode.trajectory.token_ids) >= limits.max_context:
        return "context"
    return "token_budget"


def _append(traj: Trajectory, source: str, ids: list[int], logprobs: list[float] | None, message_index: int) -> None:
    start = len(traj.token_ids)
    traj.token_ids.extend(ids)
    traj.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))
    traj.spans.append(Span(source, start, len(traj.token_ids), message_index))  # type: ignore[arg-type]
