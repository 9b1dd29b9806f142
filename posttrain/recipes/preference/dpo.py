"""Preference alignment without a reward model: DPO, cDPO, IPO, SimPO, ORPO and KTO in one loop.

Before the first step:
    tokenise pairs (or KTO's labelled completions) → when the loss needs a reference, score every
    sequence once and cache its summed response log-prob (the reference is frozen, so this is
    the whole reference cost of the run; reference-free SimPO and ORPO skip it).
Each optimizer step:
    pick the step's pairs (a seeded permutation per epoch, `step_indices`) → [KTO: the policy's
    log-probs of the step's mismatched pairs, no gradient → z0] → micro-batches: forward →
    per-sequence response log-probs (summed, or averaged for SimPO / ORPO, as the registry
    entry says) → loss (+ `sft_weight` × NLL of the chosen tokens) → backward → clip → step →
    log, evaluate, checkpoint.

The reference is the starting policy, so no second model is kept: its log-probs are cached
with the freshly loaded weights before any update (for LoRA that is the base model, since
new adapters start at zero). A resumed run recomputes the cache the same way before it loads
its checkpoint. Dropout is off throughout (`train_mode(dropout=False)`), so at step 0 the policy reproduces
the cached reference exactly and DPO's loss is log 2.
Losses come back per pair and are divided by the step's pair count, so gradient accumulation is
exact; KTO's z0 is estimated over the whole step, before the micro-batches, for the same reason.
Log-probs come from `dpo_logps`: only response positions go through the LM head, and a pair's
shared prompt is run once for both of its responses.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import NamedTuple, Union

import torch

from posttrain.algorithms.preference import (
    PARAM_NAMES, PreferenceInputs, PreferenceLossOutput, PreferenceLossSpec, PreferenceParams, get_preference_loss,
    kto_kl_baseline,
)
from posttrain.compute import ComputeLedger, matmul_params
from posttrain.config import (
    ConfigError, DataConfig, EvalConfig, ModelConfig, OptimConfig, PrecisionName, RunConfig, require,
    require_offline_schedule,
)
from posttrain.data.tokenize import TokenizedExample
from posttrain.engines.factory import build_engine
from posttrain.evaluation import eval_config_runner, task_accuracy
from posttrain.models.build import load_model_and_tokenizer
from posttrain.models.sequence_logprobs import pair_logps, sequence_logps, shares_prompts
from posttrain.recipes.preference.dpo_data import DPOData, PreferenceSplit, load_dpo_data, mismatched_sequences
from posttrain.training.loop import TrainingLoop, set_seed, start_run, warn_to
from posttrain.training.modes import train_mode
from posttrain.training.optim import build_optimizer, build_scheduler, optimizer_step
from posttrain.training.order import step_indices
from posttrain.training.precision import recipe_precision


@dataclasses.dataclass
class LossConfig:
    """Which preference loss, and its hyper-parameters. Unset (null) values take the loss's paper
    default; setting one the loss does not read is an error.

    type: dpo | cdpo | ipo | simpo | orpo | kto, or an import path to a `PreferenceLossSpec`.
    beta: β (DPO, cDPO, SimPO, KTO); for IPO its τ. Defaults 0.1; SimPO 2.0.
    label_smoothing: cDPO's ε, the assumed label-flip rate (default 0.1).
    simpo_gamma: SimPO's target margin γ (default 0.5). orpo_lambda: ORPO's λ (default 0.1).
    kto_desirable_weight, kto_undesirable_weight: KTO's λ_D, λ_U (default 1.0 each).
    """

    type: str = "dpo"
    beta: Union[float, None] = None
    label_smoothing: Union[float, None] = None
    simpo_gamma: Union[float, None] = None
    orpo_lambda: Union[float, None] = None
    kto_desirable_weight: Union[float, None] = None
    kto_undesirable_weight: Union[float, None] = None

    def resolve(self) -> tuple[PreferenceLossSpec, PreferenceParams]:
        """The registry entry and the hyper-parameters it will get; ConfigError naming the key."""
        try:
            spec = get_preference_loss(self.type)
        except ValueError as err:
            raise ConfigError(f"loss.type: {err}") from None
        given = {name: getattr(self, name) for name in PARAM_NAMES if getattr(self, name) is not None}
        unused = sorted(set(given) - set(spec.defaults))
        require(not unused, f"{', '.join('loss.' + n for n in unused)} does not apply to loss.type={self.type} "
                            f"(it reads: {', '.join('loss.' + n for n in spec.defaults) or 'nothing'})")
        params = spec.params(**given)
        require(params.beta > 0, f"loss.beta must be > 0, got {params.beta}")
        require(0 <= params.label_smoothing < 0.5,
                f"loss.label_smoothing must be in [0, 0.5), got {params.label_smoothing}")
        require(params.simpo_gamma >= 0, f"loss.simpo_gamma must be >= 0, got {params.simpo_gamma}")
        require(params.orpo_lambda >= 0, f"loss.orpo_lambda must be >= 0, got {params.orpo_lambda}")
        require(params.kto_desirable_weight > 0 and params.kto_undesirable_weight > 0,
                "loss.kto_desirable_weight and loss.kto_undesirable_weight must be > 0")
        return spec, params


@dataclasses.dataclass
class DPOConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=1e-4, schedule="constant"))
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(name="dpo"))
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    steps: int = 200
    # In examples: a pair for pairwise losses (and for KTO on paired data, which counts the pair's
    # chosen as desirable and its rejected as undesirable), a labelled completion for KTO on unpaired
    # data. A step sees `examples_per_step`, `micro_batch_size` at a time (gradient accumulation between).
    examples_per_step: int = 32
    micro_batch_size: int = 32
    # Examples per forward pass without gradient: the reference cache, KTO's mismatched pairs, evaluation.
    inference_batch_size: int = 64
    # Weight of an NLL term on the chosen (desirable) tokens, token mean over the step: a guard
    # against DPO lowering the chosen log-probs along with the rejected ones (0 = off).
    sft_weight: float = 0.0
    # fp32, bf16-mixed (bf16 autocast over float32 weights and optimizer state; the reference cache
    # is scored under it too, so step 0 still reproduces it) or auto: posttrain/training/precision.py.
    precision: PrecisionName = "fp32"

    def validate(self) -> None:
        require_offline_schedule(self, "examples_per_step")
        require(self.inference_batch_size > 0, "inference_batch_size must be > 0")
        require(self.sft_weight >= 0, f"sft_weight must be >= 0, got {self.sft_weight}")
        self.loss.resolve()


@dataclasses.dataclass
class ReferenceCache:
    """The frozen reference's summed response log-probs, (S,) per sequence of a split; for KTO
    also those of each sequence's mismatched pair. Response token counts ride along."""

    logps: torch.Tensor
    counts: torch.Tensor
    kl_logps: Union[torch.Tensor, None] = None


def train(cfg: DPOConfig) -> dict:
    """Run the configured preference loss; returns the summary also written to `summary.json`."""
    spec, params = cfg.loss.resolve()
    run = start_run(cfg, {"resolved_loss": dataclasses.asdict(params)})
    # The held-out task accuracy's reward (if `eval.reward` is set), under a timeout.
    with run, (eval_config_runner(cfg.eval, warn=warn_to(run)) or contextlib.nullcontext()) as reward_fn:
        set_seed(cfg.run.seed)
        run.print(f"loss {cfg.loss.type}: {dataclasses.asdict(params)}")
        model, tokenizer = load_model_and_tokenizer(cfg.model)
        train_mode(model, dropout=False)  # so at step 0 the policy reproduces the cached reference exactly
        pad_id = tokenizer.pad_token_id
        data = load_dpo_data(cfg.data, tokenizer, eval_cfg=cfg.eval, unpaired_ok=not spec.paired, seed=cfg.run.seed,
                             console=run.console)
        require(len(data.train) > 0, f"no usable training examples in {cfg.data.train}")
        kl_train = mismatched_sequences(data.train, seed=cfg.run.seed) if spec.needs_kl_baseline else None
        kl_eval = (mismatched_sequences(data.eval, seed=cfg.run.seed + 1)
                   if spec.needs_kl_baseline and len(data.eval) > 1 else None)

        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
        ledger = ComputeLedger()
        n_params = matmul_params(model)
        ref_train = ref_eval = None
        if spec.needs_reference:  # before resuming: the reference is the *starting* weights
            with ledger.timed("reference"):
                ref_train = reference_cache(model, data.train, kl_train, cfg, pad_id, ledger, n_params)
                ref_eval = reference_cache(model, data.eval, kl_eval, cfg, pad_id, ledger, n_params)

        def evaluate() -> dict:
            metrics = evaluate_dpo(model, tokenizer, data, ref_eval, kl_eval, spec, params, cfg, reward_fn, ledger,
                                   n_params)
            train_mode(model, dropout=False)
            return metrics

        def dpo_step(step: int) -> dict:
            with ledger.timed("dpo"):
                metrics = accumulate_gradients(model, data.train, ref_train, kl_train, spec, params, cfg, step,
                                               pad_id, ledger, n_params)
                metrics.update(optimizer_step(model, optimizer, scheduler, max_grad_norm=cfg.optim.max_grad_norm,
                                              loss=metrics["train/loss"],
                                              check_finite=lambda m: run.check_finite(step + 1, m)))
                ledger.record("dpo", tokens=metrics["train/tokens"], params=n_params, backward=True)
            return metrics

        loop = TrainingLoop(run, cfg.run, cfg.steps, model=model, optimizer=optimizer, scheduler=scheduler,
                            ledger=ledger, tokenizer=tokenizer, evaluate=evaluate)
        loop.resume()
        loop.train(dpo_step, description=cfg.loss.type, postfix=lambda m: {"loss": f"{m['train/loss']:.4f}"})
        return loop.finish(
            {"recipe": "dpo", "loss": cfg.loss.type, "steps": cfg.steps, "skipped_rows": data.skipped},
            model=model, reward_runners=(reward_fn,), plot_name="dpo_curves.png", title=f"{cfg.loss.type}: {cfg.run.name}",
            plot_keys=["train/loss", "train/rewards/margin", "train/logps/chosen", "eval/preference_accuracy",
                       "eval/rewards/margin", "eval/logps/chosen", "eval/accuracy_greedy", "eval/accuracy_sampled"])


# ----------------------------------------------------------------------------- log-probs


class UnitLogps(NamedTuple):
    rows: list[int]  # the units' sequences, as `split.rows` orders them
    sums: torch.Tensor  # (R,) summed response log-probs
    counts: torch.Tensor  # (R,) response tokens
    tokens: int  # tokens the model ran on (a shared prompt counts once)


def unit_logps(model, split: PreferenceSplit, unit_indices: list[int], pad_id: int) -> UnitLogps:
    """Response log-probs of these units' sequences. Pairs run their shared prompt once
    (`pair_logps`) when the model allows it."""
    rows = split.rows(unit_indices)
    sequences = [split.sequences[r] for r in rows]
    tokens = sum(len(s) for s in sequences)
    prompt_lengths = [split.prompt_lengths[r] for r in rows[: len(unit_indices)]]
    if split.paired and shares_prompts(model) and min(prompt_lengths) >= 1:
        return UnitLogps(rows, *pair_logps(model, sequences, prompt_lengths, pad_id), tokens - sum(prompt_lengths))
    return UnitLogps(rows, *sequence_logps(model, sequences, pad_id), tokens)


@torch.no_grad()
def _logps_no_grad(model, sequences: list[TokenizedExample], pad_id: int, batch_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    sums, counts = [], []
    for start in range(0, len(sequences), batch_size):
        s, c = sequence_logps(model, sequences[start: start + batch_size], pad_id)
        sums.append(s.cpu())
        counts.append(c.cpu())
    if not sums:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(sums), torch.cat(counts)


def reference_cache(model, split: PreferenceSplit, kl_sequences: list[TokenizedExample] | None, cfg: DPOConfig,
                    pad_id: int, ledger: ComputeLedger, n_params: int) -> ReferenceCache:
    """Score every sequence of `split` (and its mismatched pair, for KTO) with the current weights."""
    logps = torch.zeros(len(split.sequences))
    counts = torch.zeros(len(split.sequences), dtype=torch.long)
    tokens = 0
    # The same computation as the policy's at step 0 (precision included), so DPO starts at exactly log 2.
    with torch.no_grad(), recipe_precision(cfg).autocast():
        for start in range(0, len(split), cfg.inference_batch_size):
            out = unit_logps(model, split, list(range(start, min(start + cfg.inference_batch_size, len(split)))),
                             pad_id)
            logps[out.rows], counts[out.rows] = out.sums.cpu(), out.counts.cpu()
            tokens += out.tokens
    kl_logps = None
    if kl_sequences is not None:
        with recipe_precision(cfg).autocast():
            kl_logps, _ = _logps_no_grad(model, kl_sequences, pad_id, cfg.inference_batch_size * 2)
        tokens += sum(len(s) for s in kl_sequences)
    ledger.record("reference", tokens=tokens, params=n_params)
    return ReferenceCache(logps, counts, kl_logps)


def preference_loss(spec: PreferenceLossSpec, params: PreferenceParams, split: PreferenceSplit, rows: list[int],
                    sums: torch.Tensor, counts: torch.Tensor, ref: ReferenceCache | None,
                    z0: torch.Tensor | None) -> PreferenceLossOutput:
    """The registered loss for these rows, log-probs reduced (summed or averaged) as it declares."""
    desirable = torch.tensor([split.desirable[r] for r in rows], device=sums.device)
    logps = sums / counts.clamp(min=1) if spec.length_normalised else sums
    ref_chosen = ref_rejected = None
    if spec.needs_reference:
        index = torch.tensor(rows)
        ref_logps = ref.logps[index] / ref.counts[index].clamp(min=1) if spec.length_normalised else ref.logps[index]
        ref_logps = ref_logps.to(sums.device)
        ref_chosen, ref_rejected = ref_logps[desirable], ref_logps[~desirable]
    return spec(PreferenceInputs(logps[desirable], logps[~desirable], ref_chosen, ref_rejected, z0), params)


def kl_baseline(model, split_rows: list[int], kl_sequences: list[TokenizedExample], ref: ReferenceCache,
                pad_id: int, batch_size: int) -> torch.Tensor:
    """KTO's z0 over these rows' mismatched pairs: the policy scores them now, the reference was cached."""
    logps, _ = _logps_no_grad(model, [kl_sequences[r] for r in split_rows], pad_id, batch_size)
    return kto_kl_baseline(logps, ref.kl_logps[torch.tensor(split_rows)])


# ----------------------------------------------------------------------------- one step


class _Tally:
    """Sums of the per-pair figures a step or an evaluation reports."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.units = 0
        self.chosen_rewards: list[torch.Tensor] = []
        self.rejected_rewards: list[torch.Tensor] = []
        self.chosen_logps: list[torch.Tensor] = []
        self.rejected_logps: list[torch.Tensor] = []

    def add(self, out: PreferenceLossOutput, split: PreferenceSplit, rows: list[int], sums: torch.Tensor) -> None:
        desirable = torch.tensor([split.desirable[r] for r in rows], device=sums.device)
        self.loss += float(out.losses.detach().sum())
        self.units += out.losses.numel()
        self.chosen_rewards.append(out.chosen_rewards.float().cpu())
        self.rejected_rewards.append(out.rejected_rewards.float().cpu())
        self.chosen_logps.append(sums.detach()[desirable].cpu())
        self.rejected_logps.append(sums.detach()[~desirable].cpu())

    def metrics(self, prefix: str, paired: bool) -> dict:
        chosen, rejected = torch.cat(self.chosen_rewards), torch.cat(self.rejected_rewards)
        chosen_logps, rejected_logps = torch.cat(self.chosen_logps), torch.cat(self.rejected_logps)
        mean = lambda x: float(x.mean()) if x.numel() else float("nan")  # noqa: E731
        out = {
            f"{prefix}/loss": self.loss / max(self.units, 1),
            f"{prefix}/rewards/chosen": mean(chosen), f"{prefix}/rewards/rejected": mean(rejected),
            f"{prefix}/rewards/margin": mean(chosen) - mean(rejected),
            f"{prefix}/logps/chosen": mean(chosen_logps), f"{prefix}/logps/rejected": mean(rejected_logps),
        }
        if paired:  # row i of each side is one pair
            out[f"{prefix}/preference_accuracy"] = mean((chosen > rejected).float())
            out[f"{prefix}/likelihood_accuracy"] = mean((chosen_logps > rejected_logps).float())
        return out


def accumulate_gradients(model, split: PreferenceSplit, ref: ReferenceCache | None,
                         kl_sequences: list[TokenizedExample] | None, spec: PreferenceLossSpec,
                         params: PreferenceParams, cfg: DPOConfig, step: int, pad_id: int, ledger: ComputeLedger,
                         n_params: int) -> dict:
    """Forward and backward over the step's micro-batches; gradients accumulate in `.grad`."""
    units = step_indices(step, per_step=cfg.examples_per_step, num_examples=len(split), seed=cfg.run.seed)
    step_rows = split.rows(units)
    precision = recipe_precision(cfg)
    z0 = None
    if spec.needs_kl_baseline:  # one z0 for the whole step, so micro-batching does not change it
        with precision.autocast():
            z0 = kl_baseline(model, step_rows, kl_sequences, ref, pad_id, cfg.inference_batch_size * 2)
        ledger.record("dpo", tokens=sum(len(kl_sequences[r]) for r in step_rows), params=n_params)
    chosen_tokens = sum(sum(split.sequences[r].loss_mask[1:]) for r in step_rows if split.desirable[r])
    tally = _Tally()
    sft_total, tokens = 0.0, 0
    for start in range(0, len(units), cfg.micro_batch_size):
        with precision.autocast():  # the forward only: the summed log-probs come back float32
            rows, sums, counts, forwarded = unit_logps(model, split, units[start: start + cfg.micro_batch_size],
                                                       pad_id)
        out = preference_loss(spec, params, split, rows, sums, counts, ref, z0)
        loss = out.losses.sum() / len(units)  # the step's mean over pairs, whatever the micro-batching
        if cfg.sft_weight:
            desirable = torch.tensor([split.desirable[r] for r in rows], device=sums.device)
            nll = -sums[desirable].sum() / max(chosen_tokens, 1)  # token mean over the step's chosen tokens
            loss = loss + cfg.sft_weight * nll
            sft_total += float(nll.detach())
        loss.backward()
        tally.add(out, split, rows, sums)
        tokens += forwarded
    metrics = tally.metrics("train", split.paired)
    metrics["train/tokens"] = tokens
    if cfg.sft_weight:
        metrics["train/sft_loss"] = sft_total
    if z0 is not None:
        metrics["train/kl_baseline"] = float(z0)
    return metrics


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_dpo(model, tokenizer, data: DPOData, ref: ReferenceCache | None,
                 kl_sequences: list[TokenizedExample] | None, spec: PreferenceLossSpec, params: PreferenceParams,
                 cfg: DPOConfig, reward_fn, ledger: ComputeLedger, n_params: int) -> dict:
    """Held-out loss, implicit rewards, preference accuracy and margin; with `eval.reward`, greedy
    and sampled task accuracy on the held-out prompts."""
    model.eval()
    split = data.eval
    precision = recipe_precision(cfg)
    metrics: dict[str, float] = {}
    if len(split) and (not spec.needs_kl_baseline or kl_sequences is not None):
        everything = list(range(len(split)))
        z0 = None
        if spec.needs_kl_baseline:
            rows = split.rows(everything)
            with precision.autocast():
                z0 = kl_baseline(model, rows, kl_sequences, ref, tokenizer.pad_token_id,
                                 cfg.inference_batch_size * 2)
            ledger.record("eval", tokens=sum(len(kl_sequences[r]) for r in rows), params=n_params)
            metrics["eval/kl_baseline"] = float(z0)
        tally = _Tally()
        for start in range(0, len(split), cfg.inference_batch_size):
            chunk = everything[start: start + cfg.inference_batch_size]
            with precision.autocast():
                rows, sums, counts, forwarded = unit_logps(model, split, chunk, tokenizer.pad_token_id)
            tally.add(preference_loss(spec, params, split, rows, sums, counts, ref, z0), split, rows, sums)
            ledger.record("eval", tokens=forwarded, params=n_params)
        metrics.update(tally.metrics("eval", split.paired))
    if reward_fn is not None and data.eval_prompts:
        engine = build_engine("hf", model, tokenizer, precision=precision)
        metrics.update(task_accuracy(engine, data.eval_prompts, data.eval_prompt_ids, reward_fn,
                                     cfg.eval, seed=cfg.run.seed, ledger=ledger, n_params=n_params))
    return metrics
