"""Sequential scaling by a thinking budget: how many tokens a model may think before it answers.

A model that thinks in a delimited segment (``<think> ... </think>``, then the answer) spends its
test-time compute there, one token after another. Two controls, both through the engine protocol:

* ``cap`` (a ceiling): thinking stops at B tokens. A model that has not closed the segment by
  then gets the close delimiter appended and answers; one that closes earlier keeps its shorter
  thinking.
* ``force`` (budget forcing, Muennighoff et al. 2025, "s1: Simple test-time scaling", arXiv
  2501.19393): thinking is held to B tokens. When the model closes the segment early, its close is
  cut off, a continuation cue ("Wait") is appended and it thinks on; at B the close is appended as
  in cap. s1 suppresses the end of thinking to reach a minimum and forces it at a maximum; here
  both are B, so each budget is one point on the token axis. The cue counts as thinking, so the
  last cue can carry thinking past B by at most ``len(cue) - 1`` tokens.

Budget 0 is no thinking: open and close are appended together and the model answers at once (an
empty think block, as Qwen3's non-thinking mode has).

Batched, never per prompt: each phase is ONE ``engine.generate`` over every prompt still in it --
the thinking phase (force: one round per early close, over the rows that closed early), then the
answer phase. The sequence only grows: the ids the engine sampled as sampled, the delimiters and
cue as the ids they tokenise to alone; nothing is decoded and tokenised again, which could merge
BPE tokens across the joins differently from what the model was conditioned on.

The close delimiter is detected as that id sequence (``SamplingParams.stop_sequences``). A model
that writes it in another tokenisation (merged with a neighbouring character) is not seen
closing: in cap mode it thinks up to B and gets the close appended. Tokenizers that have
``</think>`` as one special token (Qwen3, DeepSeek-R1) are exact; for the tiny model's
scratchpad data the delimiters tokenise the same in context as alone (tests/unit/test_scratchpad.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from posttrain.engines.base import Completion, Engine, SamplingParams

__all__ = ["BudgetedCompletion", "ThinkingDelimiters", "answer_part", "think_with_budget"]

Mode = Literal["cap", "force"]


@dataclass(frozen=True)
class ThinkingDelimiters:
    """The token ids of the segment's delimiters and of the continuation cue.

    ``open_ids`` may be empty (a chat template that already opens the segment, as DeepSeek-R1's
    adds ``<think>\\n`` to the generation prompt); ``close_ids`` may not.
    """

    open_ids: tuple[int, ...]
    close_ids: tuple[int, ...]
    cue_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.close_ids:
            raise ValueError("ThinkingDelimiters: the close delimiter must be at least one token")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, open_text: str, close_text: str,
                       cue_text: str = "") -> "ThinkingDelimiters":
        """Each as the ids it tokenises to alone."""
        def ids(text: str) -> tuple[int, ...]:
            return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

        return cls(ids(open_text), ids(close_text), ids(cue_text))


@dataclass
class BudgetedCompletion:
    """One prompt's thinking and answer under a budget.

    Attributes:
        prompt_index: position of the prompt in the list given to `think_with_budget`.
        token_ids: everything after the prompt as the final context holds it: open + thinking +
            close + answer (its stop token included).
        thinking_tokens: tokens between the delimiters, cues included.
        answer_tokens: tokens after the close.
        inserted_tokens: tokens the controller appended rather than the model sampled: the open
            delimiter, a forced close, cues.
        suppressed_tokens: sampled closes that budget forcing cut off; the model generated them,
            so they count as generated, but they are not in ``token_ids``.
        cues: continuation cues inserted.
        forced_close: whether the budget, not the model, ended the thinking.
        answer_text: the answer phase's text (its stop token dropped): what a verifier reads;
            "" when the model ended inside its thinking and never answered.
        finish_reason: the answer phase's ("stop" / "length"); "thinking" when the model stopped
            (EOS) inside its thinking.
    """

    prompt_index: int
    token_ids: list[int] = dataclasses.field(default_factory=list)
    thinking_tokens: int = 0
    answer_tokens: int = 0
    inserted_tokens: int = 0
    suppressed_tokens: int = 0
    cues: int = 0
    forced_close: bool = False
    answer_text: str = ""
    finish_reason: str = "thinking"

    @property
    def generated_tokens(self) -> int:
        """Tokens past the prompt the strategy cost: sampled (kept or suppressed) plus inserted."""
        return len(self.token_ids) + self.suppressed_tokens


def think_with_budget(engine: Engine, prompt_ids: Sequence[Sequence[int]], budget: int, *, mode: Mode,
                      delimiters: ThinkingDelimiters, sampling: SamplingParams,
                      max_answer_tokens: int) -> list[BudgetedCompletion]:
    """Think for at most (cap) or exactly (force) `budget` tokens, then answer; one result per prompt.

    `sampling` gives temperature, top-p/k and seed (each phase and round draws with
    ``seed + its number``, so rounds are not correlated draws); its ``n`` must be 1 and its
    ``max_new_tokens`` is replaced per phase.
    """
    if mode not in ("cap", "force"):
        raise ValueError(f"think_with_budget: mode must be 'cap' or 'force', got {mode!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"think_with_budget: budget must be an int >= 0, got {budget!r}")
    if mode == "force" and budget > 0 and not delimiters.cue_ids:
        raise ValueError("think_with_budget: budget forcing needs a continuation cue of at least one token")
    if sampling.n != 1:
        raise ValueError("think_with_budget samples one continuation per prompt; repeat the prompts for more")
    results = [BudgetedCompletion(i, list(delimiters.open_ids), inserted_tokens=len(delimiters.open_ids))
               for i in range(len(prompt_ids))]
    close = list(delimiters.close_ids)
    thinking, to_answer = list(range(len(results))), []
    if budget == 0:  # no thinking: an empty segment, then the answer
        for result in results:
            _force_close(result, close)
        thinking, to_answer = [], thinking
    call = 0
    while thinking:
        # Rows left thinking may have used different amounts of their budget (force, after a cue):
        # one call covers the largest remainder and each row keeps only its own. What a row
        # sampled past its remainder is dropped and not counted: an engine with per-prompt limits
        # would not have sampled it. The close is not thinking, so room is left for it: a close
        # begun within the budget is let finish, not cut into a broken delimiter.
        remaining = {i: budget - results[i].thinking_tokens for i in thinking}
        outputs = engine.generate([list(prompt_ids[i]) + results[i].token_ids for i in thinking], dataclasses.replace(
            sampling, max_new_tokens=max(remaining.values()) + len(close), stop_sequences=[close],
            seed=_seed(sampling, call)))
        call += 1
        still = []
        for i, group in zip(thinking, outputs):
            outcome = _think_step(results[i], group[0], remaining[i], close, mode, delimiters.cue_ids)
            if outcome == "think":
                still.append(i)
            elif outcome == "answer":
                to_answer.append(i)
        thinking = still
    if to_answer:
        to_answer.sort()
        outputs = engine.generate([list(prompt_ids[i]) + results[i].token_ids for i in to_answer], dataclasses.replace(
            sampling, max_new_tokens=max_answer_tokens, stop_sequences=None, seed=_seed(sampling, call)))
        for i, group in zip(to_answer, outputs):
            answer = group[0]
            results[i].token_ids += answer.token_ids
            results[i].answer_tokens = len(answer.token_ids)
            results[i].answer_text = answer.text
            results[i].finish_reason = answer.finish_reason
    return results


def _think_step(result: BudgetedCompletion, out: Completion, remaining: int, close: list[int], mode: Mode,
                cue: tuple[int, ...]) -> Literal["think", "answer", "ended"]:
    """Fold one thinking round's output into `result` (`remaining`: its budget left before the
    round); what the row does next."""
    ids = list(out.token_ids)
    closed = out.finish_reason == "stop" and ids[-len(close):] == close
    content = ids[: len(ids) - len(close)] if closed else ids
    if closed and len(content) < remaining and mode == "force":
        # Budget forcing: the model closed before B. Cut its close off, append the cue, think on
        # (or, when the cue reaches B, close for it).
        result.token_ids += content + list(cue)
        result.thinking_tokens += len(content) + len(cue)
        result.suppressed_tokens += len(close)
        result.inserted_tokens += len(cue)
        result.cues += 1
        return "think" if len(content) + len(cue) < remaining else _force_close(result, close)
    if closed and len(content) <= remaining:
        # The model closed the segment itself, within its budget (cap; force: exactly at B).
        result.token_ids += ids
        result.thinking_tokens += len(content)
        return "answer"
    if out.finish_reason == "stop" and not closed and len(ids) <= remaining:
        # It stopped on its end-of-sequence inside the thinking: no answer follows.
        result.token_ids += ids
        result.thinking_tokens += len(ids)
        return "ended"
    # The budget ran out before the model closed (or it closed, or stopped, only past it): cut
    # at B and close for it.
    result.token_ids += content[:remaining]
    result.thinking_tokens += remaining
    return _force_close(result, close)


def _force_close(result: BudgetedCompletion, close: list[int]) -> Literal["answer"]:
    result.token_ids += close
    result.inserted_tokens += len(close)
    result.forced_close = True
    return "answer"


def _seed(sampling: SamplingParams, call: int) -> int | None:
    return None if sampling.seed is None else sampling.seed + call


def answer_part(text: str, open_text: str, close_text: str) -> str:
    """What a verifier should read of a completion from a thinking model: the text after the last
    close delimiter; "" when the segment was opened and never closed (the model ran out of tokens
    or stopped while thinking, so it gave no answer); the whole text when there is no segment."""
    if close_text and close_text in text:
        return text[text.rindex(close_text) + len(close_text):]
    if open_text and open_text in text:
        return ""
    return text
