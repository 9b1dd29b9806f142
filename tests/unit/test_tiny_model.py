"""Tests for posttrain.models.tiny: corpus, tokenizer, chat template and tiny model building."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.models.tiny import (
    EOS_TOKEN,
    PAD_TOKEN,
    PRESETS,
    SPECIAL_TOKENS,
    build_tiny_model,
    default_corpus,
    train_tokenizer,
)

VARIED_TEXTS = [
    "What is 12+34? The answer is 46.",
    "  leading and trailing spaces  ",
    "(3 + 4) * 5 = 35\n\n\tindented\r\nwindows line",
    'def f(x):\n    return {"row": x, "ok": true}',
    "héllo wörld — naïve café, Ελληνικά, русский, 日本語, 中文, 한국어",
    "emoji 🎉🤖 and symbols ∑∫√ ≠ ≤ ≥ € £ ¥",
    "I'll say it's 7; they've DONE it, haven't they?",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(default_corpus(0))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """One tiny model per architecture, built once for the whole module."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_tiny_model(root / arch, arch=arch) for arch in ("qwen2", "llama")}


# ----------------------------------------------------------------------------- corpus


def test_default_corpus_is_deterministic_and_seed_dependent():
    assert default_corpus(0) == default_corpus(0)
    assert default_corpus(0) != default_corpus(1)


def test_default_corpus_covers_every_kind_of_text():
    text = "\n".join(default_corpus(0))
    for needle in ("Question", "step", "answer", "What is", "<tool_call>", '"arguments": {', "def ", "return",
                   "<|im_start|>assistant\n", "<|im_end|>", "*", "(", ")"):
        assert needle in text, needle


def test_default_corpus_arithmetic_answers_are_correct():
    """Every pure arithmetic snippet "<expr>=<value>" states the true value of expr."""
    arithmetic = [t for t in default_corpus(3) if re.fullmatch(r"[\d+\-*() ]+=\s*-?\d+", t)]
    assert len(arithmetic) > 100
    for line in arithmetic:
        lhs, rhs = line.split("=")
        assert eval(lhs) == int(rhs), line  # noqa: S307 - digits and operators only (checked by the regex)


# ----------------------------------------------------------------------------- tokenizer


def test_vocab_size_and_special_token_ids(tokenizer):
    assert len(tokenizer) == 1024
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3]
    assert sorted(tokenizer.all_special_ids) == [0, 1, 2, 3]


def test_too_small_vocab_is_rejected():
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(["abc"], vocab_size=100)


def test_digits_are_split_one_per_token(tokenizer):
    for text in ("1234567890", "x=2024", " 98+76", "ab12cd"):
        tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode(text))
        digit_tokens = [t for t in tokens if any(c.isdigit() for c in t)]
        assert all(len(t) == 1 for t in digit_tokens), tokens
        assert "".join(digit_tokens) == "".join(c for c in text if c.isdigit())


def test_encode_decode_round_trip(tokenizer):
    for text in VARIED_TEXTS:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_decomposed_unicode_decodes_to_nfc(tokenizer):
    """The NFC normaliser (needed for Qwen2 compatibility) composes e + U+0301 into é."""
    text = "cafe\u0301"
    assert tokenizer.decode(tokenizer.encode(text)) == unicodedata.normalize("NFC", text) == "caf\u00e9"


def test_no_unknown_bytes_anywhere(tokenizer):
    """Byte-level alphabet: all 256 byte values survive a round trip."""
    text = bytes(range(32, 127)).decode() + "".join(chr(c) for c in range(0xA0, 0x180))
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_pad_and_eos_are_distinct_single_special_tokens(tokenizer):
    assert tokenizer.eos_token == EOS_TOKEN == "<|im_end|>"
    assert tokenizer.pad_token == PAD_TOKEN == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.encode(EOS_TOKEN) == [tokenizer.eos_token_id]
    assert tokenizer.encode(PAD_TOKEN) == [tokenizer.pad_token_id]
    assert tokenizer.encode("hi<|im_end|>")[-1] == tokenizer.eos_token_id
    assert tokenizer.bos_token is None
    # special tokens are dropped when asked
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|><|pad|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_ids_unchanged_after_autotokenizer_reload(arch, model_dirs, tokenizer):
    """AutoTokenizer on a qwen2 dir builds Qwen2Tokenizer (which rebuilds the pipeline); ids must not change."""
    reloaded = AutoTokenizer.from_pretrained(model_dirs[arch])
    texts = VARIED_TEXTS + ["cafe\u0301", "<|im_start|>user\nWhat is 3*4?<|im_end|>\n<|pad|><|endoftext|>"]
    for text in texts:
        assert reloaded.encode(text) == tokenizer.encode(text), (arch, text)
    assert reloaded.eos_token_id == tokenizer.eos_token_id
    assert reloaded.pad_token_id == tokenizer.pad_token_id
    assert reloaded.bos_token is None
    assert sorted(reloaded.all_special_ids) == [0, 1, 2, 3]
    assert len(reloaded) == len(tokenizer)
    messages = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}]
    assert reloaded.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )


# ----------------------------------------------------------------------------- chat template

TWO_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+3?"},
]
TWO_MESSAGES_RENDERED = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"


def test_chat_template_two_messages(tokenizer):
    assert tokenizer.apply_chat_template(TWO_MESSAGES, tokenize=False) == TWO_MESSAGES_RENDERED


def test_chat_template_generation_prompt(tokenizer):
    rendered = tokenizer.apply_chat_template(TWO_MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered == TWO_MESSAGES_RENDERED + "<|im_start|>assistant\n"


def test_chat_template_tool_calls_and_tool_results(tokenizer):
    tool = {
        "type": "function",
        "function": {"name": "lookup", "description": "Read a row", "parameters": {"type": "object"}},
    }
    messages = [
        {"role": "user", "content": "Row 3?"},
        # OpenAI-style nested call with dict arguments, plus a flat call with string arguments
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"type": "function", "function": {"name": "lookup", "arguments": {"row": 3}}},
                {"name": "lookup", "arguments": '{"row": 4}'},
            ],
        },
        {"role": "tool", "content": "42"},
        {"role": "tool", "content": "43"},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "lookup", "arguments": {"row": 5}}]},
    ]
    rendered = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False)
    system_turn, rest = rendered.split("<|im_end|>\n", 1)
    assert system_turn.startswith("<|im_start|>system\n")
    assert json.dumps(tool) in system_turn  # the tool schema is rendered with tojson
    assert rest == (
        "<|im_start|>user\nRow 3?<|im_end|>\n"
        "<|im_start|>assistant\nChecking.\n"
        '<tool_call>\n{"name": "lookup", "arguments": {"row": 3}}\n</tool_call>\n'
        '<tool_call>\n{"name": "lookup", "arguments": {"row": 4}}\n</tool_call><|im_end|>\n'
        "<|im_start|>tool\n42<|im_end|>\n"
        "<|im_start|>tool\n43<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "lookup", "arguments": {"row": 5}}\n</tool_call><|im_end|>\n'
    )


def test_chat_template_system_message_merges_into_tools_turn(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(messages, tools=[{"name": "lookup"}], tokenize=False)
    assert rendered.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert rendered.count("<|im_start|>system") == 1
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n")


def _mask_spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    """Contiguous runs of ids whose mask is 1."""
    spans, current = [], []
    for token_id, m in zip(ids, mask):
        if m:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return spans


def test_assistant_mask_covers_exactly_content_and_im_end(tokenizer):
    """Masked ids must equal encode(content) + [eos] for each assistant turn, nothing else."""
    tool_call = '<tool_call>\n{"name": "lookup", "arguments": {"row": 3}}\n</tool_call>'
    answers = ["5", "It is 16, because 4*4=16.", tool_call]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": answers[0]},
        {"role": "user", "content": "And 4*4?"},
        {"role": "assistant", "content": answers[1]},
        {"role": "user", "content": "Row 3?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "lookup", "arguments": {"row": 3}}]},
        {"role": "tool", "content": "42"},
    ]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    expected = [tokenizer.encode(a) + [tokenizer.eos_token_id] for a in answers]
    assert _mask_spans(ids, mask) == expected
    assert sum(mask) == sum(len(e) for e in expected)


# ----------------------------------------------------------------------------- models


def _param_count_from_config(preset: str, vocab: int, qkv_bias: bool) -> int:
    """Parameter count worked out from the preset dict (tied embeddings: counted once)."""
    p = PRESETS[preset]
    h, inter, layers = p["hidden_size"], p["intermediate_size"], p["num_hidden_layers"]
    kv = h // p["num_attention_heads"] * p["num_key_value_heads"]
    attn = h * h + 2 * h * kv + h * h + (h + 2 * kv if qkv_bias else 0)
    per_layer = attn + 3 * h * inter + 2 * h  # q,k,v,o + gate/up/down + two RMSNorms
    return vocab * h + layers * per_layer + h  # embeddings + layers + final norm


def test_tiny_param_count_by_hand(model_dirs):
    """tiny qwen2: embed 1024*128 = 131072; per layer q 128*128+128 = 16512, k = v = 128*64+64 = 8256,
    o 16384, mlp 3*128*512 = 196608, norms 256 -> 246272; 4 layers 985088; final norm 128 -> 1116288.
    llama has no q/k/v bias: 1116288 - 4*(128+64+64) = 1115264."""
    qwen = AutoModelForCausalLM.from_pretrained(model_dirs["qwen2"])
    llama = AutoModelForCausalLM.from_pretrained(model_dirs["llama"])
    assert sum(p.numel() for p in qwen.parameters()) == 1116288 == _param_count_from_config("tiny", 1024, True)
    assert sum(p.numel() for p in llama.parameters()) == 1115264 == _param_count_from_config("tiny", 1024, False)
    assert 1_000_000 <= 1116288 <= 2_000_000


def test_small_preset_param_count_in_range():
    count = _param_count_from_config("small", 1024, qkv_bias=True)
    assert 10_000_000 <= count <= 30_000_000


@pytest.mark.integration
def test_small_preset_builds_with_the_computed_count(tmp_path):
    out = build_tiny_model(tmp_path / "small", preset="small")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == _param_count_from_config("small", 1024, True)


def test_build_returns_loadable_dir_with_generation_config(model_dirs):
    for arch, path in model_dirs.items():
        files = {p.name for p in path.iterdir()}
        assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
        config = json.loads((path / "config.json").read_text())
        assert config["model_type"] == arch
        gen = json.loads((path / "generation_config.json").read_text())
        assert (gen["eos_token_id"], gen["pad_token_id"]) == (2, 3)
        # class and key names that transformers 4.x understands too
        tok_config = json.loads((path / "tokenizer_config.json").read_text())
        assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
        assert tok_config["additional_special_tokens"] == ["<|endoftext|>", "<|im_start|>"]
        assert tok_config["eos_token"] == "<|im_end|>" and tok_config["pad_token"] == "<|pad|>"


@pytest.mark.parametrize("arch,cls_name", [("qwen2", "Qwen2ForCausalLM"), ("llama", "LlamaForCausalLM")])
def test_automodel_loads_and_forward_works(arch, cls_name, model_dirs):
    model = AutoModelForCausalLM.from_pretrained(model_dirs[arch])
    tok = AutoTokenizer.from_pretrained(model_dirs[arch])
    assert type(model).__name__ == cls_name
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    ids = tok.apply_chat_template(TWO_MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    input_ids = ids["input_ids"]  # (1, T)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    assert logits.shape == (1, input_ids.shape[1], 1024)
    assert torch.isfinite(logits).all()
    out = model.generate(input_ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (1, input_ids.shape[1] + 3)


def test_same_seed_same_weights_other_seed_differs(tmp_path, model_dirs):
    again = load_file(build_tiny_model(tmp_path / "again", arch="qwen2", seed=0) / "model.safetensors")
    first = load_file(model_dirs["qwen2"] / "model.safetensors")
    assert first.keys() == again.keys()
    for name in first:
        torch.testing.assert_close(first[name], again[name], rtol=0, atol=0)
    other_dir = build_tiny_model(tmp_path / "other", arch="qwen2", seed=1)
    other = load_file(other_dir / "model.safetensors")
    assert any(not torch.equal(first[n], other[n]) for n in first if first[n].dim() == 2)
    # ...but every seed shares one tokenizer, so models built with different seeds are id-compatible
    assert (other_dir / "tokenizer.json").read_text() == (model_dirs["qwen2"] / "tokenizer.json").read_text()


def test_weights_are_initialised_not_left_empty(model_dirs):
    """Random init follows the config's initializer_range (0.02): weights have std near 0.02, norms are ones."""
    weights = load_file(model_dirs["qwen2"] / "model.safetensors")
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert 0.015 < q.std().item() < 0.025
    torch.testing.assert_close(weights["model.norm.weight"], torch.ones(128))


def test_build_does_not_disturb_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", seed=7)
    torch.testing.assert_close(torch.rand(3), expected)


def test_unknown_arch_or_preset_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="arch='gpt2'"):
        build_tiny_model(tmp_path / "a", arch="gpt2")
    with pytest.raises(ValueError, match="preset='huge'"):
        build_tiny_model(tmp_path / "b", preset="huge")
