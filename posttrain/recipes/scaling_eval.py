"""`posttrain eval`: a model on a held-out set, n samples per prompt, and what k of them buy.

    posttrain eval model.name_or_path=runs/sft/final data.train=builtin:arithmetic samples=16

One pass generates `samples` completions per prompt at `temperature` (plus one greedy
completion, which at temperature 0 is also sample 0), scores each through the reward runner the
trainers use (timeout, on_error, error counts), and keeps every sample in `<out>/samples.jsonl`
(prompt id, sample index, text, extracted answer, score, weight, tokens). From those records,
for every k in `ks`: pass@k and pass^k (unbiased), maj@k (answers bucketed by the reward's own
equivalence), and, with `weights` set (a reward model `reward_model:<dir>` or any reward name; its
score goes through a logistic, so any real number works), weighted majority and best-of-k -- each
with a bootstrap interval over prompts and the generated tokens and FLOPs per problem that k
samples cost. Written as `eval.json`, `eval.png` (accuracy against tokens per problem) and a
terminal table.

A stopped evaluation resumes: prompts already in samples.jsonl are not generated again (their
batch's seed is fixed by its position, so the result is the one an uninterrupted run gets). A
samples.jsonl written with other settings is refused, naming the setting.

The prompts may be benchmark files as published (`data.format`, posttrain/data/benchmarks.py):
`data.eval=builtin:humaneval reward=code`, or a GSM8K / MATH JSONL with `reward=math`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Optional, Union

from posttrain.config import ConfigError, DataConfig, ModelConfig, PrecisionName, require
from posttrain.recipes.sequential_eval import (RevisionConfig, ThinkingConfig, answer_reader, format_sequential_table,
                                               run_sequential)

# What a samples.jsonl was made with; a resume with any other value is refused. `data` covers
# data.format too: the same file read as another format is other prompts, answers or tests.
SETTINGS = ("model", "data", "engine", "reward", "weights", "samples", "temperature", "top_p", "max_new_tokens", "seed")


@dataclasses.dataclass
class ScalingEvalConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    # The held-out prompts: data.eval when given, else the source's own test split (built-in
    # tasks), else a seeded data.eval_fraction of data.train.
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    out: str = "runs/eval"
    # What samples: `hf` (in-process) or `package.module:function(model, tokenizer)` returning an engine.
    engine: str = "hf"
    reward: str = "arithmetic"
    # Voting / reranking weights for weighted majority and best-of-k (null: those are skipped).
    weights: Union[str, None] = None
    num_prompts: Union[int, None] = None  # the first N held-out prompts; null = all
    samples: int = 16
    ks: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16])
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    prompts_per_batch: int = 16  # generated, scored and appended to samples.jsonl together
    seed: int = 0
    timeout_s: float = 30.0
    on_error: str = "zero"
    # The sampler's forward: fp32, bf16-mixed (bf16 autocast) or auto (posttrain/training/precision.py);
    # the same choice a training run makes, so an evaluation matches how the model was sampled there.
    precision: PrecisionName = "fp32"
    # Sandbox protections a sandboxed reward (code) must have here, else the evaluation refuses to
    # start (as reward.sandbox.require in training): filesystem, network, processes.
    sandbox_require: list[str] = dataclasses.field(default_factory=list)
    confidence: float = 0.95
    bootstrap_resamples: int = 1000
    overwrite: bool = False
    # Earlier `posttrain eval` outputs (eval.json or its directory) drawn on the same plot, e.g. the
    # base and SFT models next to the RL one.
    compare_with: list[str] = dataclasses.field(default_factory=list)
    # Sequential scaling (posttrain/recipes/sequential_eval.py), rows next to the parallel ones:
    # thinking budgets, and revisions with the verifier's feedback (an oracle: an upper bound).
    # With `thinking` set, every completion is scored on its text after the close delimiter.
    thinking: Union[ThinkingConfig, None] = None
    revision: Union[RevisionConfig, None] = None

    def validate(self) -> None:
        require(self.samples >= 1, f"samples must be >= 1, got {self.samples}")
        require(bool(self.ks) and all(1 <= k <= self.samples for k in self.ks),
                f"ks must be between 1 and samples={self.samples}, got {self.ks}")
        require(self.temperature > 0 or self.samples == 1, "temperature 0 gives one distinct sample: set samples=1")
        require(self.prompts_per_batch >= 1, f"prompts_per_batch must be >= 1, got {self.prompts_per_batch}")
        require(self.on_error in ("zero", "none", "raise"), f"on_error must be zero, none or raise, got {self.on_error!r}")
        for section in (self.thinking, self.revision):
            if section is not None:
                section.validate()


# -- answers: what a vote counts --------------------------------------------------------------

def answer_extractor(reward: str) -> tuple[Callable[[str], Optional[Hashable]], Optional[Callable]]:
    """(extract, equivalent) for a reward: the final answer a completion gives, and when two
    answers are the same one, by that reward's own rules. Rewards without answers (code) vote
    with their whole completion text."""
    if reward in ("math", "math_lenient"):
        from posttrain.verifiers.math import final_answer_text, score_math

        def extract(text: str) -> Optional[str]:
            answer, _hedged = final_answer_text(text)
            return answer

        def equivalent(a: str, b: str) -> bool:
            return bool(score_math(f"\\boxed{{{b}}}", a, strict=False))

        return extract, equivalent
    if reward == "arithmetic":
        from posttrain.envs.arithmetic import extract_integer

        return extract_integer, None
    return (lambda text: text.strip() or None), None


# -- the samples file --------------------------------------------------------------------------

def _settings(cfg: ScalingEvalConfig) -> dict:
    values = dataclasses.asdict(cfg)
    settings = {key: values[key] for key in SETTINGS}
    if cfg.thinking is not None:  # the rewards read the text after the close delimiter
        settings["answer_after"] = cfg.thinking.close
    if cfg.precision != "fp32":  # bf16 samples other tokens; fp32 files written before the key stay valid
        settings["precision"] = cfg.precision
    return settings


def read_samples(path: Path, settings: dict) -> dict[int, list[dict]]:
    """Records of an earlier pass, by prompt id; refuses one made with other settings."""
    done: dict[int, list[dict]] = {}
    if not path.exists():
        return done
    with path.open(encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines:
        return done
    header = json.loads(lines[0]).get("settings", {})
    # Keys on either side: one written only when set (precision, answer_after) must be refused too.
    for key in [*settings, *(k for k in header if k not in settings)]:
        written, value = header.get(key), settings.get(key)
        if written != value:
            key, written, value = _first_difference(key, written, value)
            raise ConfigError(f"{path} was written with {key}={written!r}, not "
                              f"{value!r}: set out= to a new directory, or overwrite=true to start again")
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # a line cut short by a kill: regenerate its prompt
                break
            raise ValueError(f"{path}, line {number}: not JSON") from None
        done.setdefault(record["prompt_id"], []).append(record)
    # A prompt cut short by a kill is generated again and appended whole: keep its last full set.
    full = settings["samples"] + 1
    return {p: recs[-full:] for p, recs in done.items() if len(recs) >= full}


def _first_difference(key: str, written: Any, value: Any) -> tuple[str, Any, Any]:
    """The dotted key of the first nested field that differs (data.format, not the whole data
    section), with both values."""
    if isinstance(written, dict) and isinstance(value, dict):
        for sub in sorted(set(written) | set(value)):
            if written.get(sub) != value.get(sub):
                return _first_difference(f"{key}.{sub}", written.get(sub), value.get(sub))
    return key, written, value


# -- metrics from records -----------------------------------------------------------------------

def strategy_table(records: dict[int, list[dict]], ks: list[int], *, equivalent: Optional[Callable] = None,
                   weighted: bool = False, confidence: float = 0.95, resamples: int = 1000, seed: int = 0,
                   flops_per_token: float = 0.0) -> list[dict]:
    """One entry per (strategy, k): accuracy, its interval, tokens and FLOPs per problem."""
    from posttrain.scaling import (Sample, best_of_k, bootstrap_interval, majority_at_k, pass_at_k, pass_hat_k,
                                   weighted_majority_at_k)
    from posttrain.scaling.estimators import is_correct

    prompts = sorted(records)
    sampled = {p: [r for r in records[p] if r["sample"] >= 0] for p in prompts}
    greedy = {p: [r for r in records[p] if r["sample"] < 0] for p in prompts}
    table = []

    def add(strategy: str, k: int, values: list[float], tokens: float) -> None:
        lo, hi = bootstrap_interval(values, confidence=confidence, resamples=resamples, seed=seed)
        table.append({"strategy": strategy, "k": k, "accuracy": sum(values) / len(values), "interval": [lo, hi],
                      "tokens_per_problem": tokens, "flops_per_problem": tokens * flops_per_token,
                      "num_prompts": len(values)})

    if all(greedy[p] for p in prompts):
        values = [float(is_correct(Sample(score=greedy[p][0]["score"]))) for p in prompts]
        add("greedy", 1, values, _mean(greedy[p][0]["prompt_tokens"] + greedy[p][0]["tokens"] for p in prompts))
    samples = {p: [Sample(r["answer"], r["score"], _vote_weight(r.get("weight")) if weighted else None)
                   for r in sampled[p]] for p in prompts}
    per_sample_tokens = _mean(r["prompt_tokens"] + r["tokens"] for p in prompts for r in sampled[p])
    for k in ks:
        tokens = k * per_sample_tokens
        counts = [(len(samples[p]), sum(is_correct(s) for s in samples[p])) for p in prompts]
        add("pass@k", k, [pass_at_k(n, c, k) for n, c in counts], tokens)
        add("pass^k", k, [pass_hat_k(n, c, k) for n, c in counts], tokens)
        add("maj@k", k, [majority_at_k(samples[p], k, equivalent=equivalent, seed=seed) for p in prompts], tokens)
        if weighted:
            add("weighted_maj@k", k, [weighted_majority_at_k(samples[p], k, equivalent=equivalent, seed=seed)
                                      for p in prompts], tokens)
            add("best_of_k", k, [best_of_k(samples[p], k) for p in prompts], tokens)
    return table


def _vote_weight(weight: Optional[float]) -> float:
    """A weight for votes: the weighting reward's score squashed to (0, 1) by a logistic, since a
    reward model's scores are any real number (order kept: best-of-k is unchanged by it); a sample
    the weighting reward could not score weighs 0."""
    if weight is None or math.isnan(weight):
        return 0.0
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, weight))))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def format_table(table: list[dict]) -> str:
    lines = [f"{'strategy':<16}{'k':>4}{'accuracy':>10}   {'interval':<15}{'tokens/problem':>16}"]
    for row in table:
        lo, hi = row["interval"]
        lines.append(f"{row['strategy']:<16}{row['k']:>4}{row['accuracy']:>10.3f}   [{lo:.3f}, {hi:.3f}]"
                     f"{row['tokens_per_problem']:>16.0f}")
    return "\n".join(lines)


def plot_table(table: list[dict], path: Path, title: str, others: Optional[dict[str, list[dict]]] = None) -> None:
    """Accuracy against tokens per problem, one line per strategy; `others` (label -> an earlier
    eval.json's strategies) are drawn on the same axes, each model in its own line style and
    marker, a strategy keeping its colour across models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    strategies = list(dict.fromkeys(row["strategy"] for row in table))
    colours = {strategy: f"C{i % 10}" for i, strategy in enumerate(strategies)}
    # Colour = strategy, line style and marker = model: compared models must stay apart.
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]
    series = [("", table)] + [(f"{label}: ", rows) for label, rows in (others or {}).items()]
    for number, (prefix, rows_of) in enumerate(series):
        style, marker = styles[number % len(styles)]
        drawn: dict[tuple, str] = {}
        for strategy in strategies:
            rows = [r for r in rows_of if r["strategy"] == strategy]
            if not rows:
                continue
            x = [r["tokens_per_problem"] for r in rows]
            y = [r["accuracy"] for r in rows]
            err = [[r["accuracy"] - r["interval"][0] for r in rows], [r["interval"][1] - r["accuracy"] for r in rows]]
            # A strategy on exactly another's points (best-of-k reranked by the verifier itself is
            # pass@k) hides that line: the legend says so instead of the line seeming to be missing.
            same = drawn.setdefault((tuple(x), tuple(y)), strategy)
            label = prefix + strategy + (f" (= {same})" if same != strategy else "")
            ax.errorbar(x, y, yerr=err, marker=marker, markersize=4, capsize=3, linestyle=style,
                        color=colours[strategy], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("prompt + generated tokens per problem (log)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # off the points
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def earlier_results(paths: list[str]) -> dict[str, list[dict]]:
    """label (the model) -> strategies, from earlier `eval.json` files (or their directories)."""
    results = {}
    for path in paths:
        file = Path(path) / "eval.json" if Path(path).is_dir() else Path(path)
        try:
            saved = json.loads(file.read_text(encoding="utf-8"))
            results[str(saved["model"])] = saved["strategies"]
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"compare_with: {file} is not an eval.json of `posttrain eval` ({err})") from None
    return results


# -- the command ---------------------------------------------------------------------------------

def run_eval(cfg: ScalingEvalConfig) -> dict:
    """Generate what is missing from samples.jsonl, then write eval.json, eval.png and the table."""
    import torch

    from posttrain.compute import matmul_params
    from posttrain.engines.base import SamplingParams
    from posttrain.engines.factory import build_engine
    from posttrain.evaluation import eval_reward_runner, score_report
    from posttrain.models.build import load_model_and_tokenizer
    from posttrain.recipes.prompt_data import load_prompt_sets
    from posttrain.recipes.rl.rewards import check_sandbox
    from posttrain.training.precision import recipe_precision

    cfg.validate()
    others = earlier_results(cfg.compare_with)  # before any generation: a wrong path fails at once
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    samples_path = out / "samples.jsonl"
    if cfg.overwrite and samples_path.exists():
        samples_path.unlink()
    settings = _settings(cfg)
    records = read_samples(samples_path, settings)
    # Before the model loads: a refusal costs nothing. The trainers' check, under this command's key.
    check_sandbox(cfg.sandbox_require, [cfg.reward], key="sandbox_require")
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    model.eval()
    precision = recipe_precision(cfg)  # the trainers' resolution, from model.device and model.dtype
    print(f"posttrain eval: {precision.describe()}")
    engine = build_engine(cfg.engine, model, tokenizer, precision=precision)
    # Only the held-out rows are scored, so only they are checked against the reward (training rows of
    # another task need not have its columns), and with data.eval set data.train is not read at all.
    _, held = load_prompt_sets(cfg.data, tokenizer, seed=cfg.seed, eval_rewards=[cfg.reward], held_out_only=True)
    rows, prompt_ids = held.rows[: cfg.num_prompts], held.prompt_ids[: cfg.num_prompts]
    require(len(rows) > 0, f"no held-out prompts in {cfg.data.eval or cfg.data.train}")
    extract, equivalent = answer_extractor(cfg.reward)
    if not samples_path.exists() or samples_path.stat().st_size == 0:
        samples_path.write_text(json.dumps({"settings": settings}) + "\n", encoding="utf-8")
    read_answer = answer_reader(cfg.thinking)
    start = time.perf_counter()
    with eval_reward_runner(cfg.reward, on_error=cfg.on_error, timeout_s=cfg.timeout_s) as scorer, \
            _weights_runner(cfg) as weigher, torch.no_grad():
        for first in range(0, len(rows), cfg.prompts_per_batch):
            ids = [i for i in range(first, min(first + cfg.prompts_per_batch, len(rows)))
                   if len(records.get(i, [])) < cfg.samples + 1]
            if not ids:
                continue
            batch_seed = cfg.seed + first  # fixed by the batch's position: a resumed run matches
            greedy = engine.generate([prompt_ids[i] for i in ids], SamplingParams(
                max_new_tokens=cfg.max_new_tokens, temperature=0.0, n=1, seed=batch_seed))
            # At temperature 0 the one sample (validate: samples=1) is the greedy completion: it is
            # recorded as sample 0 too, so pass@1 is the greedy accuracy, without generating or
            # scoring it twice.
            sampled = engine.generate([prompt_ids[i] for i in ids], SamplingParams(
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.samples,
                seed=batch_seed)) if cfg.temperature > 0 else [[] for _ in ids]
            batch = [(i, j, c) for i, g, s in zip(ids, greedy, sampled) for j, c in [(-1, g[0]), *enumerate(s)]]
            batch_rows = [rows[i] for i, _, _ in batch]
            texts = [c.text for _, _, c in batch]
            answers = [read_answer(t) for t in texts]  # what the rewards and the vote read
            scores = score_report(scorer, batch_rows, answers).total
            weights = score_report(weigher, batch_rows, answers).total if weigher is not None else [None] * len(batch)
            with samples_path.open("a", encoding="utf-8") as f:
                for (i, j, completion), text, answer, score, weight in zip(batch, texts, answers, scores, weights):
                    record = {"prompt_id": i, "sample": j, "text": text,
                              "answer": _jsonable(extract(answer)), "score": score, "weight": weight,
                              "tokens": len(completion.token_ids), "prompt_tokens": len(prompt_ids[i])}
                    for copy in [record] + ([{**record, "sample": 0}] if cfg.temperature == 0 else []):
                        f.write(json.dumps(copy) + "\n")
                        records.setdefault(i, []).append(copy)
        sequential = run_sequential(cfg, engine, tokenizer, rows, prompt_ids, scorer, extract, out,
                                    flops_per_token=2.0 * matmul_params(model))
    seconds = time.perf_counter() - start
    records = {i: records[i] for i in range(len(rows)) if i in records}
    table = strategy_table(records, cfg.ks, equivalent=equivalent, weighted=cfg.weights is not None,
                           confidence=cfg.confidence, resamples=cfg.bootstrap_resamples, seed=cfg.seed,
                           flops_per_token=2.0 * matmul_params(model))
    result = {"model": cfg.model.name_or_path, "reward": cfg.reward, "weights": cfg.weights,
              "num_prompts": len(records), "samples": cfg.samples, "seconds": seconds,
              "strategies": table + sequential}
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot_table(table + sequential, out / "eval.png",
               f"{cfg.model.name_or_path}: {len(records)} prompts, {cfg.samples} samples", others)
    print(format_table(table))
    if sequential:
        print(format_sequential_table(sequential))
    print(f"eval: {out / 'eval.json'}, {out / 'eval.png'}, {samples_path}")
    return result


def _jsonable(answer: Any) -> Any:
    return answer if answer is None or isinstance(answer, (str, int, float, bool)) else str(answer)


def _weights_runner(cfg: ScalingEvalConfig):
    if cfg.weights is None:
        return contextlib.nullcontext()
    from posttrain.evaluation import eval_reward_runner

    return eval_reward_runner(cfg.weights, on_error=cfg.on_error, timeout_s=cfg.timeout_s)

