"""The environment protocol: how an RL episode is set up, advanced and scored.

An episode is a conversation. The environment opens it (`reset`), the model speaks, the
environment answers (`step`: tool output, feedback, or "done"), and so on until `done`; then
`score` turns the whole record into one reward. Single-turn tasks are the degenerate case
(`step` says done at once), so one rollout loop serves plain RLVR, tool-use environments and
PivotRL's pivot states (which are just `reset` returning a longer, mid-episode history).

Why the record keeps token spans: the trainer must know exactly which tokens the model sampled
(trained on, with the sampler's log-probs) and which the environment injected (tool output,
chat-template glue; conditioned on but masked out of the loss, docs/architecture.md, "Masks"). Re-tokenising
the finished conversation would not give that: BPE merges across turn boundaries can differ from
what was actually sampled. So `run_episode` builds the token sequence turn by turn and records
where each piece came from.

Environments hold per-episode state between `reset` and `step` (e.g. a hidden secret), so use
one instance per concurrently running episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence, runtime_checkable

__all__ = ["Environment", "Message", "ModelTurn", "SingleTurnEnv", "Span", "StepResult", "Trajectory",
           "as_messages", "run_episode", "spans_are_contiguous"]

Message = dict[str, Any]  # {"role": "user" | "assistant" | "tool" | "system", "content": str, ...}


@dataclass(frozen=True)
class StepResult:
    """What the environment says after a model turn.

    Attributes:
        observation: messages to append before the model's next turn (tool results, feedback);
            empty for single-turn environments. When `done` is True they are kept in the record for
            logging but never tokenised, since no model turn follows them.
        done: the episode is over; `score` is called next.
    """

    observation: list[Message]
    done: bool


@runtime_checkable
class Environment(Protocol):
    """Anything with these three methods; no base class to inherit. An environment that holds
    resources for its episode (open files, database connections) may also have ``close()``: the
    rollout calls it once the episode is over and its answer read (and on an error)."""

    def reset(self, row: Mapping[str, Any]) -> list[Message]:
        """Start an episode for a dataset row; returns the initial chat messages (the prompt)."""
        ...

    def step(self, messages: list[Message]) -> StepResult:
        """Called after each model turn with the full history (last message = the model's turn)."""
        ...

    def score(self, trajectory: "Trajectory") -> float | None:
        """The episode's reward; None when it cannot be scored (excluded from the update, counted)."""
        ...


@dataclass(frozen=True)
class Span:
    """A contiguous run of tokens in `Trajectory.token_ids`, ``[start, end)``.

    Attributes:
        source: "prompt" (the reset messages), "model" (sampled: trained on) or "env" (observation
            tokens plus the template's header for the next assistant turn: masked out).
        start, end: token positions, half-open.
        message_index: index into `Trajectory.messages` of the first message the span encodes, so a
            logger or a per-turn reward can map tokens back to turns.
    """

    source: Literal["prompt", "model", "env"]
    start: int
    end: int
    message_index: int

    def __len__(self) -> int:
        return self.end - self.start


@dataclass
class Trajectory:
    """One finished episode.

    Attributes:
        row: the dataset row the episode started from (rewards read `answer` etc. from it).
        messages: the whole conversation, reset messages first.
        token_ids: length T, prompt then alternating model / env tokens, exactly as the model saw them.
        logprobs: length T; the sampler's log-prob for model tokens and 0.0 elsewhere (never used
            there: the loss mask is 0), so the trainer can slice one aligned tensor.
        spans: cover ``[0, T)`` in order, no gaps; the first is the prompt.
        reward: set by `run_episode` from `Environment.score`.
        truncated: a limit (turns, tokens, context), not the environment, ended the episode.
        stop_reason: why it ended, when the lockstep runner played it (`agents.episodes.STOP_REASONS`).
        turn_rewards: one score per model turn when the run has per-turn rewards
            (`reward.turn_functions`; None where a turn was unscorable), else empty.
    """

    row: dict[str, Any]
    messages: list[Message]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    reward: float | None = None
    truncated: bool = False
    stop_reason: str | None = None
    turn_rewards: list[float | None] = field(default_factory=list)

    @property
    def prompt_length(self) -> int:
        """Tokens before the first model turn (the prompt the engine was first given)."""
        return self.spans[0].end if self.spans else 0

    @property
    def loss_mask(self) -> list[int]:
        """Length T; 1 on model-sampled tokens, 0 on prompt and environment tokens."""
        mask = [0] * len(self.token_ids)
        for span in self.spans:
            if span.source == "model":
                mask[span.start:span.end] = [1] * len(span)
        return mask

    @property
    def model_messages(self) -> list[Message]:
        """The model's turns, in order."""
        return [self.messages[s.message_index] for s in self.spans if s.source == "model"]

    @property
    def final_completion(self) -> str:
        """Text of the model's last turn ("" when it never spoke)."""
        turns = self.model_messages
        return str(turns[-1].get("content") or "") if turns else ""


class ModelTurn(Protocol):
    """What a policy returns for one turn; `posttrain.engines.base.Completion` satisfies it."""

    text: str
    token_ids: list[int]
    logprobs: list[float]


# policy(messages) -> the model's next turn; encode(history, new_messages) -> the token ids the chat
# template adds when `new_messages` are appended to `history`, INCLUDING the header that opens the
# next assistant turn (for the prompt, history is []).
Policy = Callable[[list[Message]], ModelTurn]
Encoder = Callable[[list[Message], list[Message]], list[int]]


def run_episode(env: Environment, row: Mapping[str, Any], policy: Policy, encode: Encoder, *,
                max_turns: int = 8) -> Trajectory:
    """Play one episode: reset, then alternate model turn / `env.step` until done or `max_turns`.

    Returns the scored `Trajectory`. Raises ValueError naming the turn when the policy returns
    mismatched token ids / log-probs or the environment returns malformed messages.
    """
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    messages = _check_messages(env.reset(row), "reset")
    traj = Trajectory(row=dict(row), messages=messages)
    _append(traj, "prompt", encode([], list(messages)), None, 0)
    for turn in range(max_turns):
        out = policy(list(traj.messages))
        if len(out.token_ids) != len(out.logprobs):
            raise ValueError(f"turn {turn}: the policy returned {len(out.token_ids)} token ids but "
                             f"{len(out.logprobs)} log-probs")
        traj.messages.append({"role": "assistant", "content": out.text})
        _append(traj, "model", list(out.token_ids), list(out.logprobs), len(traj.messages) - 1)
        result = env.step(list(traj.messages))
        observation = _check_messages(result.observation, f"step (turn {turn})")
        if result.done:
            traj.messages.extend(observation)
            break
        if not observation:
            raise ValueError(f"turn {turn}: step returned done=False with no observation; a multi-turn "
                             "environment must say something before the model's next turn")
        first = len(traj.messages)
        ids = encode(list(traj.messages), observation)
        traj.messages.extend(observation)
        _append(traj, "env", ids, None, first)
    else:
        traj.truncated = True
    traj.reward = env.score(traj)
    return traj


def _append(traj: Trajectory, source: str, ids: list[int], logprobs: list[float] | None, message_index: int) -> None:
    start = len(traj.token_ids)
    traj.token_ids.extend(ids)
    traj.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))
    traj.spans.append(Span(source, start, len(traj.token_ids), message_index))  # type: ignore[arg-type]


def _check_messages(messages: Any, where: str) -> list[Message]:
    if not isinstance(messages, list):
        raise ValueError(f"{where}: expected a list of chat messages, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}: message {i} must be a dict with 'role' and 'content', got {message!r}")
    return [dict(m) for m in messages]


def as_messages(prompt: Any, where: str = "row") -> list[Message]:
    """A prompt column as chat messages: a string becomes one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return _check_messages(prompt, f"{where}: 'prompt'")


class SingleTurnEnv:
    """Any reward function ``(prompt, completion, **row) -> float | None`` as an Environment.

    The prompt comes from the row's "prompt" column; the model answers once; the reward function
    sees the prompt, the answer's text and the row's other columns (as `posttrain.rewards` expects).
    """

    def __init__(self, reward_fn: Callable[..., float | None]) -> None:
        self.reward_fn = reward_fn

    def reset(self, row: Mapping[str, Any]) -> list[Message]:
        if "prompt" not in row:
            raise ValueError(f"row has no 'prompt' column (columns: {sorted(row)})")
        return as_messages(row["prompt"])

    def step(self, messages: list[Message]) -> StepResult:
        return StepResult(observation=[], done=True)

    def score(self, trajectory: Trajectory) -> float | None:
        columns = {k: v for k, v in trajectory.row.items() if k != "prompt"}
        return self.reward_fn(trajectory.row["prompt"], trajectory.final_completion, **columns)


def spans_are_contiguous(spans: Sequence[Span]) -> bool:
    """True when `spans` tile ``[0, end)`` in order with no gaps (a sanity check for custom loops)."""
    position = 0
    for span in spans:
        if span.start != position or span.end < span.start:
            return False
        position = span.end
    return True
