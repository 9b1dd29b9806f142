"""A few rollouts of every logged step, kept as text in the run's `rollouts.jsonl`.

Curves say that the reward rose; the rollouts say how (a format learned, a hedge, a hack).
`collect_rollouts` hands the step's first round to `RolloutLog.record`, which keeps its first
`rollout.log_samples` sequences at the steps the loop logs (`training.loop.logged_step`, the
rule `TrainingLoop.train` logs by) and writes them through the run, one JSON line each::

    {"step": 12, "group": 0, "sample": 1, "prompt": "3+4=", "completion": "7", "reward": 1.0,
     "tokens": 2, "truncated": false}

`step` is the step the metrics line of the same step carries, so a resumed run drops the lines
logged after its checkpoint from both files alike (`Run.start`). `reward` is what the reward
functions gave (null: not scorable), before length shaping. A multi-turn episode's `completion`
is its conversation after the reset messages (`transcript`). Long texts keep their start and
end, with the cut marked (`shorten`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from posttrain.run import Run
from posttrain.training.loop import logged_step

# Characters kept of each text: prompts are often a long system prompt then a short question,
# completions the reasoning then the answer, so both ends are kept.
MAX_PROMPT_CHARS = 1500
MAX_COMPLETION_CHARS = 3000


def shorten(text: str, limit: int) -> str:
    """`text` when it has at most `limit` characters, else its head and tail around a marker."""
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 2)
    head, tail = text[: keep * 2 // 3], text[len(text) - keep // 3:]
    return f"{head}\n[... {len(text) - len(head) - len(tail)} characters cut ...]\n{tail}"


def transcript(messages: Any) -> str:
    """A prompt or a conversation as text: a string stays itself; chat messages become
    `[role] content` paragraphs, tool calls and tool names included."""
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return str(messages)
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            parts.append(str(message))
            continue
        role = str(message.get("role", "?"))
        if message.get("name"):
            role += f" {message['name']}"
        text = str(message.get("content") or "")
        calls = message.get("tool_calls")
        if calls:
            text += ("\n" if text else "") + "\n".join(f"tool call: {json.dumps(c, default=str)}" for c in calls)
        parts.append(f"[{role}] {text}")
    return "\n".join(parts)


class RolloutLog:
    """Writes the first `per_step` rollouts of each logged step to the run's rollouts.jsonl."""

    def __init__(self, run: Run, per_step: int, log_every: int, steps: int) -> None:
        self.run, self.per_step, self.log_every, self.steps = run, per_step, log_every, steps

    def record(self, step: int, rows: list[dict], scored, group_ids: list[int]) -> None:
        """The round `scored` (a `ScoredRound` over `rows`) of 0-based `step`, its sequences'
        group ids given; written only when the loop logs that step."""
        done = step + 1
        if self.per_step <= 0 or not logged_step(done, self.log_every, self.steps):
            return
        records = []
        seen: dict[int, int] = {}
        for i in range(min(self.per_step, len(scored.sequences))):
            group = int(group_ids[i])
            seen[group] = seen.get(group, -1) + 1  # the sample's index within its group
            sequence, reward = scored.sequences[i], scored.rewards[i]
            text = scored.texts[i] if i < len(scored.texts) else ""
            records.append({
                "group": group, "sample": seen[group],
                "prompt": shorten(transcript(rows[scored.prompt_index[i]].get("prompt", "")), MAX_PROMPT_CHARS),
                "completion": shorten(text, MAX_COMPLETION_CHARS),
                "reward": None if reward is None or not math.isfinite(float(reward)) else float(reward),
                "tokens": int(sum(sequence.loss_mask)), "truncated": bool(sequence.truncated),
            })
        self.run.log_rollouts(done, records)
