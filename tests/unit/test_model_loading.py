"""Tests for posttrain.models.loading: dtype/device names, loading, LoRA, saving, counting."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.models.loading import (
    LoraSettings,
    ModelNotFoundError,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    save_model,
)
from posttrain.models.tiny import build_tiny_model

# tiny qwen2 with vocab 1024 (worked out in test_tiny_model.test_tiny_param_count_by_hand)
TINY_QWEN2_PARAMS = 1116288
# LoRA on every linear layer of one tiny layer, r * (in + out) each:
# q 128+128, k 128+64, v 128+64, o 128+128, gate 128+512, up 128+512, down 512+128 = 2816 per unit of r
LORA_PER_R_PER_LAYER = 256 + 192 + 192 + 256 + 640 + 640 + 640


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2")


def _input_ids() -> torch.Tensor:
    """(2, 6) batch of arbitrary in-vocab ids."""
    return torch.tensor([[1, 40, 41, 42, 43, 2], [1, 300, 301, 302, 303, 2]])


def _randomise_lora_b(model: torch.nn.Module) -> None:
    """peft initialises B = 0 (so the adapter starts as a no-op); give it values so merging matters."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name,expected",
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("BF16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        (torch.float16, torch.float16),
    ],
)
def test_resolve_dtype_names(name, expected):
    assert resolve_dtype(name) is expected


def test_resolve_dtype_auto_is_fp32_on_cpu():
    assert resolve_dtype("auto", device="cpu") is torch.float32
    if not torch.cuda.is_available():
        assert resolve_dtype("auto") is torch.float32


def test_resolve_dtype_unknown_names_value_and_choices():
    with pytest.raises(ValueError, match=r"'float8'.*bf16.*fp32.*auto"):
        resolve_dtype("float8")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'tpu'.*'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_resolve_device_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="'cuda:1' requested but CUDA is not available"):
        resolve_device("cuda:1")


# ----------------------------------------------------------------------------- loading


def test_missing_local_path_names_the_path(tmp_path):
    missing = tmp_path / "no" / "such_model"
    with pytest.raises(FileNotFoundError, match="such_model.*does not exist.*'owner/name'"):
        load_causal_lm(missing)
    with pytest.raises(FileNotFoundError, match="such_model"):
        load_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match=r"'\./checkpoints/run1/final'"):
        load_causal_lm("./checkpoints/run1/final")


def test_missing_relative_path_that_looks_like_a_hub_id_fails_fast_naming_the_local_path(tmp_path, monkeypatch):
    # `runs/no-such-model` is also a valid "owner/name": before the fix it went to the hub (~50 s of
    # retries without HF_HUB_OFFLINE) and the error never mentioned the local path.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    expected = str(tmp_path / "runs" / "no-such-model")
    for load in (load_tokenizer, load_causal_lm):
        start = time.monotonic()
        with pytest.raises(ModelNotFoundError) as info:
            load("runs/no-such-model")
        assert time.monotonic() - start < 5
        message = str(info.value)
        assert expected in message and "neither as a local directory" in message, message
        assert "offline mode is on" in message and f"though {tmp_path / 'runs'} exists" in message
        assert isinstance(info.value, FileNotFoundError)  # the CLI's exit code 1, no traceback


def test_unreachable_hub_is_one_quick_attempt_naming_the_local_path(tmp_path, monkeypatch):
    # Online mode against an endpoint that refuses connections at once (nothing leaves the machine).
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        load_causal_lm("runs/no-such-model")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert str(tmp_path / "runs" / "no-such-model") in message
    assert "the hub at http://127.0.0.1:9 could not be reached" in message, message


def test_hub_errors_after_the_check_still_name_the_local_path(tmp_path, monkeypatch):
    # A hub id that passed the check (here: faked as cached) but fails to load: the hub's error,
    # plus the fact that no local directory of that name exists.
    import posttrain.models.loading as loading

    monkeypatch.setattr(loading, "_in_hub_cache", lambda repo_id: True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"no local directory .*owner/model exists, so it was loaded as a "
                                                  r"Hugging Face hub id, which failed: OSError"):
        load_tokenizer("owner/model")


def test_file_instead_of_directory_is_a_clear_error(tmp_path):
    f = tmp_path / "model.bin"
    f.write_text("x")
    with pytest.raises(FileNotFoundError, match="model.bin.*is a file"):
        load_causal_lm(f)


def test_load_tokenizer_keeps_distinct_pad(tiny_dir):
    tok = load_tokenizer(tiny_dir)
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|im_end|>"


def test_load_tokenizer_without_pad_uses_eos_and_warns(tiny_dir, tmp_path, caplog):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    assert AutoTokenizer.from_pretrained(tmp_path / "nopad").pad_token is None  # precondition
    with caplog.at_level(logging.WARNING, logger="posttrain.models.loading"):
        loaded = load_tokenizer(tmp_path / "nopad")
    assert loaded.pad_token == "<|im_end|>"
    assert loaded.pad_token_id == loaded.eos_token_id == 2
    assert "no pad token" in caplog.text


def test_load_causal_lm_defaults(tiny_dir):
    model = load_causal_lm(tiny_dir)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert count_parameters(model) == TINY_QWEN2_PARAMS
    assert count_parameters(model, trainable_only=True) == TINY_QWEN2_PARAMS


def test_load_causal_lm_bf16(tiny_dir):
    model = load_causal_lm(tiny_dir, dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits = model(input_ids=_input_ids()).logits
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 6, 1024)


def test_load_causal_lm_attn_implementation(tiny_dir):
    model = load_causal_lm(tiny_dir, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"


def test_count_parameters_trainable_only():
    """Linear(3, 2) = 3*2 + 2 = 8 params, Linear(2, 1) = 2 + 1 = 3; freeze the second -> 8 trainable of 11."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].requires_grad_(False)
    assert count_parameters(model) == 11
    assert count_parameters(model, trainable_only=True) == 8


# ----------------------------------------------------------------------------- LoRA


def test_lora_settings_validation():
    with pytest.raises(ValueError, match="r must be positive"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoraSettings(dropout=1.0)
    with pytest.raises(ValueError, match="target_modules"):
        LoraSettings(target_modules=[])


def test_lora_only_lora_params_trainable(tiny_dir):
    """r=4 on all 7 linears of 4 layers: 4 * 4 * 2816 = 45056 trainable; the total grows by the same."""
    model = load_causal_lm(tiny_dir, lora=LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert count_parameters(model, trainable_only=True) == 4 * 4 * LORA_PER_R_PER_LAYER == 45056
    assert count_parameters(model) == TINY_QWEN2_PARAMS + 45056


def test_lora_target_modules_list(tiny_dir):
    """Only q_proj and v_proj: r=2 * ((128+128) + (128+64)) * 4 layers = 3584."""
    model = load_causal_lm(tiny_dir, lora=LoraSettings(r=2, target_modules=["q_proj", "v_proj"]))
    assert count_parameters(model, trainable_only=True) == 2 * (256 + 192) * 4 == 3584


def test_lora_with_gradient_checkpointing_gets_gradients(tiny_dir):
    model = load_causal_lm(tiny_dir, lora=LoraSettings(r=4), gradient_checkpointing=True)
    model.train()
    assert model.config.use_cache is False
    ids = _input_ids()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    # B starts at zero, so dL/dB is the nonzero one on the first step
    assert all(g is not None for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


# ----------------------------------------------------------------------------- saving


def test_save_plain_model_round_trip(tiny_dir, tmp_path):
    model = load_causal_lm(tiny_dir)
    tok = load_tokenizer(tiny_dir)
    out = save_model(model, tok, tmp_path / "plain")
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=_input_ids()).logits, model(input_ids=_input_ids()).logits)
    assert AutoTokenizer.from_pretrained(out).encode("What is 2+3?") == tok.encode("What is 2+3?")


def test_save_lora_writes_adapter_and_equivalent_merged_model(tiny_dir, tmp_path):
    model = load_causal_lm(tiny_dir, lora=LoraSettings(r=4, alpha=8))
    _randomise_lora_b(model)
    model.eval()
    tok = load_tokenizer(tiny_dir)
    ids = _input_ids()
    with torch.no_grad():
        peft_logits = model(input_ids=ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_dir)(input_ids=ids).logits

    out = save_model(model, tok, tmp_path / "lora")

    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert count_parameters(merged) == TINY_QWEN2_PARAMS
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
        after_logits = model(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, peft_logits, rtol=1e-5, atol=1e-5)
    assert (peft_logits - base_logits).abs().max() > 1e-2  # the adapter really changed the function
    # the training model still has its (unmerged) adapters and behaves exactly as before
    assert count_parameters(model, trainable_only=True) == 4 * 4 * LORA_PER_R_PER_LAYER
    torch.testing.assert_close(after_logits, peft_logits, rtol=0, atol=0)


def test_save_lora_without_merge_writes_only_adapter(tiny_dir, tmp_path):
    model = load_causal_lm(tiny_dir, lora=LoraSettings(r=2))
    out = save_model(model, load_tokenizer(tiny_dir), tmp_path / "adapter_only", merge_lora=False)
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert not (out / "model.safetensors").exists()
