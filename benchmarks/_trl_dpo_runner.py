"""The TRL side of ``dpo_vs_trl.py``: one DPOTrainer run in this process, timed step by step.

Imported only by the benchmark's child process (TRL is a benchmark-only peer, never a
dependency of the ``posttrain`` package). ``run_trl_dpo(spec)`` returns per-step wall times,
tokens per step and the seconds spent on the reference before training; the caller adds the
process's peak RSS.

TRL 1.16's ``DPOConfig`` defaults that differ from what posttrain does, and what we set instead
(checked in ``trl/trainer/dpo_config.py`` and ``dpo_trainer.py``):

* ``gradient_checkpointing=True`` (recomputes activations in the backward): set False, as posttrain
  runs without it unless ``model.gradient_checkpointing`` is set;
* ``bf16=True`` when ``fp16`` is unset: set from ``spec["trl_bf16"]`` (False against posttrain's
  fp32, True against its bf16-mixed; ``None`` leaves TRL's default, which the "recommended"
  precision mode measures). On CPU accelerate runs the forward under ``torch.autocast("cpu",
  torch.bfloat16)`` with float32 weights; the run reports the value used and the dtype one linear
  layer's output really had (``DtypeProbe``);
* ``precompute_ref_log_probs=False`` (a reference forward pass in every step, with a second copy
  of the model in memory): the main comparison sets it True, which is what posttrain does
  (reference log-probs once, before the first step, no reference model kept); ``ref_each_step``
  in the spec runs TRL's default instead;
* ``learning_rate=1e-6``, ``adam_beta2=0.999``, linear decay: set to posttrain's AdamW (0.9, 0.95),
  no weight decay, constant LR;
* ``max_length=1024`` with ``keep_start`` truncation: set to the benchmark's max length, which no
  sequence reaches (posttrain rejects longer rows instead of truncating); ``padding_free=False``
  (its only option on CPU); ``pad_to_multiple_of`` "auto" = none off Neuron;
* ``loss_type=["sigmoid"]``, ``beta=0.1``, ``label_smoothing=0``: DPO, as posttrain's ``loss.type=dpo``;
* ``disable_dropout=True``: posttrain runs the policy in ``eval()`` mode, also without dropout.

TRL's ``per_device_train_batch_size`` counts pairs (its collator stacks the chosen rows, then the
rejected ones, like posttrain's ``pad_preference_batch``), so P pairs per step is
``per_device_train_batch_size = P``, ``gradient_accumulation_steps = 1``.

Where the step's time goes: there is no generation in DPO, so a step is the update (from
``on_step_begin`` to ``on_step_end``: forward, the reference forward when it is not precomputed,
backward, clip, AdamW, zero-grad) and the rest (dataloader and collator, logging). The update's
FLOPs are ``6·N`` per token of the 2P sequences (``2·N`` more per token for the reference forward
when it runs each step), ``N = posttrain.compute.matmul_params(model)``, as posttrain's ledger.
"""

from __future__ import annotations

import time

import torch


def _step_clock(times: list[tuple[float, float]], began: list[float]):
    """A TrainerCallback that stamps (wall clock, process CPU time) when training starts and at the
    end of every step, and the wall clock at the start of every step (after its batch is fetched)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            times.append((time.perf_counter(), time.process_time()))

        def on_step_begin(self, args, state, control, **kwargs):
            began.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            times.append((time.perf_counter(), time.process_time()))

    return StepClock()


def run_trl_dpo(spec: dict) -> dict:
    """Train ``spec["warmup"] + spec["steps"]`` DPO steps with TRL; returns timings.

    ``spec`` keys: model_dir, train_rows (list of {"prompt", "chosen", "rejected"} plain text),
    pairs_per_step, max_length, lr, beta, seed, out_dir, ref_each_step.
    Returns {"step_seconds", "step_cpu_seconds", "step_tokens"} (one entry per step, warm-up
    included; CPU seconds are the process's, which other jobs on the machine barely change), "update_seconds"
    and "update_flops" per step, "setup_seconds" (the trainer's construction: tokenisation, plus the
    reference pass when it is precomputed), "precision", "precision_detail", "matmul_dtypes".
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from _stages import DtypeProbe
    from posttrain.compute import matmul_params

    total_steps = spec["warmup"] + spec["steps"]
    args = DPOConfig(
        output_dir=spec["out_dir"],
        use_cpu=True, fp16=False, seed=spec["seed"], gradient_checkpointing=False,
        # None: DPOConfig's own default (bf16=True in TRL 1.16).
        **({} if spec.get("trl_bf16") is None else {"bf16": spec["trl_bf16"]}),
        per_device_train_batch_size=spec["pairs_per_step"], gradient_accumulation_steps=1, max_steps=total_steps,
        dataloader_num_workers=0, max_length=spec["max_length"], padding_free=False,
        precompute_ref_log_probs=not spec["ref_each_step"],
        precompute_ref_batch_size=spec["pairs_per_step"],
        loss_type=["sigmoid"], beta=spec["beta"], label_smoothing=0.0, disable_dropout=True,
        optim="adamw_torch", learning_rate=spec["lr"], adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        # Overheads posttrain does not have: no checkpoints, no trackers, no progress bar.
        report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    times: list[tuple[float, float]] = []
    began: list[float] = []
    n_params = matmul_params(model)
    probe = DtypeProbe(model)
    started = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(spec["train_rows"]),
                         processing_class=tokenizer, callbacks=[_step_clock(times, began)])
    setup_seconds = time.perf_counter() - started  # tokenisation (+ the reference pass when precomputed)
    trainer.train()
    seconds = [b[0] - a[0] for a, b in zip(times, times[1:])]
    cpu_seconds = [b[1] - a[1] for a, b in zip(times, times[1:])]
    if len(seconds) != total_steps or len(began) != total_steps:
        raise RuntimeError(f"TRL ran {len(seconds)} steps ({len(began)} begun); expected {total_steps}")
    cumulative = [row["num_tokens"] for row in trainer.state.log_history if "num_tokens" in row][:total_steps]
    tokens = [b - a for a, b in zip([0] + cumulative, cumulative)]
    per_token = 6 + (2 if spec["ref_each_step"] else 0)  # + the reference forward when it runs each step
    bf16 = bool(trainer.args.bf16)
    return {"step_seconds": seconds, "step_cpu_seconds": cpu_seconds, "step_tokens": tokens,
            "update_seconds": [end[0] - start for start, end in zip(began, times[1:])],
            "update_flops": [per_token * n_params * t for t in tokens],
            "setup_seconds": setup_seconds, "precision": "bf16-mixed" if bf16 else "fp32",
            "precision_detail": f"bf16={bf16} (" + ("DPOConfig's default" if spec.get("trl_bf16") is None
                                                    else "as set") + ")",
            "matmul_dtypes": probe.as_dict()}

