"""Held-out accuracy for RL runs, generated with the rollout engine (greedy and sampled).

The held-out completions are scored by a `RewardRunner` (`rl_eval_reward_runner`), so the
`reward` section's timeout and on_error apply here as in training and failed calls are counted
(``eval/reward_errors_*``) instead of hanging the run or turning into a silent null accuracy.
"""

from __future__ import annotations

from typing import Callable

from posttrain.recipes.rl.multi_turn import episode_generator
from posttrain.evaluation import Scorer, as_runner, eval_reward_runner, evaluate_accuracy, result_metrics
from posttrain.verifiers.combine import RewardRunner


def rl_eval_reward_runner(cfg, *, warn: Callable[[str], None] | None = None,
                          share: RewardRunner | None = None) -> RewardRunner:
    """The runner that scores held-out completions of an RL run (an `RLConfig`): the reward
    `eval.reward`, else the first of `reward.functions` (accuracy needs one 0/1-like score, not
    the weighted total), under `eval.timeout_s` / `eval.on_error` when set, else
    `reward.timeout_s` / `reward.on_error`.

    `share`: the training runner; when `eval.timeout_s` / `eval.on_error` are unset and it holds
    the reward, its wrapped function is reused (no second reward model, no second worker).
    Close the returned runner at the end of the run (it is a context manager).
    """
    name = cfg.eval.reward or cfg.reward.functions[0]
    on_error = cfg.eval.on_error or cfg.reward.on_error
    timeout_s = cfg.eval.timeout_s or cfg.reward.timeout_s
    same_limits = cfg.eval.on_error is None and cfg.eval.timeout_s is None
    return eval_reward_runner(name, on_error=on_error, timeout_s=timeout_s, warn=warn,
                              share=share if same_limits else None)


def evaluate_prompts(engine, prompts, reward_fn: Scorer, cfg, ledger, n_params, *, episodes=None) -> dict:
    """Greedy accuracy, and sampled accuracy at the rollout temperature, on held-out prompts.

    `reward_fn`: the runner from `rl_eval_reward_runner` (preferred), or a plain reward function
    (then wrapped in a runner for this call, with the `reward` section's timeout and on_error).

    Sampled accuracy uses the same settings before and after training (same prompts, seed and
    temperature), so the two numbers compare like with like. Beside each accuracy:
    ``eval/reward_<label>``, ``eval/reward_errors_<label>`` and ``eval/unscorable_<label>``;
    ``eval/reward_errors`` adds up both settings.

    `episodes`: `(make_env, tokenizer, limits)` for a multi-turn run: each held-out row is played
    as a whole episode and its final answer scored; ``eval/episodes_<label>/*`` say how the
    episodes went (turns, stops, tool errors).
    """
    rows = prompts.rows[: cfg.eval.num_samples]
    prompt_ids = prompts.prompt_ids[: cfg.eval.num_samples]
    if not rows:
        return {}
    if isinstance(reward_fn, RewardRunner):
        runner_cm = as_runner(reward_fn)
    else:
        runner_cm = eval_reward_runner(reward_fn, on_error=cfg.eval.on_error or cfg.reward.on_error,
                                       timeout_s=cfg.eval.timeout_s or cfg.reward.timeout_s)
    metrics: dict[str, float] = {"eval/num_prompts": float(len(rows))}
    errors = 0
    with runner_cm as runner:
        for label, temperature in (("greedy", 0.0), ("sampled", cfg.rollout.temperature)):
            stats: list = []
            generate = None if episodes is None else episode_generator(engine, *episodes, stats=stats)
            result = evaluate_accuracy(engine, rows, prompt_ids, runner, max_new_tokens=cfg.rollout.max_new_tokens,
                                       temperature=temperature, seed=cfg.run.seed + 7, top_p=cfg.rollout.top_p,
                                       top_k=cfg.rollout.top_k, samples_per_prompt=cfg.eval.samples_per_prompt,
                                       generate=generate)
            read = sum(map(len, prompt_ids))  # one prefill per prompt; episodes re-read their history each turn
            if stats:
                read = stats[0].prefill_tokens
                metrics.update(stats[0].metrics(prefix=f"eval/episodes_{label}"))
            ledger.record("eval", tokens=result.generated_tokens + read, params=n_params)
            metrics.update(result_metrics(result, label))
            errors += result.num_errors
    metrics["eval/reward_errors"] = float(errors)
    return metrics
