"""Mixed precision (posttrain/training/precision.py): how each `precision` resolves; that under
bf16-mixed the matmuls run in bf16 while the weights, their gradients and AdamW's state stay
float32; and that what is computed from a forward (log-probs, losses, entropies, scores, the
sampler's log-probs) comes back float32."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.algorithms.sft import sft_loss
from posttrain.config import ConfigError, load_config
from posttrain.data.collate import pad_sequences
from posttrain.data.tokenize import TokenizedExample
from posttrain.engines.base import SamplingParams
from posttrain.engines.factory import build_engine
from posttrain.models.build import resolve_model_path
from posttrain.models.passes import forward_logprobs
from posttrain.models.scalar_head import load_scalar_model, score_head, sequence_scores, token_values
from posttrain.models.sequence_logprobs import sequence_logps
from posttrain.recipes import rl, sft
from posttrain.recipes.demo import DemoConfig
from posttrain.recipes.pivotrl import PivotRLConfig
from posttrain.recipes.preference.dpo import DPOConfig
from posttrain.recipes.preference.reward_model import RewardModelConfig
from posttrain.recipes.rl.batch import build_batch, single_turn_sequence
from posttrain.recipes.sft_data import SFTData
from posttrain.training import precision as P
from posttrain.training.loop import start_run
from posttrain.training.optim import build_optimizer, build_scheduler, optimizer_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Each training recipe's config, with what it needs besides to validate.
RECIPE_CONFIGS = [(sft.SFTConfig, []), (DPOConfig, []), (RewardModelConfig, []), (rl.RLConfig, []),
                  (PivotRLConfig, ["env.name=spreadsheet"]), (DemoConfig, [])]
BF16 = P.resolve_precision("bf16-mixed", "cpu")


@pytest.fixture(scope="module")
def tiny():
    path = resolve_model_path("tiny")
    return SimpleNamespace(path=path, tokenizer=AutoTokenizer.from_pretrained(path))


def fresh_model(path) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path)


def record_linear_outputs(model) -> list[torch.dtype]:
    """Every nn.Linear's output dtype, appended as the model runs (what autocast did to the matmuls)."""
    seen: list[torch.dtype] = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


# ----------------------------------------------------------------------------------- resolution


def test_fp32_autocasts_nothing_and_bf16_mixed_runs_matmuls_in_bfloat16():
    fp32 = P.resolve_precision("fp32", "cpu")
    a = torch.randn(4, 4)
    with fp32.autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ a).dtype == torch.float32
    with BF16.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (a @ a).dtype == torch.bfloat16
        assert (a + a).dtype == torch.float32  # elementwise ops keep their input dtype
    assert (fp32.name, BF16.name) == ("fp32", "bf16-mixed")
    assert P.cpu_capability() in BF16.reason


@pytest.mark.parametrize("speedup, expected", [(3.0, "bf16-mixed"), (1.5, "bf16-mixed"), (1.2, "fp32"), (0.02, "fp32")])
def test_auto_on_a_cpu_takes_bf16_only_when_it_measures_clearly_faster(monkeypatch, speedup, expected):
    monkeypatch.setattr(P, "cpu_bf16_speedup", lambda: speedup)
    chosen = P.resolve_precision("auto", "cpu")
    assert chosen.name == expected and chosen.requested == "auto"
    # The message says what was measured and on what kind of CPU.
    assert P.cpu_capability() in chosen.reason and ("faster" in chosen.reason or "slower" in chosen.reason)
    assert chosen.describe().startswith(f"precision {expected} (requested auto): ")


@pytest.mark.parametrize("supported, expected", [(True, "bf16-mixed"), (False, "fp32")])
def test_auto_on_cuda_follows_bf16_support_without_measuring(monkeypatch, supported, expected):
    def no_benchmark():
        raise AssertionError("the CPU benchmark must not run for a CUDA device")

    monkeypatch.setattr(P, "cpu_bf16_speedup", no_benchmark)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    chosen = P.resolve_precision("auto", torch.device("cuda"))
    assert chosen.name == expected and chosen.device_type == "cuda"


def test_auto_without_cuda_picks_fp32_when_bf16_is_slow(monkeypatch):
    """`model.device=auto` on a machine without CUDA is the CPU, and there a slow bf16 means fp32."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "cpu_bf16_speedup", lambda: 0.05)
    cfg = load_config(sft.SFTConfig, None, ["precision=auto"])
    chosen = P.recipe_precision(cfg)
    assert (chosen.name, chosen.device_type) == ("fp32", "cpu")
    with chosen.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_the_cpu_measurement_runs_once_per_process(monkeypatch):
    calls = []

    def fake_time(dtype):
        calls.append(dtype)
        return {torch.float32: 0.004, torch.bfloat16: 0.2}[dtype]

    monkeypatch.setattr(P, "_time_matmul", fake_time)
    P.cpu_bf16_speedup.cache_clear()
    try:
        assert P.cpu_bf16_speedup() == pytest.approx(0.02)
        assert P.resolve_precision("auto", "cpu").name == "fp32"
        assert calls == [torch.float32, torch.bfloat16]  # measured once, reused by the later `auto`
    finally:
        P.cpu_bf16_speedup.cache_clear()  # the real figure is measured again when next needed


def test_the_real_measurement_is_a_ratio_and_auto_decides_by_it():
    """No timing is asserted: only that the measurement is a positive number and that `auto`
    applies the threshold to it (on an AVX2 CPU bf16 is emulated and the ratio is far below 1)."""
    speedup = P.cpu_bf16_speedup()
    assert math.isfinite(speedup) and speedup > 0
    expected = "bf16-mixed" if speedup >= P.MIN_CPU_SPEEDUP else "fp32"
    assert P.resolve_precision("auto", "cpu").name == expected


@pytest.mark.parametrize("config_cls, needs", RECIPE_CONFIGS, ids=[c.__name__ for c, _ in RECIPE_CONFIGS])
def test_every_recipe_takes_precision_and_an_unknown_value_names_the_field(config_cls, needs):
    assert config_cls().precision == "fp32"  # the default keeps every recipe's numbers as they were
    assert load_config(config_cls, None, [*needs, "precision=bf16-mixed"]).precision == "bf16-mixed"
    with pytest.raises(ConfigError, match=r"'precision' must be one of \['fp32', 'bf16-mixed', 'auto'\], got 'fp16'"):
        load_config(config_cls, None, [*needs, "precision=fp16"])


def test_bf16_mixed_over_bf16_weights_stops_before_the_run_directory_exists(tmp_path):
    cfg = load_config(sft.SFTConfig, None, ["precision=bf16-mixed", "model.dtype=bfloat16", "model.device=cpu",
                                            f"run.output_dir={tmp_path}", "run.name=clash", "run.report_to=[]"])
    with pytest.raises(ConfigError, match="float32 master weights.*model.dtype"):
        start_run(cfg)
    assert not (tmp_path / "clash").exists()
    # `auto` over low-precision weights adds no autocast; the weights compute in their own dtype.
    assert P.resolve_precision("auto", "cpu", weights_dtype=torch.bfloat16).name == "fp32"


def test_the_run_prints_and_records_the_resolved_precision(tmp_path, capsys):
    cfg = load_config(sft.SFTConfig, None, ["precision=bf16-mixed", "model.device=cpu", f"run.output_dir={tmp_path}",
                                            "run.name=p", "run.report_to=[]"])
    with start_run(cfg) as run:
        assert run.config["resolved_precision"]["precision"] == "bf16-mixed"
        assert run.config["resolved_precision"]["requested"] == "bf16-mixed"
    assert "precision bf16-mixed (requested bf16-mixed)" in " ".join(capsys.readouterr().err.split())


# ----------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("name, matmul_dtype", [("fp32", torch.float32), ("bf16-mixed", torch.bfloat16)])
def test_a_training_step_keeps_float32_master_weights_and_adam_state(tiny, name, matmul_dtype):
    """SFT's own step (forward under the precision, backward, clip, AdamW) on the tiny model: the
    Linear layers compute in `matmul_dtype`, and parameters, gradients and both Adam moments are
    float32 whatever it is; the step moves the weights."""
    model = fresh_model(tiny.path).train()
    seen = record_linear_outputs(model)
    cfg = load_config(sft.SFTConfig, None, [f"precision={name}", "model.device=cpu", "sequences_per_step=4",
                                            "micro_batch_size=2"])
    rows = [tiny.tokenizer(f"{a}+{b}={a + b}")["input_ids"] for a, b in [(1, 2), (3, 4), (15, 27), (9, 9)]]
    data = SFTData(train=[TokenizedExample(ids, [0] * 4 + [1] * (len(ids) - 4)) for ids in rows], eval=[])
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, 10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    metrics = sft.accumulate_gradients(model, data, cfg, 0, tiny.tokenizer.pad_token_id, torch.device("cpu"))
    assert set(seen) == {matmul_dtype} and len(seen) > 0
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
    optimizer_step(model, optimizer, scheduler, max_grad_norm=1.0, loss=metrics["train/loss"], check_finite=lambda m: None)

    assert all(p.dtype == torch.float32 for p in model.parameters())
    moments = [s[key] for s in optimizer.state.values() for key in ("exp_avg", "exp_avg_sq")]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_what_a_bf16_forward_returns_is_float32_and_close_to_fp32(tiny):
    """Log-probs, entropies, the SFT loss and DPO's summed log-probs from bf16-autocast forwards are
    float32 tensors, within bf16's rounding of the fp32 figures. Measured on the untrained tiny model
    (whose logits are small, so bf16 rounds them little): |Δ log p| 1.1e-3 mean, 2.7e-3 max;
    entropies within 3e-5. Asserted with ~10× margin."""
    model = fresh_model(tiny.path).eval()
    ids = [tiny.tokenizer(t)["input_ids"] for t in ("12+7=19", "3+4=7", "40+45=85")]
    seqs = [single_turn_sequence(x[:4], SimpleNamespace(token_ids=x[4:], logprobs=[0.0] * len(x[4:]),
                                                        finish_reason="stop")) for x in ids]
    batch = build_batch(seqs, [1.0] * 3, [0, 1, 2], tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        ref_logp, ref_entropy = forward_logprobs(model, batch, slice(0, 3), 1.0, with_entropy=True)
        with BF16.autocast():
            logp, entropy = forward_logprobs(model, batch, slice(0, 3), 1.0, with_entropy=True)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            examples = [TokenizedExample(x, [0] * 4 + [1] * (len(x) - 4)) for x in ids]
            sums, _ = sequence_logps(model, examples, tiny.tokenizer.pad_token_id)
        ref_sums, _ = sequence_logps(model, examples, tiny.tokenizer.pad_token_id)
    assert logits.dtype == torch.bfloat16  # the LM head ran in bf16 ...
    loss = sft_loss(logits, batch.input_ids, torch.nn.functional.pad(batch.mask, (1, 0)))
    # ... and everything computed from it is float32.
    assert {logp.dtype, entropy.dtype, loss.dtype, sums.dtype} == {torch.float32}
    m = batch.mask > 0
    gap = (logp - ref_logp)[m].abs()
    assert 0 < gap.mean() < 1e-2 and gap.max() < 2.5e-2, (gap.mean(), gap.max())  # > 0: bf16 really ran
    assert (entropy - ref_entropy)[m].abs().max() < 1e-3
    torch.testing.assert_close(sums, ref_sums, rtol=0, atol=0.05)


def test_score_heads_run_in_float32_under_autocast_and_read_where_transformers_does(tiny):
    """The value / reward head computes in float32 with autocast on (its input is the float32
    residual stream, its weights float32) while the backbone's matmuls are bf16; and
    `sequence_scores` reads each row where the model's own forward pools, right- or left-padded."""
    model = load_scalar_model(tiny.path, pad_token_id=tiny.tokenizer.pad_token_id).eval()
    head_io = []
    score_head(model).register_forward_hook(lambda mod, args, out: head_io.append((args[0].dtype, out.dtype)))
    backbone = record_linear_outputs(model.model)
    sequences = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    with torch.no_grad():
        for side in ("right", "left"):
            ids = pad_sequences(sequences, tiny.tokenizer.pad_token_id, side=side)
            attention = pad_sequences([[1] * len(s) for s in sequences], 0, side=side)
            pooled = model(input_ids=ids, attention_mask=attention).logits.squeeze(1)
            torch.testing.assert_close(sequence_scores(model, ids, attention), pooled, rtol=1e-5, atol=1e-5)
        head_io.clear(), backbone.clear()
        with BF16.autocast():
            scores = sequence_scores(model, ids, attention)
            values = token_values(model, ids, attention)
    assert set(backbone) == {torch.bfloat16}
    assert head_io and set(head_io) == {(torch.float32, torch.float32)}
    assert scores.dtype == values.dtype == torch.float32
    torch.testing.assert_close(scores, pooled, rtol=0.05, atol=0.05)


def test_the_engine_samples_under_the_runs_autocast_and_the_trainer_agrees(tiny):
    """`build_engine("hf", ..., precision=bf16-mixed)`: the decode's matmuls are bf16, the reported
    log-probs float32, and the trainer's bf16 forward over the sampled tokens gives nearly the same
    log-probs — the gap `train/sampler_logprob_gap` logs. Measured on the untrained tiny model
    (8 prompts × 4 samples × 8 tokens, seeds 0-2): mean |sampler − trainer| 6.8e-4 to 7.4e-4 under
    bf16 (max 3.9e-3), 1.6e-7 to 1.9e-7 in fp32; asserted below 1e-2. (An fp32 engine against the
    bf16 trainer measured 1.3e-3: the hook, not the bound, shows the engine autocasts.)"""
    model = fresh_model(tiny.path).eval()
    engine = build_engine("hf", model, tiny.tokenizer, precision=BF16)
    seen = record_linear_outputs(model)
    prompts = [tiny.tokenizer(f"{a}+{a + 3}=")["input_ids"] for a in range(10, 18)]
    groups = engine.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, n=4, seed=0))
    assert seen and set(seen) == {torch.bfloat16}
    completions = [(p, c) for p, group in zip(prompts, groups) for c in group]
    assert all(isinstance(lp, float) and math.isfinite(lp) for _, c in completions for lp in c.logprobs)
    batch = build_batch([single_turn_sequence(p, c) for p, c in completions], [0.0] * len(completions),
                        list(range(len(completions))), tiny.tokenizer.pad_token_id)
    with torch.no_grad(), BF16.autocast():
        logp, _ = forward_logprobs(model, batch, slice(0, batch.size), 1.0)
    m = batch.mask > 0
    gap = float((batch.sampler_logprobs - logp)[m].abs().mean())
    assert logp.dtype == torch.float32 and math.isfinite(gap) and gap < 1e-2, gap
