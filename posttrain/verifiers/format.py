"""Format rewards and answer extractors: ``<answer>...</answer>`` tags and ``\\boxed{...}``.

These check shape, not correctness; combine them with a correctness reward through
`posttrain.verifiers.combine.weighted_sum` (a small weight, e.g. 0.1, is usual: the
DeepSeek-R1 report used such a format reward next to its accuracy reward).
"""

from __future__ import annotations

import re
from typing import Any


def _tag_pattern(tag: str) -> re.Pattern[str]:
    if not re.fullmatch(r"[A-Za-z_][\w.-]*", tag):
        raise ValueError(f"tag must be a plain XML-style name like 'answer', got {tag!r}")
    return re.compile(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", re.DOTALL)


def extract_tag(text: str, tag: str = "answer") -> str | None:
    """Content of the LAST complete ``<tag>...</tag>`` in `text`, stripped; None if there is none.

    The last one, because a model often mentions the tag while reasoning before it answers.
    """
    matches = _tag_pattern(tag).findall(text)
    return matches[-1].strip() if matches else None


def tag_format_reward(
    prompt: Any,
    completion: str,
    *,
    tag: str = "answer",
    think_tag: str | None = "think",
    require_think: bool = False,
    strict: bool = False,
    **row: Any,
) -> float:
    """1.0 if `completion` is well formed, else 0.0.

    Well formed means:
      * ``<tag>`` and ``</tag>`` each appear exactly once, opening before closing, with
        non-blank content between them;
      * if `think_tag` is given and appears (always, when `require_think`), ``<think>`` and
        ``</think>`` each appear exactly once and the think block closes before ``<tag>`` opens;
      * if `strict`, nothing but whitespace lies outside the think and answer blocks.
    """
    _tag_pattern(tag)  # validates the name
    open_a, close_a = f"<{tag}>", f"</{tag}>"
    if completion.count(open_a) != 1 or completion.count(close_a) != 1:
        return 0.0
    start, end = completion.index(open_a), completion.index(close_a)
    if end < start or not completion[start + len(open_a) : end].strip():
        return 0.0
    outside = completion[:start] + completion[end + len(close_a) :]
    if think_tag is not None:
        _tag_pattern(think_tag)
        open_t, close_t = f"<{think_tag}>", f"</{think_tag}>"
        n_open, n_close = completion.count(open_t), completion.count(close_t)
        if n_open or n_close or require_think:
            if n_open != 1 or n_close != 1:
                return 0.0
            t_start, t_end = completion.index(open_t), completion.index(close_t)
            if not t_start < t_end < start:
                return 0.0
            outside = completion[:t_start] + completion[t_end + len(close_t) : start] + completion[end + len(close_a) :]
    if strict and outside.strip():
        return 0.0
    return 1.0


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")


def extract_boxed(text: str) -> str | None:
    """Content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) in `text`, braces balanced.

    Also accepts the brace-less form ``\\boxed 5`` (content up to the next whitespace or
    ``$``). Returns None if there is no complete boxed expression.
    """
    found: str | None = None
    for match in _BOXED.finditer(text):
        i = match.end()
        if i < len(text) and text[i] == "{":
            content = _balanced(text, i)
            if content is not None:
                found = content.strip()
        elif match.group(0).endswith((" ", "\t")):  # "\boxed 5"
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                found = token.group(0)
    return found


def _balanced(text: str, open_index: int) -> str | None:
    """Text between ``text[open_index] == '{'`` and its matching '}', or None if unclosed."""
    depth = 0
    for j in range(open_index, len(text)):
        if text[j] == "{" and text[j - 1] != "\\":
            depth += 1
        elif text[j] == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : j]
    return None
