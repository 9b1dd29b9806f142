"""posttrain's DPO loop against TRL's DPOTrainer: same model, pairs, loss and batch, one invocation.

Run by hand (not a test; needs the ``bench`` extra, i.e. ``trl==1.16.0``)::

    .venv/bin/python benchmarks/dpo_vs_trl.py [--sizes tiny,small] [--steps 10] [--warmup 2]
        [--pairs-per-step 32] [--preamble-words 0] [--threads 1] [--lr 1e-5] [--no-ref-each-step]
        [--precision fp32|bf16-mixed|recommended|both|all] [--json PATH]

For each model size the offline tiny model is built once (``build_tiny_model``) into a temp dir
and every run loads it from there. Each run is a child process of its own (so peak RSS, read
from ``getrusage(RUSAGE_SELF).ru_maxrss`` in the child, does not mix), with ``--threads`` torch
(and OMP/MKL) threads on CPU, and the same settings:

* pairs: ``(warmup + steps) × P`` arithmetic problems as plain text, prompt ``"12+34="``, chosen
  the answer, rejected a near miss (``preference_rows``), optionally after ``--preamble-words``
  words of fixed instructions (longer prompts, closer to real preference data). Plain text, so
  both sides tokenise to the same ids: prompt ids + response ids + EOS, loss on response + EOS.
  One epoch: posttrain walks the pairs in a seeded permutation, TRL in its sampler's order;
* loss: DPO (sigmoid), β = 0.1, no label smoothing, response log-probs summed;
* reference: the starting weights; posttrain scores every pair once before training and keeps
  no reference model, TRL likewise with ``precompute_ref_log_probs=True``. TRL's default
  (``False``: a reference forward in every step, a second model in memory) runs as a third
  column unless ``--no-ref-each-step``;
* batch: P pairs (2P sequences) per step in one forward/backward (posttrain ``examples_per_step =
  micro_batch_size = P``; TRL ``per_device_train_batch_size = P``, no accumulation);
* AdamW (0.9, 0.95), no weight decay, constant LR, gradient clip 1.0, no dropout, no gradient
  checkpointing (TRL's DPOConfig turns it on by default; see ``_trl_dpo_runner.py`` for every
  default we override and why);
* precision, per ``--precision`` mode (``_stages.py``): ``fp32`` (posttrain ``precision=fp32``,
  TRL ``bf16=False``), ``bf16-mixed`` (posttrain ``precision=bf16-mixed``, TRL ``bf16=True``; both
  bf16 autocast over float32 weights, the reference pass included), ``recommended`` (posttrain
  ``precision=auto``, TRL its ``DPOConfig`` default, ``bf16=True``). Each mode is a set of runs and
  a table of its own; the table's header says what each side resolved to.

What one step is (both timed end-of-step to end-of-step; the warm-up steps are dropped):

* posttrain: pick P pairs → pad 2P rows → forward (LM head only at response positions) →
  summed response log-probs → DPO loss against the cached reference → backward → clip, AdamW →
  one line appended to metrics.jsonl;
* TRL: dataloader + collator → forward with its fused LM head (response positions only, plus
  entropy / mean-logit / top-1 statistics) → DPO loss against the precomputed reference →
  backward → clip, AdamW → metrics gathered in memory.

Outside the timed window: tokenising, the reference pass, posttrain's start/end evaluation (one
held-out pair) and its final save. Those count towards the child's wall time and peak RSS.

Where the time goes: DPO generates nothing, so a step is its update plus the rest. "update" is
posttrain's compute-ledger stage ``dpo`` (padding the batch, forward, loss, backward, clip, AdamW)
and TRL's ``on_step_begin`` to ``on_step_end`` (forward, the reference forward in the
ref-each-step column, backward, clip, AdamW; its batch is fetched and collated before); "other"
is the step's remainder. Its GFLOP/s counts ``6·N`` per token the model runs (posttrain: each
pair's shared prompt once, as its forward runs it; TRL: both full sequences, plus ``2·N`` per token
for the reference forward when it runs each step), ``N = posttrain.compute.matmul_params``, and
its % of peak is against ``peak.py``'s matmul peak measured at the start of the same invocation,
at ``--threads``, in the dtype of the side's precision (bf16 for bf16-mixed, else fp32).
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

PREAMBLE = ("Read the problem, add the two numbers carefully, check the sum once more and then reply with "
            "the number only, without any words or units. ")


@dataclass(frozen=True)
class Settings:
    """One size's benchmark settings, shared verbatim by every run."""

    size: str
    pairs_per_step: int
    steps: int
    warmup: int
    lr: float
    threads: int
    preamble_words: int
    max_length: int
    beta: float = 0.1
    seed: int = 0
    # posttrain's `precision` key (fp32, bf16-mixed, auto) and TRL's `bf16` (None: its config default).
    precision: str = "fp32"
    trl_bf16: bool | None = False

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


def pairs(settings: Settings) -> tuple[list[dict], list[dict]]:
    """Plain-text training pairs (one epoch's worth) and one held-out pair for posttrain's eval."""
    from posttrain.envs.arithmetic import ArithmeticTask, preference_rows

    words = PREAMBLE.split()
    preamble = " ".join((words * (settings.preamble_words // len(words) + 1))[: settings.preamble_words])
    preamble = preamble + " " if preamble else ""

    def plain(rows):
        return [{"prompt": preamble + row["prompt"][0]["content"], "chosen": row["chosen"],
                 "rejected": row["rejected"]} for row in rows]

    task = ArithmeticTask()
    train = task.problems(settings.total_steps * settings.pairs_per_step, seed=settings.seed, split="train")
    held_out = task.problems(1, seed=settings.seed, split="test")
    return plain(preference_rows(train, seed=settings.seed)), plain(preference_rows(held_out, seed=settings.seed))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ----------------------------------------------------------------------------- child processes


def _child_posttrain(spec: dict) -> dict:
    """One posttrain ``dpo.train`` run; per-step times from metrics.jsonl's end-of-step stamps."""
    from posttrain.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig
    from posttrain.recipes.preference import dpo
    from posttrain.run import Run
    from posttrain.training.precision import recipe_precision

    from _stages import increments

    # Stamp the process CPU time whenever the recipe logs (after the step-0 evaluation, then after
    # every step), next to the wall-clock stamps metrics.jsonl already holds.
    cpu_stamps: dict[int, float] = {}
    original_log = Run.log

    def log_with_cpu_time(self, step, metrics):
        if step == 0 or "train/loss" in metrics:
            cpu_stamps[step] = time.process_time()
        original_log(self, step, metrics)

    Run.log = log_with_cpu_time
    s = Settings(**spec["settings"])
    cfg = dpo.DPOConfig(
        model=ModelConfig(name_or_path=spec["model_dir"], dtype="float32", device="cpu"),
        data=DataConfig(train=spec["train_path"], eval=spec["eval_path"], max_length=s.max_length),
        optim=OptimConfig(lr=s.lr, weight_decay=0.0, betas=[0.9, 0.95], schedule="constant", warmup_steps=0,
                          max_grad_norm=1.0),
        run=RunConfig(output_dir=spec["out_dir"], name="posttrain", seed=s.seed, report_to=[], log_every=1,
                      eval_every=0, save_every=10**9),
        eval=EvalConfig(num_samples=1),
        loss=dpo.LossConfig(type="dpo", beta=s.beta),
        steps=s.total_steps, examples_per_step=s.pairs_per_step, micro_batch_size=s.pairs_per_step,
        inference_batch_size=s.pairs_per_step, precision=s.precision,
    )
    cfg.validate()
    dpo.train(cfg)
    records = [json.loads(line) for line in (Path(spec["out_dir"]) / "posttrain" / "metrics.jsonl").open()]
    start = next(r["time"] for r in records if r["step"] == 0)  # the step-0 evaluation, just before step 1
    steps = [r for r in records if "train/loss" in r]
    if len(steps) != s.total_steps:
        raise RuntimeError(f"posttrain logged {len(steps)} training steps, expected {s.total_steps}")
    stamps = [start] + [r["time"] for r in steps]
    # Tokens of the step's sequences, counted as TRL counts them (posttrain's own `train/tokens`
    # counts each pair's shared prompt once, as its forward runs it).
    from posttrain.models.loading import load_tokenizer
    from posttrain.recipes.preference.dpo_data import load_dpo_data
    from posttrain.training.order import step_indices

    tokenizer = load_tokenizer(spec["model_dir"])
    split = load_dpo_data(cfg.data, tokenizer, eval_cfg=cfg.eval, unpaired_ok=False, seed=s.seed).train
    sequence_tokens = [sum(len(split.sequences[r]) for r in split.rows(step_indices(
        step, per_step=s.pairs_per_step, num_examples=len(split), seed=s.seed))) for step in range(s.total_steps)]
    cpu = [cpu_stamps[step] for step in range(s.total_steps + 1)]
    precision = recipe_precision(cfg)  # what the run resolved (auto is measured once per process)
    return {"step_seconds": [b - a for a, b in zip(stamps, stamps[1:])],
            "update_seconds": increments([r.get("compute/dpo/seconds", 0.0) for r in steps]),
            "update_flops": increments([r.get("compute/dpo/flops", 0.0) for r in steps]),
            "precision": precision.name, "precision_detail": precision.describe(),
            "step_cpu_seconds": [b - a for a, b in zip(cpu, cpu[1:])],
            "step_tokens": sequence_tokens,
            "forwarded_tokens": [r["train/tokens"] for r in steps],
            "setup_seconds": steps[-1].get("compute/reference/seconds", 0.0)}


def _child_main(framework: str, spec_path: str, result_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["settings"]["threads"])
    started = time.perf_counter()
    if framework == "posttrain":
        result = _child_posttrain(spec)
    else:
        from _trl_dpo_runner import run_trl_dpo

        train_rows = [json.loads(line) for line in Path(spec["train_path"]).open()]
        s = spec["settings"]
        result = run_trl_dpo({**s, "model_dir": spec["model_dir"], "train_rows": train_rows,
                              "out_dir": spec["out_dir"], "ref_each_step": framework == "trl-ref-each-step"})
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
           "HF_DATASETS_CACHE": str(work / "hf-datasets-cache"), "TOKENIZERS_PARALLELISM": "false",
           "WANDB_DISABLED": "true", "TQDM_DISABLE": "1"}
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
    ``peak.measure()``'s result: the update's GFLOP/s is put against the peak of the dtype the
    side's matmuls ran in."""
    from _stages import peak_dtype, stage_figures

    seconds = result["step_seconds"][warmup:]
    tokens = result["step_tokens"][warmup:]
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
        "cpu_s_per_step": statistics.median(result["step_cpu_seconds"][warmup:]),
        **stage_figures("update", update, result["update_flops"][warmup:], peak_gflops),
        "other_s_per_step": statistics.median(s - u for s, u in zip(seconds, update)),
        "tok_per_s": statistics.median(t / s for t, s in zip(tokens, seconds)),
        "tokens_per_step": sum(tokens) / len(tokens),
        "setup_s": result["setup_seconds"],
        "peak_rss_mib": result["peak_rss_mib"],
        "process_s": result["process_seconds"],
        "load": result["load"],
        "per_step": {key: result[key] for key in ("step_seconds", "step_cpu_seconds", "step_tokens",
                                                  "update_seconds", "update_flops")},
    }


ROWS = [("s/step, median", "s_per_step", "{:.4f}"),
        ("s/step, best", "best_s_per_step", "{:.4f}"),
        ("CPU s/step, median", "cpu_s_per_step", "{:.4f}"),
        ("update s/step", "update_s_per_step", "{:.4f}"),
        ("other s/step", "other_s_per_step", "{:.4f}"),
        ("update GFLOP/s", "update_gflops", "{:.1f}"),
        ("update % of peak", "update_pct_peak", "{:.1f}"),
        ("peak GFLOP/s (its dtype)", "peak_gflops", "{:.1f}"),
        ("tokens/s (of step time)", "tok_per_s", "{:.0f}"),
        ("tokens/step", "tokens_per_step", "{:.0f}"),
        ("reference/setup s", "setup_s", "{:.2f}"),
        ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
        ("process wall s", "process_s", "{:.1f}"),
        ("1-min load avg (end)", "load", "{:.2f}")]


def print_table(label: str, columns: dict[str, dict]) -> None:
    """One block per size and precision mode: each figure for every run, and each TRL run's ratio over posttrain's."""
    from _stages import ratio

    names = list(columns)
    ours = columns["posttrain"]
    print()
    for n in names:
        probe = f"; a linear layer's output dtype: {columns[n]['matmul_dtypes']}" if columns[n]["matmul_dtypes"] else ""
        print(f"[{label}]  {n}: {columns[n]['precision_detail']}{probe}")
    header = "".join(f"{n:>20s}" for n in names) + "".join(f"{'TRL/posttrain' if n == 'trl' else n + '/pt':>24s}"
                                                          for n in names[1:])
    print(f"[{label}]  {'':26s}{header}")
    print(f"[{label}]  {'precision':26s}" + "".join(f"{columns[n]['precision']:>20s}" for n in names))
    for title, key, fmt in ROWS:
        values = "".join(f"{fmt.format(columns[n][key]):>20s}" for n in names)
        ratios = "".join(f"{ratio(columns[n][key], ours[key]):>23.2f}x" for n in names[1:])
        print(f"[{label}]  {title:26s}{values}{ratios}")


def main() -> None:
    from _stages import PRECISION_MODES, add_report_arguments, parse_precision_modes, start_report
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small", help="comma-separated presets of build_tiny_model")
    parser.add_argument("--steps", type=int, default=10, help="measured steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="steps run first and left out of the figures")
    parser.add_argument("--pairs-per-step", type=int, default=32)
    parser.add_argument("--preamble-words", type=int, default=0,
                        help="words of fixed instructions before every problem (longer prompts)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OMP threads in every child process")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ref-each-step", action="store_true",
                        help="skip the run with TRL's default precompute_ref_log_probs=False")
    add_report_arguments(parser)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.pairs_per_step < 1:
        parser.error("need --steps >= 1, --warmup >= 0 and --pairs-per-step >= 1")


    try:
        modes = parse_precision_modes(args.precision)
    except ValueError as err:
        parser.error(f"--precision: {err}")

    from posttrain.models.tiny import build_tiny_model

    frameworks = ["posttrain", "trl"] + ([] if args.no_ref_each_step else ["trl-ref-each-step"])
    max_length = 64 + 2 * args.preamble_words  # above every sequence: nothing is truncated or rejected
    print(f"DPO, posttrain vs TRL: {args.pairs_per_step} pairs per step, {args.warmup} warm-up + {args.steps} "
          f"measured steps, beta=0.1, CPU, {args.threads} threads, preamble {args.preamble_words} words; "
          f"precision modes {', '.join(modes)}")
    peak, report = start_report("dpo_vs_trl", args)
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        with tempfile.TemporaryDirectory(prefix=f"dpo-vs-trl-{size}-") as tmp:
            work = Path(tmp)
            model_dir = build_tiny_model(work / "model", preset=size)
            for index, mode in enumerate(modes):
                posttrain_precision, trl_bf16 = PRECISION_MODES[mode]
                settings = Settings(size=size, pairs_per_step=args.pairs_per_step, steps=args.steps,
                                    warmup=args.warmup, lr=args.lr, threads=args.threads,
                                    preamble_words=args.preamble_words, max_length=max_length, seed=args.seed,
                                    precision=posttrain_precision, trl_bf16=trl_bf16)
                if index == 0:  # the same pairs for every mode
                    train_rows, held_out = pairs(settings)
                    train_path = _write_jsonl(work / "train.jsonl", train_rows)
                    eval_path = _write_jsonl(work / "eval.jsonl", held_out)
                run_work = work / mode
                run_work.mkdir()
                columns = {}
                for framework in frameworks:
                    print(f"[{size}, {mode}] running {framework} (posttrain precision={posttrain_precision}, TRL "
                          f"bf16={'(its default)' if trl_bf16 is None else trl_bf16}) ...", flush=True)
                    columns[framework] = summarise(run_child(framework, settings, model_dir, train_path, eval_path,
                                                             run_work), args.warmup, peak)
                label = f"{size}, {args.preamble_words}w, {mode}"
                print_table(label, columns)
                if len({round(c["tokens_per_step"]) for c in columns.values()}) > 1:
                    print(f"[{label}]  note: tokens/step differ: the runs visit the pairs in different orders")
                report["runs"].append({"size": size, "mode": mode, "settings": asdict(settings), **columns})
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
