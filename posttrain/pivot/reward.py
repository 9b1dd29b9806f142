"""PivotRL's reward: is the sampled turn's action functionally the expert's at the same state?

A reward function in posttrain's form, ``(prompt, completion, **row) -> float``, so profiling and
training score through the run's `RewardRunner` (worker-process timeouts, error counting) like
any other reward. The row is a candidate row (`candidate_row`): the state as the prompt, the
expert's action, the parser name, and the task's columns. An environment plugs in what
"equivalent" means for its tools by giving `action_match_reward` its own `arguments_equivalent`
(e.g. two SQL queries that return the same result on this workbook), in a module-level
function so a worker process can import it. The default compares arguments as JSON values and a
message by its normalised text — never "any message where a message is expected", the exploit
the paper's functional reward must not have.
"""

from __future__ import annotations

from typing import Any, Mapping

from posttrain.agents.action_match import ArgumentsEquivalent, ExpertAction, MessageEquivalent, action_reward
from posttrain.agents.parsers import get_tool_call_parser
from posttrain.pivot.candidates import Candidate

__all__ = ["action_match_reward", "candidate_row", "exact_action_reward"]


def candidate_row(candidate: Candidate, parser: str = "hermes") -> dict:
    """A candidate as a prompt row: the state is the prompt (rendered with the candidate's tools),
    the expert action and the parser travel as columns for the reward."""
    return {**candidate.task, "prompt": candidate.state, "tools": candidate.tools, "expert_action": candidate.action,
            "tool_parser": parser, "candidate_id": candidate.id}


def action_match_reward(completion: str, expert_action: Mapping[str, Any], tool_parser: str = "hermes", *,
                        arguments_equivalent: ArgumentsEquivalent | None = None,
                        message_equivalent: MessageEquivalent | None = None) -> float:
    """Score a sampled turn's text against the expert action (see `agents.action_match.action_reward`)."""
    parsed = get_tool_call_parser(tool_parser)(completion)
    return action_reward(parsed, ExpertAction.from_message(expert_action),
                         arguments_equivalent=arguments_equivalent, message_equivalent=message_equivalent)


def exact_action_reward(prompt: Any, completion: str, expert_action: Mapping[str, Any], tool_parser: str = "hermes",
                        **row: Any) -> float:
    """The default functional reward: same tools with JSON-equal arguments (F1 over parallel
    calls), or the same message text."""
    return action_match_reward(completion, expert_action, tool_parser)
