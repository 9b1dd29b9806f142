"""Tool use for multi-turn agentic RL.

- `parsers`: tool calls out of the model's raw text, one parser per model family (a registry).
- `tools`: plain Python functions as tools; `ToolBox` runs calls with schema-checked arguments,
  a timeout and capped output, and never raises for the model's mistakes.
- `tool_env`: `ToolEnvironment`, any task that acts through tools as an `Environment`.
- `action_match`: PivotRL's functional verifier (a sampled turn's action vs the expert's).
- `episodes`: many episodes in lockstep on an engine, token-in/token-out (imported on its own).
"""

from posttrain.agents.action_match import ExpertAction, action_reward, calls_f1, json_equivalent, text_equivalent
from posttrain.agents.parsers import (TOOL_CALL_PARSERS, ParsedTurn, ToolCall, ToolCallParser, get_tool_call_parser,
                                      parse_hermes, parse_llama3_json, parse_mistral)
from posttrain.agents.tool_env import ToolEnvironment, ToolTask, finish_tool
from posttrain.agents.tools import ERROR_KINDS, Tool, ToolBox, ToolResult, check_arguments, tool_from_function

__all__ = [
    "ERROR_KINDS", "ExpertAction", "ParsedTurn", "TOOL_CALL_PARSERS", "Tool", "ToolBox", "ToolCall", "ToolCallParser",
    "ToolEnvironment", "ToolResult", "ToolTask", "action_reward", "calls_f1", "check_arguments", "finish_tool",
    "get_tool_call_parser", "json_equivalent", "parse_hermes", "parse_llama3_json", "parse_mistral",
    "text_equivalent", "tool_from_function",
]
