"""posttrain's GRPO loop against TRL's GRPOTrainer: same model, prompts, reward and batch, one invocation.

Run by hand (not a test; needs the ``bench`` extra, i.e. ``trl==1.16.0``)::

    .venv/bin/python benchmarks/grpo_vs_trl.py [--sizes tiny,small] [--steps 5] [--warmup 1]
        [--prompts-per-step 8] [--samples 8] [--tiny-new-tokens 8] [--small-new-tokens 64]
        [--threads 2] [--lr 1e-5] [--precision fp32|bf16-mixed|recommended|both|all] [--json PATH]

For each model size the offline tiny model is built once (``build_tiny_model``) into a temp dir
and both frameworks load it from there. Each framework then runs in its OWN child process (so
peak RSS, read from ``getrusage(RUSAGE_SELF).ru_maxrss`` in the child, does not mix), with
``--threads`` torch threads (and OMP/MKL threads) on CPU, and the same settings:

* prompts: ``(warmup + steps) × prompts_per_step`` arithmetic problems as chat prompts (a
  ``prompt`` message list and an ``answer`` column), one epoch, so both see the same prompt set;
  posttrain walks them in a seeded permutation, TRL in file order (``shuffle_dataset=False``);
* reward: ``posttrain.envs.arithmetic.arithmetic_reward`` (TRL gets it wrapped to its
  ``(prompts, completions, **columns) -> list[float]`` signature);
* GRPO: group-normalised advantages, PPO clip ε = 0.2, per-sequence token mean then batch mean
  (posttrain ``algorithm.name=grpo``; TRL ``loss_type="grpo"``), no KL (β = 0, so neither side
  builds a reference model), one optimizer step per rollout batch, AdamW (0.9, 0.95), constant LR,
  gradient clip 1.0, temperature 1.0, no top-p / top-k;
* batch: P prompts × G samples per step, all P·G sequences in one forward/backward
  (posttrain ``micro_batch_size = P·G``; TRL ``per_device_train_batch_size = P·G`` completions,
  ``gradient_accumulation_steps = 1``, ``num_generations = G`` — see ``_trl_runner.py`` for the
  TRL 1.16 semantics);
* precision, per ``--precision`` mode (``_stages.py``): ``fp32`` (posttrain ``precision=fp32``,
  TRL ``bf16=False``), ``bf16-mixed`` (posttrain ``precision=bf16-mixed``, TRL ``bf16=True``; both
  bf16 autocast over float32 weights, generation included), ``recommended`` (posttrain
  ``precision=auto``, TRL its ``GRPOConfig`` default, ``bf16=True``). Each mode is a pair of runs
  and a table of its own; the table's header says what each side resolved to.

What one step is on each side (both timed end-of-step to end-of-step; the warm-up steps are dropped):

* posttrain: pick P prompts → ``HFEngine.generate`` (P prompts × G, KV cache, finished rows
  leave the batch) → score → advantages → forward (log-probs + entropy) and backward over P·G
  sequences → clip, AdamW step → copy weights into the engine → append a line to metrics.jsonl.
* TRL: dataloader yields the P prompts repeated G times → chat template + tokenise →
  ``model.generate`` on P·G rows → decode → score → advantages → forward (log-probs + entropy)
  and backward → clip, AdamW step → metrics kept in memory (report_to none, no checkpoints,
  no progress bar, no completion logging).

Outside the timed window posttrain also runs its start/end evaluation (cut here to one held-out
prompt) and saves the final model; TRL saves nothing. Those count towards the child's wall time
and peak RSS, not towards seconds per step.

Figures: median and best seconds per measured step, generated tokens per second of step time
(median over steps), peak RSS of the child, and the ratio posttrain / TRL. A freshly initialised
model almost never emits EOS, so completions run to the token limit on both sides (generated
tokens are counted through the first EOS, EOS included). The 1-minute load average printed with
each side shows how busy the shared machine was.

Where the time goes: each step split into generation, update and the rest, with the GFLOP/s each
of the two heavy stages achieved and that as a % of this machine's matmul peak (``peak.py``,
measured at the start of the same invocation, at ``--threads``, fp32 or bf16 as the side's
precision):

* generation: posttrain's compute-ledger stage ``rollout`` (``HFEngine.generate``; FLOPs
  ``2·N`` per token through the model: each prompt once, as its KV cache is shared by its G
  samples, plus every generated token); TRL's ``model.generate`` call (``2·N`` per token: each of
  the P·G rows' non-pad prompt tokens plus its generated tokens);
* update: posttrain's ledger stage ``update`` (forward, backward, clip, AdamW); TRL from the end of
  ``_prepare_inputs`` to the end of the optimizer step (the same work). FLOPs ``6·N`` per non-pad
  token of the P·G prompt + completion rows on both sides; TRL's gradient-checkpointing recompute
  is not counted (model FLOPs, as in MFU), so it shows as a lower % of peak;
* other: step minus the two (reward scoring, tokenising / decoding, advantages, batch building,
  weight sync into posttrain's engine, logging);
* ``N`` = ``posttrain.compute.matmul_params`` (matmul parameters, tied LM head counted once); the
  rule ignores attention-score FLOPs and the LM head's skipped positions, so the % is an estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


@dataclass(frozen=True)
class Settings:
    """One size's benchmark settings, shared verbatim by both frameworks."""

    size: str
    prompts_per_step: int
    samples: int
    max_new_tokens: int
    steps: int
    warmup: int
    lr: float
    threads: int
    seed: int = 0
    # posttrain: sequences per forward/backward (gradient accumulation, exact token normalisation);
    # 0 = all P·G at once. TRL: gradient checkpointing, which GRPOConfig turns on by default.
    micro_batch: int = 0
    trl_gradient_checkpointing: bool = True
    # posttrain's `precision` key (fp32, bf16-mixed, auto) and TRL's `bf16` (None: its config default).
    precision: str = "fp32"
    trl_bf16: bool | None = False

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


# ----------------------------------------------------------------------------- shared inputs


def problems(settings: Settings) -> tuple[list[dict], list[dict]]:
    """Training rows (one per prompt the run will use) and one held-out row for posttrain's eval."""
    from posttrain.envs.arithmetic import ArithmeticTask

    task = ArithmeticTask()
    train = task.problems(settings.total_steps * settings.prompts_per_step, seed=settings.seed, split="train")
    held_out = task.problems(1, seed=settings.seed, split="test")
    return train, held_out


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ----------------------------------------------------------------------------- child processes


def _child_posttrain(spec: dict) -> dict:
    """One posttrain ``rl.train`` run; per-step times from metrics.jsonl's end-of-step stamps."""
    from posttrain.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig
    from posttrain.recipes import rl
    from posttrain.recipes.rl.config import AlgorithmConfig, RLConfig, RolloutConfig
    from posttrain.training.precision import recipe_precision

    from _stages import increments

    s = Settings(**spec["settings"])
    cfg = RLConfig(
        model=ModelConfig(name_or_path=spec["model_dir"], dtype="float32", device="cpu"),
        data=DataConfig(train=spec["train_path"], eval=spec["eval_path"]),
        optim=OptimConfig(lr=s.lr, weight_decay=0.0, betas=[0.9, 0.95], schedule="constant", warmup_steps=0,
                          max_grad_norm=1.0),
        run=RunConfig(output_dir=spec["out_dir"], name="posttrain", seed=s.seed, report_to=[], log_every=1,
                      eval_every=0, save_every=10**9),
        eval=EvalConfig(num_samples=1),
        algorithm=AlgorithmConfig(name="grpo", kl_coef=0.0),
        rollout=RolloutConfig(prompts_per_step=s.prompts_per_step, samples_per_prompt=s.samples,
                              max_new_tokens=s.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0),
        steps=s.total_steps, micro_batch_size=s.micro_batch or s.prompts_per_step * s.samples, updates_per_batch=1,
        precision=s.precision,
    )
    cfg.validate()
    rl.train(cfg)
    records = [json.loads(line) for line in (Path(spec["out_dir"]) / "posttrain" / "metrics.jsonl").open()]
    start = next(r["time"] for r in records if r["step"] == 0)  # the step-0 evaluation, just before step 1
    steps = [r for r in records if "reward/mean" in r]
    if len(steps) != s.total_steps:
        raise RuntimeError(f"posttrain logged {len(steps)} training steps, expected {s.total_steps}")
    stamps = [start] + [r["time"] for r in steps]
    # Generated tokens (through the first EOS, as TRL's count): the mean response length times the
    # sequences sampled (the ledger's rollout tokens also hold each prompt once).
    generated = [round(r["response/length_mean"] * r["groups/sampled"] * s.samples) for r in steps]
    precision = recipe_precision(cfg)  # what the run resolved (auto is measured once per process)

    def ledger(key: str) -> list[float]:  # per-step amounts of a compute-ledger total
        return increments([r.get(key, 0.0) for r in steps])

    return {
        "step_seconds": [b - a for a, b in zip(stamps, stamps[1:])],
        "step_tokens": generated,
        "generate_seconds": ledger("compute/rollout/seconds"),
        "generate_flops": ledger("compute/rollout/flops"),
        "update_seconds": ledger("compute/update/seconds"),
        "update_flops": ledger("compute/update/flops"),
        "precision": precision.name, "precision_detail": precision.describe(),
    }


def _child_main(framework: str, spec_path: str, result_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["settings"]["threads"])
    started = time.perf_counter()
    if framework == "posttrain":
        result = _child_posttrain(spec)
    else:
        from _trl_runner import run_trl

        train_rows = [json.loads(line) for line in Path(spec["train_path"]).open()]
        result = run_trl({**spec["settings"], "model_dir": spec["model_dir"], "train_rows": train_rows,
                          "out_dir": spec["out_dir"]})
    result["process_seconds"] = time.perf_counter() - started
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if torch.get_num_threads() != spec["settings"]["threads"]:
        raise RuntimeError(f"{framework} changed torch's thread count to {torch.get_num_threads()}")
    Path(result_path).write_text(json.dumps(result))


def run_child(framework: str, settings: Settings, model_dir: Path, train_path: Path, eval_path: Path,
              work: Path) -> dict:
    """Run one framework in a fresh interpreter and return its timings (raises with its log on failure)."""
    out_dir = work / f"{framework}-out"
    spec = {"settings": asdict(settings), "model_dir": str(model_dir), "train_path": str(train_path),
            "eval_path": str(eval_path), "out_dir": str(out_dir)}
    spec_path = work / f"{framework}-spec.json"
    spec_path.write_text(json.dumps(spec))
    result_path = work / f"{framework}-result.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads), "MKL_NUM_THREADS": str(settings.threads),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    proc = subprocess.run([sys.executable, __file__, "--child", framework, str(spec_path), str(result_path)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not result_path.exists():
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"{framework} run for size {settings.size!r} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(result_path.read_text())
    result["load"] = os.getloadavg()[0]  # how busy the shared machine was while this child ran
    return result


# ----------------------------------------------------------------------------- summary


def summarise(result: dict, warmup: int, peak: dict) -> dict:
    """Figures over the measured steps (warm-up dropped). Medians and the best step, because other
    processes share the cores and a single slow step would drag a mean. ``peak`` is
    ``peak.measure()``'s result: each stage's GFLOP/s is put against the peak of the dtype the
    side's matmuls ran in."""
    from _stages import peak_dtype, stage_figures

    seconds = result["step_seconds"][warmup:]
    tokens = result["step_tokens"][warmup:]
    gen = result["generate_seconds"][warmup:]
    update = result["update_seconds"][warmup:]
    dtype = peak_dtype(result["precision"])
    peak_gflops = peak["peak_gflops"][dtype]
    return {
        "precision": result["precision"],
        "precision_detail": result["precision_detail"],
        "matmul_dtypes": result.get("matmul_dtypes"),
        "peak_dtype": dtype,
        "peak_gflops": peak_gflops,
        "s_per_step": statistics.median(seconds),
        "best_s_per_step": min(seconds),
        "tok_per_s": statistics.median(t / s for t, s in zip(tokens, seconds)),
        "gen_tok_per_s": statistics.median(t / g for t, g in zip(tokens, gen) if g > 0),
        **stage_figures("gen", gen, result["generate_flops"][warmup:], peak_gflops),
        **stage_figures("update", update, result["update_flops"][warmup:], peak_gflops),
        "other_s_per_step": statistics.median(s - g - u for s, g, u in zip(seconds, gen, update)),
        "tokens_per_step": sum(tokens) / len(tokens),
        "peak_rss_mib": result["peak_rss_mib"],
        "process_s": result["process_seconds"],
        "load": result["load"],
        "per_step": {key: result[key] for key in ("step_seconds", "step_tokens", "generate_seconds",
                                                  "generate_flops", "update_seconds", "update_flops")},
    }


PER_STEP = """per step, posttrain: P prompts -> HFEngine.generate (P x G, KV cache, finished rows leave the batch)
  -> reward -> group advantages -> fwd (log-probs + entropy) + bwd over P*G sequences -> clip, AdamW
  -> weights into the engine -> a line in metrics.jsonl
per step, TRL: P prompts x G rows -> chat template, tokenise -> model.generate -> decode -> reward
  -> group advantages -> fwd (log-probs + entropy) + bwd over P*G sequences -> clip, AdamW
  -> metrics in memory (report_to none, save_strategy no, no tqdm, no completion logging)
gen = posttrain's ledger stage rollout (HFEngine.generate) / TRL's model.generate; update = fwd + bwd
  + clip + AdamW (posttrain's ledger stage update; TRL from the end of _prepare_inputs to the end of the
  optimizer step); other = the rest of the step. GFLOP/s: 2N per token through the model for gen (posttrain
  prefills each prompt once, TRL each of the P*G rows), 6N per non-pad token for update (TRL's
  gradient-checkpointing recompute not counted); % of peak against peak.py's figure for the side's dtype"""

ROWS = [("s/step, median", "s_per_step", "{:.3f}"),
        ("s/step, best", "best_s_per_step", "{:.3f}"),
        ("generated tok/s", "tok_per_s", "{:.0f}"),
        ("gen s/step", "gen_s_per_step", "{:.3f}"),
        ("update s/step", "update_s_per_step", "{:.3f}"),
        ("other s/step", "other_s_per_step", "{:.3f}"),
        ("gen-only tok/s", "gen_tok_per_s", "{:.0f}"),
        ("gen GFLOP/s", "gen_gflops", "{:.1f}"),
        ("gen % of peak", "gen_pct_peak", "{:.1f}"),
        ("update GFLOP/s", "update_gflops", "{:.1f}"),
        ("update % of peak", "update_pct_peak", "{:.1f}"),
        ("peak GFLOP/s (its dtype)", "peak_gflops", "{:.1f}"),
        ("tokens/step", "tokens_per_step", "{:.0f}"),
        ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
        ("process wall s", "process_s", "{:.1f}"),
        ("1-min load avg (end)", "load", "{:.2f}")]


def print_table(label: str, ours: dict, theirs: dict) -> None:
    """One block per size and precision mode: each figure for both sides and the ratio posttrain / TRL."""
    from _stages import ratio

    print(f"\n[{label}]  posttrain: {ours['precision_detail']}")
    print(f"[{label}]  TRL: {theirs['precision_detail']}; a linear layer's output dtype: {theirs['matmul_dtypes']}")
    print(f"[{label}]  {'':26s} {'posttrain':>10s} {'TRL':>10s} {'posttrain/TRL':>14s}")
    print(f"[{label}]  {'precision':26s} {ours['precision']:>10s} {theirs['precision']:>10s}")
    for title, key, fmt in ROWS:
        print(f"[{label}]  {title:26s} {fmt.format(ours[key]):>10s} {fmt.format(theirs[key]):>10s} "
              f"{ratio(ours[key], theirs[key]):>13.2f}x")


def main() -> None:
    from _stages import PRECISION_MODES, add_report_arguments, parse_precision_modes, start_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small", help="comma-separated presets of build_tiny_model")
    parser.add_argument("--steps", type=int, default=5, help="measured steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and left out of the figures")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt (TRL num_generations)")
    parser.add_argument("--tiny-new-tokens", type=int, default=8)
    parser.add_argument("--small-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch / OMP threads in both child processes (on a busy 2-core machine 1 is far "
                             "steadier: see benchmarks/README.md)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--micro-batch", type=int, default=0,
                        help="posttrain sequences per forward/backward (0 = all P x G at once); smaller "
                             "cuts activation memory at the same math (exact gradient accumulation)")
    parser.add_argument("--trl-no-gradient-checkpointing", action="store_true",
                        help="turn off TRL's gradient checkpointing (GRPOConfig's default is on)")
    add_report_arguments(parser)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.prompts_per_step < 1 or args.samples < 2:
        parser.error("need --steps >= 1, --warmup >= 0, --prompts-per-step >= 1 and --samples >= 2")
    try:
        modes = parse_precision_modes(args.precision)
    except ValueError as err:
        parser.error(f"--precision: {err}")
    new_tokens = {"tiny": args.tiny_new_tokens, "small": args.small_new_tokens}
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for size in sizes:
        if size not in new_tokens:
            parser.error(f"--sizes: unknown size {size!r}; choose from {sorted(new_tokens)}")

    from posttrain.models.tiny import build_tiny_model

    print(f"GRPO, posttrain vs TRL: {args.prompts_per_step} prompts x {args.samples} samples per step, "
          f"{args.warmup} warm-up + {args.steps} measured steps, T=1, beta=0, CPU, {args.threads} threads; "
          f"posttrain micro-batch {args.micro_batch or 'P x G'}, TRL gradient checkpointing "
          f"{'off' if args.trl_no_gradient_checkpointing else 'on (its default)'}; precision modes {', '.join(modes)}")
    peak, report = start_report("grpo_vs_trl", args)
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"grpo-vs-trl-{size}-") as tmp:
            work = Path(tmp)
            model_dir = build_tiny_model(work / "model", preset=size)
            for index, mode in enumerate(modes):
                posttrain_precision, trl_bf16 = PRECISION_MODES[mode]
                settings = Settings(size=size, prompts_per_step=args.prompts_per_step, samples=args.samples,
                                    max_new_tokens=new_tokens[size], steps=args.steps, warmup=args.warmup, lr=args.lr,
                                    threads=args.threads, seed=args.seed, micro_batch=args.micro_batch,
                                    trl_gradient_checkpointing=not args.trl_no_gradient_checkpointing,
                                    precision=posttrain_precision, trl_bf16=trl_bf16)
                if index == 0:  # the same prompts for every mode
                    train_rows, held_out = problems(settings)
                    train_path = _write_jsonl(work / "train.jsonl", train_rows)
                    eval_path = _write_jsonl(work / "eval.jsonl", held_out)
                print(f"[{size}, {mode}] max_new_tokens={settings.max_new_tokens}; posttrain precision="
                      f"{posttrain_precision}, TRL bf16={'(its default)' if trl_bf16 is None else trl_bf16}; "
                      f"running posttrain, then TRL ...", flush=True)
                run_work = work / mode
                run_work.mkdir()
                ours = summarise(run_child("posttrain", settings, model_dir, train_path, eval_path, run_work),
                                 args.warmup, peak)
                theirs = summarise(run_child("trl", settings, model_dir, train_path, eval_path, run_work),
                                   args.warmup, peak)
                label = f"{size}, {mode}"
                print_table(label, ours, theirs)
                if ours["tokens_per_step"] != theirs["tokens_per_step"]:
                    print(f"[{label}]  note: token counts differ slightly: the sides sample with different random "
                          f"streams, so EOS falls in different places")
                report["runs"].append({"size": size, "mode": mode, "settings": asdict(settings),
                                       "posttrain": ours, "trl": theirs})
    print("\n" + PER_STEP)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
