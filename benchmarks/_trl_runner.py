"""The TRL side of ``grpo_vs_trl.py``: one GRPOTrainer run in this process, timed step by step.

Imported only by the benchmark's child process (TRL is a benchmark-only peer, never a
dependency of the ``posttrain`` package). ``run_trl(spec)`` returns per-step wall times and the
number of generated tokens per step; the caller adds the process's peak RSS.

Batch arithmetic in TRL 1.16 (``GRPOConfig.__post_init__`` and ``GRPOTrainer._prepare_inputs``):

* ``per_device_train_batch_size`` counts *completions* (sequences) per micro-batch, not prompts;
* ``num_generations`` is the group size G (posttrain's ``rollout.samples_per_prompt``);
* ``generation_batch_size`` defaults to ``per_device_train_batch_size × num_processes ×
  steps_per_generation`` and ``steps_per_generation`` to ``gradient_accumulation_steps``, so one
  generation round feeds exactly one optimizer step;
* the sampler hands out ``generation_batch_size / num_generations`` distinct prompts per round.

So posttrain's P prompts × G samples with ``micro_batch_size = P·G`` and ``updates_per_batch = 1``
is ``per_device_train_batch_size = P·G``, ``gradient_accumulation_steps = 1``, ``num_generations
= G``, ``num_iterations = 1`` (one process): P prompts, P·G completions, one optimizer step per
generation. With ``num_iterations = 1`` and ``steps_per_generation = 1`` TRL skips the old-log-prob
forward pass (the ratio is 1 by construction), as posttrain does with ``updates_per_batch = 1``.

Precision: ``spec["trl_bf16"]`` is passed as ``GRPOConfig(bf16=...)``; ``None`` leaves it out, so
TRL's own default applies (``bf16=True`` unless ``fp16`` is set, TRL 1.16). On CPU accelerate then
wraps the model's forward in ``torch.autocast("cpu", torch.bfloat16)``; the weights stay float32.
The run reports the value TRL ended up with and the dtype one linear layer's output really had
while generating and while training (``DtypeProbe``).

Where the step's time goes (one generation round and one optimizer step per step, see above):

* generation: each ``model.generate`` call's wall time; its FLOPs, ``2·N`` per token that goes
  through the model: every row's non-pad prompt tokens (TRL prefills each of the P·G rows) plus the
  generated tokens through the first EOS;
* update: from the end of ``_prepare_inputs`` (rollout, scoring and advantages done) to the end of
  the optimizer step (forward, backward, clip, AdamW, zero-grad); its FLOPs ``6·N`` per non-pad
  token of the P·G prompt + completion rows. Gradient checkpointing's recomputed forward is not
  counted: the figure is the model's FLOPs, as in "model FLOPs utilisation";
* ``N`` is ``posttrain.compute.matmul_params(model)``, the count posttrain's own ledger uses.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def _reward_fn(counter: dict):
    """``arithmetic_reward`` under TRL's reward signature; it also counts the generated tokens.

    TRL passes ``completion_ids`` (token ids through the first EOS, EOS included: the same count
    posttrain's engine reports) and every dataset column (here ``answer``) as keyword arguments.
    """
    from posttrain.envs.arithmetic import arithmetic_reward

    def arithmetic(prompts: list, completions: list, answer: list, completion_ids: list, **_: Any) -> list[float]:
        counter["tokens"].append(sum(len(ids) for ids in completion_ids))
        return [arithmetic_reward(p, c, a) for p, c, a in zip(prompts, completions, answer)]

    return arithmetic


def _time_generate(model, seconds: list[float], prompt_tokens: list[int], probe) -> None:
    """Wrap ``model.generate`` so each call's wall time and non-pad prompt tokens are recorded (TRL
    calls it once per step; on one CPU process ``unwrap_model_for_generation`` hands back this same
    object), with ``probe.phase`` set to "generate" while it runs."""
    generate = model.generate

    def timed(*args: Any, **kwargs: Any):
        mask = kwargs.get("attention_mask")
        prompt_tokens.append(int(mask.sum()) if mask is not None else int(kwargs["input_ids"].numel()))
        probe.phase = "generate"
        start = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)
            probe.phase = "train"

    model.generate = timed


def _time_prepare(trainer, prepared_at: list[float], update_tokens: list[int]) -> None:
    """Wrap the trainer's ``_prepare_inputs`` (generation, scoring, advantages: the rollout stage) to
    stamp when it returns and count the non-pad tokens the update will run on."""
    prepare = trainer._prepare_inputs

    def timed(*args: Any, **kwargs: Any):
        inputs = prepare(*args, **kwargs)
        update_tokens.append(int(inputs["prompt_mask"].sum()) + int(inputs["completion_mask"].sum()))
        prepared_at.append(time.perf_counter())
        return inputs

    trainer._prepare_inputs = timed


def _step_clock(times: list[float]):
    """A TrainerCallback that stamps the wall clock at the end of every optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    return StepClock()


def run_trl(spec: dict) -> dict:
    """Train ``spec["warmup"] + spec["steps"]`` GRPO steps with TRL; returns timings.

    ``spec`` keys: model_dir, train_rows (list of {"prompt": messages, "answer": str}),
    prompts_per_step, samples, max_new_tokens, lr, seed, out_dir.
    Returns {"step_seconds", "step_tokens", "generate_seconds", "generate_flops", "update_seconds",
    "update_flops"} (one entry per step, warm-up included), "bf16" (the value TRL used),
    "precision" ("bf16-mixed" or "fp32"), "matmul_dtypes" ({phase: dtypes seen}) and "matmul_params".
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from _stages import DtypeProbe
    from posttrain.compute import matmul_params

    P, G = spec["prompts_per_step"], spec["samples"]
    total_steps = spec["warmup"] + spec["steps"]
    args = GRPOConfig(
        output_dir=spec["out_dir"],
        use_cpu=True, fp16=False, seed=spec["seed"],
        # None: TRL's own default (see the module docstring).
        **({} if spec.get("trl_bf16") is None else {"bf16": spec["trl_bf16"]}),
        # Batch mapping: see the module docstring.
        per_device_train_batch_size=P * G, gradient_accumulation_steps=1, num_generations=G, num_iterations=1,
        max_steps=total_steps, shuffle_dataset=False, dataloader_num_workers=0,
        max_completion_length=spec["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
        # posttrain's "grpo" preset with β = 0: group-normalised advantage, PPO clip 0.2,
        # per-sequence token mean then batch mean (TRL's loss_type "grpo").
        beta=0.0, epsilon=0.2, loss_type="grpo", scale_rewards="group", mask_truncated_completions=False,
        # posttrain's optimiser: torch AdamW (0.9, 0.95), no weight decay, constant LR, clip 1.0.
        optim="adamw_torch", learning_rate=spec["lr"], adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        disable_dropout=True,  # posttrain runs the policy in eval() mode
        # GRPOConfig's own default (True) unless the benchmark asks otherwise: less memory, an extra forward.
        gradient_checkpointing=spec.get("trl_gradient_checkpointing", True),
        # Overheads posttrain does not have: no checkpoints, no trackers, no progress bar, no completion tables.
        report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True,
        log_completions=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    counter: dict = {"tokens": []}
    times: list[float] = []
    generate_seconds: list[float] = []
    prompt_tokens: list[int] = []
    prepared_at: list[float] = []
    update_tokens: list[int] = []
    n_params = matmul_params(model)
    probe = DtypeProbe(model)
    _time_generate(model, generate_seconds, prompt_tokens, probe)
    trainer = GRPOTrainer(
        model=model, reward_funcs=_reward_fn(counter), args=args,
        train_dataset=Dataset.from_list(spec["train_rows"]), processing_class=tokenizer,
        callbacks=[_step_clock(times)],
    )
    _time_prepare(trainer, prepared_at, update_tokens)
    trainer.train()
    seconds = [b - a for a, b in zip(times, times[1:])]
    if not (len(seconds) == len(counter["tokens"]) == len(generate_seconds) == len(prepared_at) == total_steps):
        raise RuntimeError(f"TRL ran {len(seconds)} steps, {len(counter['tokens'])} generation rounds, "
                           f"{len(generate_seconds)} generate calls and {len(prepared_at)} input preparations; "
                           f"expected {total_steps} of each (check the batch mapping)")
    return {"step_seconds": seconds, "step_tokens": counter["tokens"], "generate_seconds": generate_seconds,
            "generate_flops": [2 * n_params * (p + g) for p, g in zip(prompt_tokens, counter["tokens"])],
            "update_seconds": [end - ready for ready, end in zip(prepared_at, times[1:])],
            "update_flops": [6 * n_params * t for t in update_tokens],
            "bf16": bool(trainer.args.bf16), "precision": "bf16-mixed" if trainer.args.bf16 else "fp32",
            "precision_detail": f"bf16={bool(trainer.args.bf16)} ("
                                + ("GRPOConfig's default" if spec.get("trl_bf16") is None else "as set") + ")",
            "matmul_dtypes": probe.as_dict(), "matmul_params": n_params}
