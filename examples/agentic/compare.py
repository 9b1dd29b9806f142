"""PivotRL's comparison on one machine: SFT, SFT → end-to-end RL, SFT → PivotRL, and a larger model
with SFT only, on the spreadsheet environment (after Yi et al. 2026, arXiv 2603.21383, Table 1).

    python examples/agentic/compare.py                    # the reference scale (docs/results/agentic/)
    python examples/agentic/compare.py --scale smoke      # a minute: every stage, tiny numbers
    python examples/agentic/compare.py --out runs/agentic --reuse   # reuse finished stages
    python examples/agentic/compare.py --out runs/lr3e-5 --reuse --rl-set optim.lr=3e-5 --pivot-set optim.lr=3e-5
        # a variant: link a finished run's base/, sft/, tasks/, model-*/ and cache/ into runs/lr3e-5 first

From the same generated tasks and the same scripted-expert trajectories:
    1. tasks (train / held-out workbooks) and the expert's conversations; SFT data = those plus
       arithmetic problems, so out-of-domain accuracy (arithmetic) has something to keep
    2. two models built here with a tokenizer that also learned the task's text: the small one
       (`agent` preset) and a larger one (`agent-large`, ~2× the parameters), each pretrained
       briefly on copy drills (the "base" models)
    3. SFT of both                                   → rows "SFT" and "SFT (larger model)"
    4. small SFT → `posttrain rl` on whole episodes  → row "SFT → RL"
    5. small SFT → `posttrain pivotrl`               → row "SFT → PivotRL"
    6. every final model: held-out task success (greedy episodes) and arithmetic accuracy
Outputs under --out: comparison.json (one record per method: method, success, ood_accuracy,
rollout_turns, generated_tokens, flops, seconds), comparison.md (the table), comparison.png.
Both models are fresh (built here), so before SFT each gets a short pretraining on copy drills
(posttrain/envs/copying.py): the in-context copying any pretrained model brings, which the
tool calls need and which a from-scratch model learns only slowly inside SFT.
Rollout turns count every sampled model turn of the method's RL: episodes' turns for RL, one
per sampled turn for PivotRL, profiling included. FLOPs are the compute ledger's, evaluation
excluded; seconds are the method's own wall-clock (its SFT excluded for the RL rows, which
share it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

SCALES = {
    # name: tasks, steps and batch sizes; `tools` is the tool set offered (env.options.tools).
    # PivotRL profiles `pivot_candidates` expert turns drawn from `pivot_tasks` trajectories (None:
    # every turn). `lr` is both RL methods': 3e-4 damaged the SFT model at the reference scale,
    # 1e-4 did not (docs/results/agentic/README.md, run 4 and its variants).
    "smoke": dict(num_train=8, num_eval=4, arithmetic_train=40, arithmetic_eval=8, pretrain_steps=2, sft_steps=4,
                  large_sft_steps=2, rl_steps=2, pivot_steps=2, pivot_tasks=4, pivot_candidates=None, prompts=2,
                  samples=2, k=2, max_new_tokens=48, max_turns=5, lr=3e-4),
    "reference": dict(num_train=800, num_eval=100, arithmetic_train=370, arithmetic_eval=30, pretrain_steps=600,
                      sft_steps=400, large_sft_steps=400, rl_steps=20, pivot_steps=20, pivot_tasks=800,
                      pivot_candidates=128, prompts=8, samples=8, k=8, max_new_tokens=64, max_turns=6, lr=1e-4),
}
# Pretraining's and SFT's learning rate (both models unless --large-lr says otherwise).
SFT_LR = 3e-3
# Without read_rows (the expert never needs it): its schema would lengthen every sequence by a sixth.
TOOLS = ("list_sheets", "describe_sheet", "query")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="reference")
    parser.add_argument("--out", default="runs/agentic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-sft", "--reuse", action="store_true",
                        help="reuse every finished stage under --out (base, SFT, RL and PivotRL runs)")
    parser.add_argument("--without-large", action="store_true", help="leave out the larger model's row")
    parser.add_argument("--large-lr", type=float, default=SFT_LR,
                        help=f"the larger model's learning rate, pretraining and SFT (default {SFT_LR:g}, the small one's)")
    parser.add_argument("--skip", action="append", default=[], choices=["rl", "pivotrl"],
                        help="leave out a method's row (repeatable): a variant run of the other")
    parser.add_argument("--pivot-tasks", type=int, help="expert trajectories PivotRL draws candidates from "
                        "(default: the scale's pivot_tasks)")
    parser.add_argument("--rl-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the end-to-end RL run (repeatable), e.g. optim.lr=1e-4")
    parser.add_argument("--pivot-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the PivotRL run (repeatable), e.g. pivot.max_candidates=128")
    args = parser.parse_args(argv)
    scale = dict(SCALES[args.scale])
    if args.pivot_tasks is not None:
        scale["pivot_tasks"] = args.pivot_tasks
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("POSTTRAIN_CACHE", str(out / "cache"))

    env = {"num_train": scale["num_train"], "num_eval": scale["num_eval"], "task_dir": str(out / "tasks"),
           "tools": list(TOOLS)}
    data = write_data(out, env, scale, args.seed)
    small, large = build_models(out, data["corpus"], args.seed)

    timings = {}

    def pretrained(name: str, model: Path, lr: float = SFT_LR) -> Path:
        summary = sft(out, name, model, data["drills"], scale["pretrain_steps"], args.seed, args.skip_sft,
                      sequences=32, max_length=384, lr=lr)
        timings[name] = summary["seconds"]
        return Path(summary["model_dir"])

    sft_small = sft(out, "sft", pretrained("base", small), data["sft"], scale["sft_steps"], args.seed, args.skip_sft)

    def measured(run: str) -> dict:
        """Held-out success, arithmetic and per-turn accuracy of `run`'s final model, kept in
        <run>/comparison_scores.json (reused with --reuse: a variant run re-measures only what changed)."""
        path = out / run / "comparison_scores.json"
        if args.skip_sft and path.is_file():
            return json.loads(path.read_text())
        model_dir = Path(json.loads((out / run / "summary.json").read_text())["model_dir"])
        scores = {**evaluate(model_dir, out, env, scale, args.seed),
                  "turn_accuracy": turn_accuracy(model_dir, env, args.seed),
                  "turn_accuracy_train": turn_accuracy(model_dir, env, args.seed, split="train")}
        path.write_text(json.dumps(scores, indent=2) + "\n")
        return scores

    first = measured("sft")
    print(f"SFT (small): held-out success {first['success']:.1%}, arithmetic {first['ood_accuracy']:.1%}", flush=True)
    # The recipes' own before/after evaluation on a few tasks only: the comparison evaluates every model below.
    common = rl_overrides(out, env, scale, args.seed) + [f"eval.num_samples={min(10, scale['num_eval'])}"]

    from posttrain.config import load_config
    from posttrain.recipes import pivotrl, rl

    records: list[dict] = []
    overrides = {"rl": args.rl_set, "pivotrl": [f"pivot_tasks={scale['pivot_tasks']}",
                                                f"pivot_candidates={scale['pivot_candidates']}"] + args.pivot_set,
                 "sft-large": [f"lr={args.large_lr:g}"] if args.large_lr != SFT_LR else []}

    def add(method: str, run: str, seconds: float) -> None:
        """Measure `run`'s final model and rewrite the outputs with it: a stopped comparison keeps its rows."""
        summary = json.loads((out / run / "summary.json").read_text())
        records.append({"method": method, "run": run, "overrides": overrides.get(run, []), **measured(run),
                        **spent(out / run, summary), "seconds": round(seconds, 1),
                        "parameters": count_parameters(Path(summary["model_dir"]))})
        print(f"{method}: held-out success {records[-1]['success']:.1%}", flush=True)
        (out / "comparison.json").write_text(json.dumps(records, indent=2) + "\n")
        (out / "comparison.md").write_text(table(records, args.scale, timings))
        plot(records, out / "comparison.png")

    add("SFT", "sft", sft_small["seconds"])
    if "rl" not in args.skip:
        seconds = timed(out / "rl", args.skip_sft, lambda: rl.train(load_config(rl.RLConfig, None, common + [
            f"model.name_or_path={sft_small['model_dir']}", "run.name=rl", "algorithm.name=grpo", "algorithm.kl_coef=0",
            f"steps={scale['rl_steps']}"] + args.rl_set)))
        add("SFT → RL", "rl", seconds)
    if "pivotrl" not in args.skip:
        seconds = timed(out / "pivotrl", args.skip_sft, lambda: pivotrl.train(load_config(
            pivotrl.PivotRLConfig, None, common + [
                f"model.name_or_path={sft_small['model_dir']}", "run.name=pivotrl", f"steps={scale['pivot_steps']}",
                f"pivot.samples_per_candidate={scale['k']}", f"pivot.expert={data['pivot_experts']}",
                f"pivot.max_candidates={'null' if scale['pivot_candidates'] is None else scale['pivot_candidates']}"]
                + args.pivot_set)))
        add("SFT → PivotRL", "pivotrl", seconds)
    if not args.without_large:  # last: the row that costs the most and answers the least
        sft_large = sft(out, "sft-large", pretrained("base-large", large, args.large_lr), data["sft"],
                        scale["large_sft_steps"], args.seed, args.skip_sft, lr=args.large_lr)
        add("SFT (larger model)", "sft-large", sft_large["seconds"])
    print(table(records, args.scale, timings))
    return 0


def write_data(out: Path, env: dict, scale: dict, seed: int) -> dict:
    """The SFT file (the expert's conversations on the training tasks plus arithmetic, so that
    out-of-domain accuracy has something to keep), PivotRL's expert file (the first
    `pivot_tasks` of those conversations, whose turns it profiles, or `pivot_candidates` of them), the copy drills the base
    models are pretrained on, and the tokenizer corpus."""
    from types import SimpleNamespace

    from posttrain.envs.arithmetic import ArithmeticTask, sft_rows
    from posttrain.envs.copying import copy_drill_rows, drill_words
    from posttrain.envs.registry import environment_spec

    spec = environment_spec(SimpleNamespace(name="spreadsheet", parser="hermes", tool_timeout_s=10.0, options=env))
    experts = spec.expert_rows(spec.rows("builtin:spreadsheet", "train", seed))
    problems = ArithmeticTask(max_operand=19).problems(scale["arithmetic_train"], seed=seed, split="train")
    rows = [{"messages": r["messages"], "tools": r["tools"]} for r in experts] + sft_rows(problems)
    corpus = [json.dumps(r, default=str) for r in experts]
    files = {"sft": rows, "pivot_experts": experts[:scale["pivot_tasks"]],
             "drills": copy_drill_rows(drill_words(corpus), 32 * max(scale["pretrain_steps"], 1), seed)}
    paths = {}
    for name, records in files.items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    return {**paths, "corpus": corpus}


def build_models(out: Path, corpus: list[str], seed: int) -> tuple[Path, Path]:
    """The small and the larger model, sharing a tokenizer that learned the task's text too."""
    from posttrain.models.tiny import build_tiny_model

    made = []
    for name, preset in (("model-small", "agent"), ("model-large", "agent-large")):
        path = out / name
        if not (path / "config.json").is_file():
            build_tiny_model(path, preset=preset, seed=seed, extra_corpus=corpus * 3)
        made.append(path)
    return made[0], made[1]


def sft(out: Path, name: str, model: Path, data: Path, steps: int, seed: int, skip: bool, *,
        sequences: int = 16, max_length: int = 1024, lr: float = SFT_LR) -> dict:
    from posttrain.config import load_config
    from posttrain.recipes import sft as sft_recipe

    summary_path = out / name / "summary.json"
    if skip and summary_path.is_file():
        return json.loads(summary_path.read_text())
    start = time.perf_counter()
    summary = sft_recipe.train(load_config(sft_recipe.SFTConfig, None, [
        f"model.name_or_path={model}", "model.device=cpu", f"data.train={data}", f"data.max_length={max_length}",
        "data.eval_fraction=0.05", f"run.output_dir={out}", f"run.name={name}", "run.overwrite=true",
        "run.report_to=[]", f"run.seed={seed}", f"steps={steps}", f"sequences_per_step={sequences}",
        f"micro_batch_size={min(sequences, 8)}", f"optim.lr={lr}", "optim.schedule=cosine", "optim.warmup_steps=20",
        f"run.save_every={max(steps, 1)}", f"run.eval_every={max(steps, 1)}"]))
    summary["seconds"] = time.perf_counter() - start
    summary_path.write_text(json.dumps(summary, indent=2, default=str))  # --skip-sft reads the seconds back
    return summary


def timed(run_dir: Path, reuse: bool, train) -> float:
    """Seconds `train()` took, kept in its summary.json; with `reuse`, a finished run's are read back."""
    summary_path = run_dir / "summary.json"
    if reuse and summary_path.is_file() and "seconds" in json.loads(summary_path.read_text()):
        return json.loads(summary_path.read_text())["seconds"]
    start = time.perf_counter()
    train()
    seconds = time.perf_counter() - start
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "seconds": seconds}, indent=2, default=str))
    return seconds


def rl_overrides(out: Path, env: dict, scale: dict, seed: int) -> list[str]:
    options = "{" + ", ".join(f"{k}: {v}" for k, v in env.items()) + "}"
    return [
        "model.device=cpu", f"run.output_dir={out}", "run.overwrite=true", "run.report_to=[]", f"run.seed={seed}",
        "run.save_every=1000", "data.train=builtin:spreadsheet", "data.max_length=1024", "env.name=spreadsheet",
        f"env.options={options}", f"env.max_turns={scale['max_turns']}", "eval.reward=spreadsheet",
        f"eval.num_samples={scale['num_eval']}", "reward.functions=[spreadsheet]",
        f"rollout.max_new_tokens={scale['max_new_tokens']}", f"rollout.prompts_per_step={scale['prompts']}",
        f"rollout.samples_per_prompt={scale['samples']}", f"micro_batch_size={scale['samples']}",
        f"optim.lr={scale['lr']}", "run.eval_every=1000",
    ]


def evaluate(model_dir: Path, out: Path, env: dict, scale: dict, seed: int) -> dict:
    """Held-out task success (greedy episodes) and arithmetic accuracy (greedy) of one model."""
    from posttrain.compute import ComputeLedger
    from posttrain.config import load_config
    from posttrain.engines.factory import build_engine
    from posttrain.envs.registry import environment_spec
    from posttrain.models.build import load_model_and_tokenizer
    from posttrain.recipes.prompt_data import load_prompt_sets
    from posttrain.recipes.rl import RLConfig
    from posttrain.recipes.rl.evaluation import evaluate_prompts, rl_eval_reward_runner
    from posttrain.recipes.rl.multi_turn import episode_limits

    cfg = load_config(RLConfig, None, rl_overrides(out, env, scale, seed) + [
        f"model.name_or_path={model_dir}", "rollout.temperature=1.0"])
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    model.eval()
    engine = build_engine("hf", model, tokenizer)
    spec = environment_spec(cfg.env)
    with rl_eval_reward_runner(cfg) as runner:
        _, tasks = load_prompt_sets(cfg.data, tokenizer, seed=seed, eval_rewards=runner, source_rows=spec.rows)
        limits = episode_limits(cfg, getattr(model.config, "max_position_embeddings", None))
        agent = evaluate_prompts(engine, tasks, runner, cfg, ComputeLedger(), 0, episodes=(spec.make, tokenizer, limits))
    arith = load_config(RLConfig, None, [
        f"model.name_or_path={model_dir}", "model.device=cpu", "data.train=builtin:arithmetic",
        "data.arithmetic.max_operand=19", f"data.arithmetic.num_eval={scale['arithmetic_eval']}",
        f"data.arithmetic.num_train={scale['arithmetic_train']}", "eval.reward=arithmetic",
        f"eval.num_samples={scale['arithmetic_eval']}", "rollout.max_new_tokens=6"])
    with rl_eval_reward_runner(arith) as runner:
        _, problems = load_prompt_sets(arith.data, tokenizer, seed=seed, eval_rewards=runner)
        ood = evaluate_prompts(engine, problems, runner, arith, ComputeLedger(), 0)
    return {"success": agent["eval/accuracy_greedy"], "success_sampled": agent["eval/accuracy_sampled"],
            "turns_per_episode": agent["eval/episodes_greedy/turns_mean"],
            "ood_accuracy": ood["eval/accuracy_greedy"]}


def turn_accuracy(model_dir: Path, env: dict, seed: int, tasks: int = 40, split: str = "test") -> dict:
    """Where a model fails: its greedy action at each expert state of the first `tasks` tasks of
    `split` (one turn, teacher-forced history), scored by PivotRL's functional verifier, per tool.
    On "train" those are the tasks PivotRL's first pivots come from: a rise there with a fall on
    "test" is overfitting to the pivots."""
    from collections import defaultdict
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.engines.base import SamplingParams
    from posttrain.engines.factory import build_engine
    from posttrain.envs.registry import environment_spec
    from posttrain.envs.spreadsheet.environment import spreadsheet_action_reward
    from posttrain.pivot.candidates import extract_candidates
    from posttrain.pivot.reward import candidate_row

    spec = environment_spec(SimpleNamespace(name="spreadsheet", parser="hermes", tool_timeout_s=10.0, options=env))
    candidates = extract_candidates(spec.expert_rows(spec.rows("builtin:spreadsheet", split, seed)[:tasks]))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    engine = build_engine("hf", AutoModelForCausalLM.from_pretrained(model_dir).eval(), tokenizer)
    prompts = [list(tokenizer.apply_chat_template(c.state, tools=c.tools, add_generation_prompt=True,
                                                  tokenize=True, return_dict=True)["input_ids"]) for c in candidates]
    outputs = engine.generate(prompts, SamplingParams(n=1, max_new_tokens=96, temperature=0.0))
    engine.close()
    scores = defaultdict(list)
    for candidate, output in zip(candidates, outputs):
        row = {k: v for k, v in candidate_row(candidate).items() if k != "prompt"}
        tool = candidate.action["tool_calls"][0]["name"] if candidate.action.get("tool_calls") else "message"
        scores[tool].append(spreadsheet_action_reward(None, output[0].text, **row))
    return {tool: round(sum(v) / len(v), 3) for tool, v in scores.items()}


def spent(run_dir: Path, summary: dict) -> dict:
    """Rollout turns, generated tokens and training FLOPs of a run, from its metrics and ledger."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    turns = sum(r.get("episodes/rollout_turns", 0) + r.get("pivots/rollout_turns", 0) for r in rows)
    tokens = sum(r.get("episodes/model_tokens", 0) + r.get("pivots/generated_tokens", 0) for r in rows)
    turns += summary.get("profile_rollout_turns", 0)
    tokens += summary.get("profile_generated_tokens", 0)
    flops = summary.get("compute/total/flops", 0) - summary.get("compute/eval/flops", 0)
    return {"rollout_turns": int(turns), "generated_tokens": int(tokens), "flops": float(flops)}


def count_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def table(records: list[dict], scale: str, timings: dict) -> str:
    base = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
    lines = [f"Spreadsheet QA, held-out workbooks ({scale} scale); copy-drill pretraining of the base models "
             f"(not in the rows): {base}", "",
             "| method | params | success (greedy) | success (T=1) | turns/episode | arithmetic (OOD) "
             "| rollout turns | generated tokens | FLOPs (training) | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['method']} | {r['parameters'] / 1e6:.1f} M | {r['success']:.1%} | {r['success_sampled']:.1%} "
                     f"| {r['turns_per_episode']:.2f} | {r['ood_accuracy']:.1%} | {r['rollout_turns']:,} "
                     f"| {r['generated_tokens']:,} | {r['flops']:.3g} | {r['seconds']:.0f} |")
    lines += [""] + [f"Overrides of {r['method']}: {', '.join(r['overrides'])}" for r in records if r.get("overrides")]
    for key, where in (("turn_accuracy", "held-out tasks"), ("turn_accuracy_train", "training tasks")):
        lines += ["", f"Greedy action accuracy per expert turn on {where} (teacher-forced history, PivotRL's "
                  "functional verifier): " + "; ".join(
                      f"{r['method']}: " + ", ".join(f"{tool} {acc:.0%}" for tool, acc in r.get(key, {}).items())
                      for r in records)]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in records:
        ax.scatter(max(r["rollout_turns"], 1), r["success"], s=60)
        ax.annotate(r["method"], (max(r["rollout_turns"], 1), r["success"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xscale("log")
    ax.set_xlabel("rollout turns (log; SFT rows plotted at 1)")
    ax.set_ylabel("held-out task success (greedy)")
    ax.set_title("Spreadsheet QA: success vs rollout turns")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
