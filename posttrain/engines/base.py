"""The rollout-engine contract: what the RL loop asks of any generator (in-process HF, vLLM, Ray workers).

The loop does three things with an engine::

    completions = engine.generate(prompt_ids, sampling)   # sample
    ...train on completions...
    engine.load_weights(policy)                           # sync the new weights
    engine.shares_weights(policy)                         # same parameters? (then no sync is needed)
    engine.close()                                        # at the end of the run

Records are plain dataclasses of ints, floats and strings so they cross process boundaries
(Ray, multiprocessing) without custom serialisation.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

__all__ = ["Completion", "Engine", "SamplingParams", "check_generate_call", "sampling_seed", "validate_prompt_ids"]


@dataclass
class SamplingParams:
    """How to sample completions.

    Attributes:
        max_new_tokens: most tokens generated per completion (the stop token included), >= 1.
        temperature: logits are divided by it before the softmax; 0 means greedy (argmax).
        top_p: nucleus sampling; keep the smallest set of most likely tokens whose probability
            mass reaches ``top_p`` (1.0 = off). Applied after ``top_k``.
        top_k: keep only the ``top_k`` most likely tokens (0 = off).
        n: completions sampled per prompt.
        seed: seeds the engine's own random generator, so equal seeds give equal samples whatever
            the global RNG state. ``None`` draws the seed from torch's global RNG (so
            ``torch.manual_seed`` still makes a run reproducible).
        stop_token_ids: extra tokens that end a completion, on top of the tokenizer's EOS.
        stop_sequences: token-id sequences that end a completion as soon as its generated tokens
            end with one (the sequence is kept in ``token_ids`` and ``text``, as a stop token is
            kept in ``token_ids``). For delimiters that are several tokens long, such as
            ``</think>`` in a tokenizer without it as a special token: the thinking-budget
            controller (``posttrain/scaling/thinking.py``) stops a thinking phase on it. Matched on
            generated tokens only, not across the prompt boundary.

    Top-k and top-p change *which* tokens can be sampled, not the log-probs reported in
    :class:`Completion` (see there).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    stop_sequences: list[list[int]] | None = None

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        _check_int("n", self.n, minimum=1)
        _check_int("top_k", self.top_k, minimum=0)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not (
            self.temperature >= 0 and self.temperature != float("inf")
        ):
            raise ValueError(f"SamplingParams.temperature must be a finite number >= 0 (0 = greedy), "
                             f"got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=0)
        if self.stop_token_ids is not None:
            if isinstance(self.stop_token_ids, (str, bytes)) or not isinstance(self.stop_token_ids, Sequence):
                raise ValueError(f"SamplingParams.stop_token_ids must be a list of token ids, "
                                 f"got {self.stop_token_ids!r}")
            for i, token in enumerate(self.stop_token_ids):
                _check_int(f"stop_token_ids[{i}]", token, minimum=0)
            self.stop_token_ids = list(self.stop_token_ids)
        if self.stop_sequences is not None:
            self.stop_sequences = _check_sequences(self.stop_sequences)

    @property
    def greedy(self) -> bool:
        """True when decoding is deterministic argmax (temperature 0)."""
        return self.temperature == 0


def _check_sequences(sequences: Any) -> list[list[int]]:
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence):
        raise ValueError(f"SamplingParams.stop_sequences must be a list of token-id lists, got {sequences!r}")
    out = []
    for i, sequence in enumerate(sequences):
        if isinstance(sequence, (str, bytes)) or not isinstance(sequence, Sequence) or len(sequence) == 0:
            raise ValueError(f"SamplingParams.stop_sequences[{i}] must be a non-empty list of token ids, "
                             f"got {sequence!r}")
        for j, token in enumerate(sequence):
            _check_int(f"stop_sequences[{i}][{j}]", token, minimum=0)
        out.append([int(token) for token in sequence])
    return out


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"SamplingParams.{name} must be an int >= {minimum}, got {value!r}")


@dataclass
class Completion:
    """One sampled continuation of one prompt.

    Attributes:
        prompt_index: position of the prompt in the list given to ``generate``.
        token_ids: the generated tokens, INCLUDING the stop token when one was produced: the EOS
            belongs to the response and is trained on (docs/architecture.md, "Keep EOS in the loss").
        logprobs: ``logprobs[i]`` is the sampler's log-prob of ``token_ids[i]`` under the
            temperature-scaled but UNFILTERED distribution, ``log_softmax(logits / T)`` over the full
            vocabulary. That is exactly what the trainer recomputes with
            :func:`posttrain.algorithms.logprobs.token_logprobs` at the same temperature, so the two
            agree up to float error. Top-k / top-p change what is sampled but not what is reported
            (a filtered-out token would otherwise have log-prob -inf). For T = 0 (greedy) the
            log-probs are reported at T = 1.
        text: the decoded completion, without the final stop token (other special tokens, and a
            stop sequence that ended it, are kept).
        finish_reason: ``"stop"`` when a stop token or stop sequence ended it, ``"length"`` at
            ``max_new_tokens``.
    """

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: Literal["stop", "length"]

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"Completion for prompt {self.prompt_index}: {len(self.token_ids)} token_ids but "
                             f"{len(self.logprobs)} logprobs")
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(f"Completion.finish_reason must be 'stop' or 'length', got {self.finish_reason!r}")


@runtime_checkable
class Engine(Protocol):
    """Anything that samples completions for token-id prompts and can take new weights."""

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[list[Completion]]:
        """Sample ``sampling.n`` completions for each prompt.

        Returns:
            One list per prompt, in prompt order; each inner list holds that prompt's ``n``
            completions (all with ``prompt_index`` equal to the prompt's position).
        """
        ...

    def load_weights(self, source: nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Make the engine sample from ``source``'s weights (a module or a state dict)."""
        ...

    def shares_weights(self, model: nn.Module) -> bool:
        """Whether the engine samples from ``model``'s very parameters (an in-process engine over
        the trained module). When it does not (a copy, another process, vLLM), the sampler's
        log-probs are the old log-probs of the update, and their gap to the trainer's is the
        health check of the weight sync."""
        ...

    def close(self) -> None:
        """Release whatever the engine holds (processes, GPU memory); idempotent."""
        ...


def validate_prompt_ids(prompt_ids: Sequence[Sequence[int]], vocab_size: int | None = None) -> list[list[int]]:
    """Check a batch of prompts and return it as plain lists of ints.

    Raises:
        ValueError: naming the offending prompt (and position) when the batch is empty, a prompt
            is empty or not a sequence, or an id is not an int in ``[0, vocab_size)``.
    """
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence):
        raise ValueError(f"prompt_ids must be a list of token-id lists, got {type(prompt_ids).__name__}")
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: give at least one prompt")
    out: list[list[int]] = []
    for i, prompt in enumerate(prompt_ids):
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.tolist()
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
            raise ValueError(f"prompt {i}: expected a list of token ids, got {type(prompt).__name__} "
                             "(tokenize text first, e.g. with posttrain.data.tokenize.tokenize_prompt)")
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        for j, token in enumerate(prompt):
            if isinstance(token, bool) or not isinstance(token, numbers.Integral) or token < 0 or (
                vocab_size is not None and token >= vocab_size
            ):
                bound = f" in [0, {vocab_size})" if vocab_size is not None else " >= 0"
                raise ValueError(f"prompt {i}, position {j}: token id {token!r} is not an int{bound}")
        out.append([int(token) for token in prompt])
    return out


def check_generate_call(engine: str, closed: bool, prompt_ids: Sequence[Sequence[int]], sampling: Any,
                        vocab_size: int | None = None) -> list[list[int]]:
    """What every engine's ``generate`` checks first: that the engine (named ``engine`` in the
    error) is open, that ``sampling`` is a :class:`SamplingParams`, and the prompts
    (:func:`validate_prompt_ids`); returns the prompts as plain lists of ints."""
    if closed:
        raise RuntimeError(f"{engine}.generate: the engine is closed")
    if not isinstance(sampling, SamplingParams):
        raise TypeError(f"{engine}.generate: sampling must be a SamplingParams, got {type(sampling).__name__}")
    return validate_prompt_ids(prompt_ids, vocab_size)


def sampling_seed(sampling: SamplingParams) -> int:
    """The seed a ``generate`` call samples with: ``sampling.seed``, else a draw from torch's global
    RNG, so that ``torch.manual_seed`` still makes a whole run reproducible."""
    return sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
