"""Generation-based evaluation: accuracy of a model's completions under a reward function.

Greedy accuracy says what the model "knows"; sampled accuracy at the training temperature is
what RL actually sees, so recipes report both (DESIGN.md: a weak SFT start can be ~77 %
greedy but ~42 % sampled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


@dataclass
class EvalResult:
    accuracy: float          # fraction of completions with reward >= 1 (or > 0.5 for fractional rewards)
    mean_reward: float
    num_prompts: int
    num_unscorable: int      # reward function returned None
    generated_tokens: int
    completions: list[str]


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[list[str], int]:
    """Complete each prompt once. temperature 0 = greedy; otherwise pure sampling (no top-k/top-p).

    Returns the decoded completions (special tokens dropped) and the number of generated tokens
    (through EOS, for the compute ledger).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    eos_id = tokenizer.eos_token_id
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # evaluation is repeatable and leaves the training RNG stream untouched
    texts: list[str] = []
    generated = 0
    try:
        for start in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[start : start + batch_size]
            width = max(len(p) for p in chunk)
            # Left padding: every prompt ends at the same column, so new tokens line up.
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, ids in enumerate(chunk):
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids) :] = 1
            sampling: dict[str, Any] = (
                {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                if temperature > 0
                else {"do_sample": False}
            )
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                **sampling,
            )
            new_tokens = output[:, width:].cpu()
            for row in new_tokens.tolist():
                if eos_id in row:
                    row = row[: row.index(eos_id) + 1]
                else:
                    row = [t for t in row if t != pad_id]
                generated += len(row)
                texts.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return texts, generated


def score_completions(
    reward_fn: Callable[..., float | None],
    rows: Sequence[dict],
    completions: Sequence[str],
) -> tuple[list[float | None], int]:
    """Reward of each completion; rows are dicts with `prompt` and the other dataset columns."""
    scores: list[float | None] = []
    for row, completion in zip(rows, completions):
        extras = {k: v for k, v in row.items() if k != "prompt"}
        scores.append(reward_fn(row["prompt"], completion, **extras))
    return scores, sum(s is None for s in scores)


def evaluate_accuracy(
    model,
    tokenizer,
    rows: Sequence[dict],
    prompt_ids: Sequence[Sequence[int]],
    reward_fn: Callable[..., float | None],
    *,
    max_new_tokens: int,
    temperature: float,
    batch_size: int = 64,
    seed: int = 0,
) -> EvalResult:
    completions, generated = generate_texts(
        model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
        batch_size=batch_size, seed=seed,
    )
    scores, unscorable = score_completions(reward_fn, rows, completions)
    valid = [s for s in scores if s is not None and not math.isnan(s)]
    correct = sum(1 for s in valid if s >= 0.5)
    return EvalResult(
        accuracy=correct / len(valid) if valid else float("nan"),
        mean_reward=sum(valid) / len(valid) if valid else float("nan"),
        num_prompts=len(rows),
        num_unscorable=unscorable,
        generated_tokens=generated,
        completions=completions,
    )
