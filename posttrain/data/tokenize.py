"""Turn examples into token ids plus a loss mask (1 = the model is trained to predict this token).

Conversations are rendered with the tokenizer's own chat template. Assistant tokens are found
without knowing anything about the template: for assistant turn i, the text rendered for
``messages[:i]`` with the generation prompt must be a prefix of the text for ``messages[:i+1]``,
which must be a prefix of the whole conversation; the characters in between are the turn, and
the tokenizer's offset mapping says which tokens they became. The span is cut right after the
turn's last EOS token, so the end-of-turn token is learned but template glue after it (e.g.
ChatML's trailing newline) is not.

We render to text and tokenise with ``add_special_tokens=False`` rather than calling
``apply_chat_template(tokenize=True)``: that returns a `BatchEncoding` dict in transformers 5.x
but a plain list in 4.x, and the text path gives us offsets too. Both produce the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from posttrain.data.examples import Message, PreferenceExample, PromptExample, SFTExample, Text
from posttrain.data.readers import DataError


@dataclass(frozen=True)
class TokenizedExample:
    """input_ids and loss_mask, both of length T; loss_mask[t] = 1 when token t is a target."""

    input_ids: list[int]
    loss_mask: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError(f"input_ids ({len(self.input_ids)}) and loss_mask ({len(self.loss_mask)}) differ in length")

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class TokenizedPair:
    """A preference pair; both sequences start with the same `prompt_length` prompt tokens and
    have loss_mask 1 only on response tokens."""

    chosen: TokenizedExample
    rejected: TokenizedExample
    prompt_length: int


def render_chat(tokenizer: Any, messages: list[Message], *, add_generation_prompt: bool,
                tools: list[dict] | None = None) -> str:
    """The chat template's text for `messages` (no tokenisation); `tools` (JSON schemas) go to the
    template's ``tools`` argument, which shows them to the model (usually in the system turn)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template; conversational data needs one "
                         "(set tokenizer.chat_template, or use plain-text prompt/completion rows)")
    text = tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):  # defensive: some versions wrap a single rendering in a list
        text = text[0]
    return text


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids of a plain-text prompt: BOS (when the tokenizer has one distinct from EOS, as
    Llama-style models expect) followed by the text, no other special tokens."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    return ([bos] if bos is not None and bos != eos else []) + ids


def tokenize_prompt(example: PromptExample | SFTExample | PreferenceExample | Text, tokenizer: Any,
                    tools: list[dict] | None = None) -> list[int]:
    """Prompt ids for generation: a message list gets the chat template with the generation
    prompt (so the model continues as the assistant) and `tools`; a string is encoded as is
    (`encode_text`)."""
    prompt = example if isinstance(example, (str, list)) else example.prompt
    if isinstance(prompt, str):
        return encode_text(tokenizer, prompt)
    text = render_chat(tokenizer, prompt, add_generation_prompt=True, tools=tools)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_sft(example: SFTExample, tokenizer: Any, max_length: int) -> TokenizedExample:
    """Ids and loss mask for an SFT example.

    Conversational: every assistant turn of the completion is learned (content through its EOS /
    end-of-turn token); system, user, tool tokens and the prompt's assistant turns are not.
    Plain text: ``encode_text(prompt) + completion ids + [eos]``, loss on completion and EOS.

    Raises:
        DataError: longer than `max_length`, or the template breaks the prefix property.
    """
    if example.conversational:
        prompt = _as_messages(example.prompt, "user")
        messages = prompt + _as_messages(example.completion, "assistant")
        ids, mask = _tokenize_conversation(messages, len(prompt), tokenizer, example, tools=example.tools)
    else:
        ids, mask = _tokenize_plain(example.prompt, example.completion, tokenizer)
    _check_length(ids, max_length, example, None, mask)
    return TokenizedExample(ids, mask)


def tokenize_preference(example: PreferenceExample, tokenizer: Any, max_length: int) -> TokenizedPair:
    """Chosen and rejected sequences sharing the prompt, loss mask on the response tokens only.

    Raises:
        DataError: either sequence longer than `max_length` (naming 'chosen' or 'rejected').
    """
    sequences = {}
    for name, response in (("chosen", example.chosen), ("rejected", example.rejected)):
        if example.conversational:
            prompt = _as_messages(example.prompt, "user")
            messages = prompt + _as_messages(response, "assistant")
            ids, mask = _tokenize_conversation(messages, len(prompt), tokenizer, example)
        else:
            ids, mask = _tokenize_plain(example.prompt, response, tokenizer)
        _check_length(ids, max_length, example, name, mask)
        sequences[name] = TokenizedExample(ids, mask)
    chosen, rejected = sequences["chosen"], sequences["rejected"]
    # Both share the prompt tokens up to the first masked (response) token.
    prompt_length = min(chosen.loss_mask.index(1), rejected.loss_mask.index(1))
    return TokenizedPair(chosen, rejected, prompt_length)


# ----------------------------------------------------------------------------- helpers


def _as_messages(text: Text, role: str) -> list[Message]:
    """A message list as is; a string (e.g. a reply after a conversational prompt) as one message."""
    return list(text) if isinstance(text, list) else [{"role": role, "content": text}]


def _tokenize_plain(prompt: str, completion: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; plain-text completions end with it")
    prompt_ids = encode_text(tokenizer, prompt)
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [eos]
    return prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids)


def _tokenize_conversation(messages: list[Message], train_from: int, tokenizer: Any,
                           example: Any, tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """Ids of the rendered conversation and a mask that is 1 on assistant turns with index >=
    `train_from` (see the module docstring for how the turns are located)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("conversational loss masks need a fast tokenizer (for its offset mapping); "
                         "load it with use_fast=True")
    full = render_chat(tokenizer, messages, add_generation_prompt=False, tools=tools)
    spans = []
    for i in range(max(train_from, 1), len(messages)):
        if messages[i]["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        through = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False, tools=tools)
        if not (through.startswith(before) and full.startswith(through)):
            raise DataError(example.source, example.row, None,
                            f"the chat template does not render message {i}'s history as a prefix of the "
                            "conversation, so its assistant tokens cannot be located; use a template "
                            "whose renderings of shorter conversations are prefixes of longer ones")
        start, end = len(before), len(through)
        eos = getattr(tokenizer, "eos_token", None)
        last_eos = full.rfind(eos, start, end) if eos else -1
        if last_eos >= 0:
            end = last_eos + len(eos)
        spans.append((start, end))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    # A token is a target when it starts inside a span; a token straddling the start of a turn
    # (merged with template text before it) stays unmasked, which only drops that one token.
    mask = [int(any(s <= tok_start < e for s, e in spans)) for tok_start, _ in enc["offset_mapping"]]
    if not any(mask):
        raise DataError(example.source, example.row, None, "no assistant tokens to train on after rendering")
    return ids, mask


def _check_length(ids: Sequence[int], max_length: int, example: Any, field: str | None,
                  mask: Sequence[int] | None = None) -> None:
    if len(ids) > max_length:
        # Name the prompt when it alone leaves no room: shortening the response would not help.
        prompt_tokens = list(mask).index(1) if mask is not None and 1 in mask else 0
        if prompt_tokens >= max_length:
            raise DataError(example.source, example.row, "prompt",
                            f"{prompt_tokens} prompt tokens before the response, longer than max_length={max_length}")
        raise DataError(example.source, example.row, field,
                        f"{len(ids)} tokens, longer than max_length={max_length}")
