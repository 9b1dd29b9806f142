"""Held-out accuracy for RL runs, generated with the rollout engine (greedy and sampled)."""

from __future__ import annotations

from posttrain.evaluation import evaluate_accuracy


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
    for label, temperature in (("greedy", 0.0), ("sampled", cfg.rollout.temperature)):
        result = evaluate_accuracy(engine, rows, prompt_ids, reward_fn, max_new_tokens=cfg.rollout.max_new_tokens,
                                   temperature=temperature, seed=cfg.run.seed + 7, top_p=cfg.rollout.top_p,
                                   top_k=cfg.rollout.top_k, samples_per_prompt=cfg.eval.samples_per_prompt)
        ledger.record("eval", tokens=result.generated_tokens + sum(map(len, prompt_ids)), params=n_params)
        metrics[f"eval/accuracy_{label}"] = result.accuracy
        metrics[f"eval/reward_{label}"] = result.mean_reward
    return metrics
