"""A trained reward model as a reward function: `reward_model:/path/to/dir` in a config.

`RewardModelScorer(dir)` is a plain reward function ``(prompt, completion, **row) -> float``
like every verifier, plus a ``batch(prompts, completions, rows)`` method, which `RewardRunner`
calls when it exists: a whole rollout batch is then scored in a few forward passes instead of
one per completion.

The (prompt, completion) pair is rendered exactly as the reward-model recipe rendered its
training pairs: `tokenize_sft` on the pair, the same function `tokenize_preference` runs on each
side of a preference pair (a message-list prompt goes through the chat template with the
completion as the assistant turn; a text prompt is encoded as is with EOS after the completion).
So a score at RL time means what it meant in training.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from posttrain.data.collate import pad_sequences
from posttrain.data.examples import SFTExample
from posttrain.data.tokenize import tokenize_sft
from posttrain.models.device import model_device
from posttrain.models.loading import load_tokenizer
from posttrain.models.scalar_head import load_scalar_model, sequence_scores
from posttrain.verifiers.workers import Outcome

PREFIX = "reward_model:"


class RewardModelScorer:
    """Scores completions with a reward model saved by `posttrain reward-model`.

    Args:
        model_dir: a directory `AutoModelForSequenceClassification.from_pretrained` reads, with
            its tokenizer.
        device: "auto" (GPU when there is one), "cpu", "cuda[:N]".
        dtype: as in `load_causal_lm`.
        batch_size: sequences per forward pass in `batch` (a rollout batch up to this size is scored
            in one forward).
    """

    def __init__(self, model_dir: str | Path, *, device: str = "auto", dtype: str = "float32",
                 batch_size: int = 256) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = str(model_dir)
        self.__name__ = f"{PREFIX}{self.model_dir}"
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = load_scalar_model(self.model_dir, pad_token_id=self.tokenizer.pad_token_id, dtype=dtype,
                                       device=device)
        self.model.eval()  # dropout off: a reward is a deterministic function of the text
        self.model.requires_grad_(False)
        self.batch_size = batch_size
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", 10**9))

    def encode(self, prompt: Any, completion: Any) -> list[int]:
        """The token ids the reward model reads for this pair (as in training)."""
        return tokenize_sft(SFTExample(prompt, completion), self.tokenizer, self.max_length).input_ids

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Scores of already-encoded sequences, `batch_size` at a time (right-padded)."""
        device = model_device(self.model)
        pad_id = self.tokenizer.pad_token_id
        scores: list[float] = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start : start + self.batch_size]
            input_ids = pad_sequences(chunk, pad_id).to(device)
            attention = pad_sequences([[1] * len(s) for s in chunk], 0).to(device)
            scores.extend(sequence_scores(self.model, input_ids, attention).cpu().tolist())
        return scores

    def __call__(self, prompt: Any, completion: Any, **row: Any) -> float:
        return self.score_ids([self.encode(prompt, completion)])[0]

    def batch(self, prompts: Sequence[Any], completions: Sequence[Any],
              rows: Sequence[Mapping[str, Any]]) -> list[Outcome]:
        """One `Outcome` per item; an item that cannot be rendered fails alone, not the batch."""
        outcomes: list[Outcome | None] = [None] * len(completions)
        encoded, where = [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            try:
                encoded.append(self.encode(prompt, completion))
                where.append(i)
            except Exception:  # noqa: BLE001 - reported on this item, counted by RewardRunner
                outcomes[i] = Outcome("error", error=traceback.format_exc())
        for i, score in zip(where, self.score_ids(encoded) if encoded else []):
            outcomes[i] = Outcome("ok", value=score)
        return outcomes  # type: ignore[return-value]


def reward_model_reward(spec: str) -> RewardModelScorer:
    """`reward_model:/path/to/dir` → a scorer for that directory (device "auto")."""
    if not spec.startswith(PREFIX) or not spec[len(PREFIX):].strip():
        raise ValueError(f"reward model spec {spec!r} must look like '{PREFIX}/path/to/model_dir'")
    path = Path(spec[len(PREFIX):].strip()).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"reward model {spec!r}: {path} has no config.json; give the directory "
                                "`posttrain reward-model` saved (<run>/model)")
    return RewardModelScorer(path)
