"""Held-out accuracy for RL runs, generated with the rollout engine (greedy and sampled)."""

from __future__ import annotations

import math

from posttrain.engines.base import SamplingParams
from posttrain.evaluation import score_completions


def evaluate_prompts(engine, prompts, reward_fn, cfg, ledger, n_params) -> dict:
    """Greedy accuracy, and sampled accuracy at the rollout temperature, on held-out prompts.

    Sampled accuracy uses the same settings before and after training (same prompts, seed and
    temperature), so the two numbers compare like with like.
    """
    rows = prompts.rows[: cfg.eval.num_samples]
    prompt_ids = prompts.prompt_ids[: cfg.eval.num_samples]
    if not rows:
        return {}
    metrics: dict[str, float] = {"eval/num_prompts": float(len(rows))}
    settings = [("greedy", 0.0), ("sampled", cfg.rollout.temperature)]
    for label, temperature in settings:
        sampling = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=temperature,
                                  top_p=cfg.rollout.top_p if temperature > 0 else 1.0,
                                  top_k=cfg.rollout.top_k if temperature > 0 else 0, n=1, seed=cfg.run.seed + 7)
        completions = [group[0] for group in engine.generate(prompt_ids, sampling)]
        ledger.record("eval", tokens=sum(len(c.token_ids) for c in completions) + sum(map(len, prompt_ids)),
                      params=n_params)
        scores, _ = score_completions(reward_fn, rows, [c.text for c in completions])
        valid = [s for s in scores if s is not None and not math.isnan(s)]
        metrics[f"eval/accuracy_{label}"] = sum(s >= 0.5 for s in valid) / len(valid) if valid else float("nan")
        metrics[f"eval/reward_{label}"] = sum(valid) / len(valid) if valid else float("nan")
    return metrics
