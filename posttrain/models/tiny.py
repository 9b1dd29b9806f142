"""Tiny, offline, randomly initialised causal LMs and their tokenizer.

Everything in posttrain's tests, CI and demo runs on models built here, so nothing ever downloads
weights. A model is a freshly initialised ``Qwen2ForCausalLM`` or ``LlamaForCausalLM`` plus a small
byte-level BPE tokenizer trained (in about a second) on :func:`default_corpus`, saved in the standard
Hugging Face layout so ``AutoModelForCausalLM`` / ``AutoTokenizer`` load it like any hub model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "PRESETS",
    "PRETOKENIZE_REGEX",
    "SPECIAL_TOKENS",
    "build_tiny_model",
    "default_corpus",
    "train_tokenizer",
]

ENDOFTEXT_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"  # ends every turn; generation stops on it
PAD_TOKEN = "<|pad|>"  # deliberately distinct from EOS so padding is never confused with a real stop
SPECIAL_TOKENS = [ENDOFTEXT_TOKEN, IM_START_TOKEN, EOS_TOKEN, PAD_TOKEN]

# Architecture sizes. "tiny" (~1.1 M params with vocab 1024) is for tests and the demo;
# "small" (~13.4 M params) is for benchmarks. Users may read (or copy and edit) this dict.
PRESETS: dict[str, dict[str, int | bool]] = {
    "tiny": {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    },
    # For agentic tasks: tiny's width with the context a multi-turn tool conversation needs
    # (tool schemas in the system turn, several calls and results: 1–2k tokens).
    "agent": {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
    # The agentic comparison's larger model (~2.2× agent's parameters and compute), trained alongside it.
    "agent-large": {
        "hidden_size": 192,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 768,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
    "small": {
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "intermediate_size": 1536,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
    },
}

# ChatML template. The assistant's content and its closing <|im_end|> sit inside
# {% generation %} so `return_assistant_tokens_mask=True` marks exactly the tokens a policy produces.
# Tool calls use the Qwen/Hermes convention: <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>.
# `arguments` may be a dict (rendered with tojson) or an already-serialised JSON string (OpenAI style).
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more of these tools:\\n<tools>\\n' }}"
    "{%- for tool in tools %}{{- tool | tojson }}{{- '\\n' }}{%- endfor %}"
    "{{- '</tools>\\n\\nTo call a tool, reply with <tool_call>\\n"
    '{"name": <tool-name>, "arguments": <args-json-object>}'
    "\\n</tool_call><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and tools and loop.first %}"
    # already rendered inside the tools system turn above
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{%- if message.content %}{{- message.content }}{%- endif %}"
    "{%- if message.tool_calls %}"
    "{%- for tc in message.tool_calls %}"
    "{%- if tc.function is defined %}{%- set tc = tc.function %}{%- endif %}"
    "{%- if message.content or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": ' }}{{- tc.name | tojson }}{{- ', \"arguments\": ' }}"
    "{%- if tc.arguments is string %}{{- tc.arguments }}{%- else %}{{- tc.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Pre-tokenisation split, identical to Qwen2's: single digits (\p{N}), words with at most one leading
# non-letter, punctuation runs, newlines, whitespace. Why Qwen2's and not our own: transformers 5.x's
# AutoTokenizer, given a directory whose config.json says model_type "qwen2", always builds a
# Qwen2Tokenizer that *replaces* the saved normaliser and pre-tokenizer with NFC + this regex +
# ByteLevel(use_regex=False), ignoring tokenizer_class in tokenizer_config.json. Training with that
# exact pipeline makes the rebuild a no-op, so ids are identical after reload for every arch.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_WORDS = (
    "What is the answer to this question ? Question : Answer : Let us think step by step . "
    "First , then , so the final answer is . We add multiply subtract divide the numbers and "
    "get a result of total sum product difference . The user asks for a tool call to look up "
    "a row in the table and return the value . Please solve compute check verify explain why "
    "because this that it is not yes no true false correct wrong good bad number word list "
    "name arguments function result error hello world you I we they can will should must "
    "reason think plan write code test run file data model train reward policy value "
    "how many apples does Tom have left after giving some away ? There are in each box . "
    "about above across after again against all almost alone along already also always among "
    "another any anyone anything around ask away back before began begin being below between "
    "both bring build business call came carry change child children city close come could "
    "country course cover cross day different does done door down during early earth east "
    "easy end enough even every example eye face fact family far father feel few find fire "
    "follow food form found four friend from full game gave general give going great green "
    "group grow hand happen hard head hear heard help here high hold home horse hour house "
    "idea important inside into just keep kind know land large last later learn leave less "
    "letter life light line little live long look made make man many mark may mean might "
    "mind money month more morning most mother move much music near need never new next night "
    "nothing now often old once only open order other over own page paper part people person "
    "picture place point power present problem pull put quick rain read real red remember "
    "right river road rock room round rule same saw say school sea second see seem sentence "
    "set several short show side simple since size small something sometimes song soon sound "
    "south space special stand start state still stop story street strong study such sure "
    "system take talk teacher tell thing those thought three through time together told took "
    "toward tree try turn under until upon usual very voice walk want warm watch water way "
    "weather week well went were west where which while white whole wind without woman wood "
    "work year young yesterday tomorrow today language sample prompt response assistant "
    "system user tool output input token sequence batch loss gradient update learning rate"
).split()

_FIRST_NAMES = ["Tom", "Ana", "Li", "Sam", "Mia", "Omar", "Zoe", "Ben"]
_OBJECTS = ["apples", "books", "coins", "cats", "pens", "cards", "eggs", "boxes"]
_TOOLS = ["lookup", "calculator", "search", "get_weather", "read_file", "python"]
_CODE_SNIPPETS = [
    "def f(x):\n    return x",
    "def add(a, b):\n    return a + b",
    "for i in range(10):\n    print(i)",
    "if x > 0:\n    y = x * 2\nelse:\n    y = 0",
    "import json\ndata = json.loads(text)",
    "class Node:\n    def __init__(self, value):\n        self.value = value",
    "while n > 1:\n    n = n // 2",
    "result = [x * x for x in items if x % 2 == 0]",
]


def _arithmetic(rng: random.Random) -> str:
    """One expression with its (integer) answer, e.g. ``12+34=46`` or ``(3 + 4) * 5 = 35``."""
    a, b, c = rng.randint(0, 99), rng.randint(0, 99), rng.randint(1, 12)
    op = rng.choice("+-*")
    kind = rng.random()
    if kind < 0.5:
        expr = f"{a}{op}{b}"
    elif kind < 0.8:
        expr = f"{a} {op} {b}"
    else:
        op2 = rng.choice("+-*")
        expr = f"({a} {op} {b}) {op2} {c}"
    sep = "=" if " " not in expr else " = "
    return f"{expr}{sep}{eval(expr)}"  # noqa: S307 - expr is built from our own ints and operators


def _phrase(rng: random.Random) -> str:
    """A short English-ish sentence or a word problem with a worked answer."""
    if rng.random() < 0.5:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14)))
    name, obj = rng.choice(_FIRST_NAMES), rng.choice(_OBJECTS)
    n, k = rng.randint(5, 60), rng.randint(1, 5)
    return (
        f"Question: {name} has {n} {obj} and gives away {k}. How many {obj} are left?\n"
        f"Let us think step by step. {n} - {k} = {n - k}. The answer is {n - k}."
    )


def _tool_call(rng: random.Random) -> str:
    """Tool-call JSON as the chat template renders it, plus a tool result."""
    args = rng.choice(
        [
            {"row": rng.randint(0, 20)},
            {"expression": f"{rng.randint(1, 99)}*{rng.randint(1, 99)}"},
            {"query": " ".join(rng.choice(_WORDS) for _ in range(3))},
            {"city": rng.choice(["Paris", "Lagos", "Tokyo", "Lima"]), "unit": "celsius"},
        ]
    )
    call = json.dumps({"name": rng.choice(_TOOLS), "arguments": args})
    if rng.random() < 0.5:
        return f"<tool_call>\n{call}\n</tool_call>"
    return json.dumps({"result": rng.randint(0, 999), "ok": True})


def _chat(rng: random.Random) -> str:
    """A short ChatML exchange so the role names and newlines around markers get merges."""
    q = _arithmetic(rng)
    expr, ans = q.rsplit("=", 1)
    return (
        f"{IM_START_TOKEN}system\nYou are a helpful assistant.{EOS_TOKEN}\n"
        f"{IM_START_TOKEN}user\nWhat is {expr.strip()}?{EOS_TOKEN}\n"
        f"{IM_START_TOKEN}assistant\nThe answer is {ans.strip()}.{EOS_TOKEN}\n"
    )


def default_corpus(seed: int = 0, n: int = 4000) -> list[str]:
    """Generated tokenizer-training text, deterministic for a given ``seed``.

    A mix of arithmetic (``7*8=56``), English phrases and word problems ("What is", "Question",
    "step", "answer"), JSON tool calls, Python-ish code and ChatML conversations, in roughly
    equal shares, so the BPE merges cover what posttrain's tests and demo feed the model.

    Args:
        seed: RNG seed; the same seed always gives the same list.
        n: number of snippets (the default keeps tokenizer training around a second).
    """
    rng = random.Random(seed)
    makers = [_arithmetic, _phrase, _tool_call, _chat, lambda r: r.choice(_CODE_SNIPPETS)]
    return [makers[i % len(makers)](rng) for i in range(n)]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with ChatML special tokens and chat template.

    Pipeline: NFC normaliser, then :data:`PRETOKENIZE_REGEX` split (digits one per token, so
    arithmetic is learnable at any size), then byte-level mapping; ByteLevel decoder. The full
    256-byte initial alphabet means any string (any unicode) encodes without an unknown token, and
    ``decode(encode(s)) == unicodedata.normalize("NFC", s)``. Special tokens get ids 0..3 in the
    order of :data:`SPECIAL_TOKENS`.

    Args:
        texts: training strings.
        vocab_size: target vocabulary size, special tokens and the 256 byte tokens included.

    Returns:
        A ``PreTrainedTokenizerFast`` with eos ``<|im_end|>``, pad ``<|pad|>``, no BOS.
    """
    min_vocab = len(SPECIAL_TOKENS) + 256
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size={vocab_size} is too small: need at least {min_vocab} (specials + 256 bytes)")

    tok = Tokenizer(models.BPE())  # no unk token: the byte-level alphabet covers everything
    tok.normalizer = normalizers.NFC()  # see PRETOKENIZE_REGEX for why (Qwen2 compatibility)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets contiguous, which the assistant-mask logic relies on.
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)

    # transformers 5 renamed additional_special_tokens (still accepted there, but deprecated).
    major = int(transformers.__version__.split(".")[0])
    extra_key = "extra_special_tokens" if major >= 5 else "additional_special_tokens"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **{extra_key: [ENDOFTEXT_TOKEN, IM_START_TOKEN]},
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


_ARCHS = ("qwen2", "llama")


def _check_choice(arch: str, preset: str) -> None:
    """Fail fast (before any tokenizer training) on an unknown arch or preset."""
    if arch not in _ARCHS:
        raise ValueError(f"arch={arch!r} is not supported; choose one of {list(_ARCHS)}")
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not known; choose one of {sorted(PRESETS)}")


def _random_model(arch: str, preset: str, tokenizer: PreTrainedTokenizerFast, seed: int) -> torch.nn.Module:
    """A freshly initialised ``arch`` model sized by ``PRESETS[preset]``, vocab = tokenizer size."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **PRESETS[preset],
    )
    # fork_rng: seed the init without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return model


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: str = "qwen2",
    preset: str = "tiny",
    seed: int = 0,
    vocab_size: int = 1024,
    extra_corpus: Iterable[str] | None = None,
) -> Path:
    """Build and save a randomly initialised causal LM with its tokenizer, fully offline.

    Weights are deterministic for a given ``seed`` (and arch/preset/vocab_size). The directory
    holds ``config.json``, ``model.safetensors``, ``generation_config.json`` (eos/pad ids set) and
    the tokenizer files, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``.

    Args:
        out_dir: where to save (created if missing).
        arch: ``"qwen2"`` or ``"llama"``.
        preset: a key of :data:`PRESETS` (``"tiny"``, ``"agent"`` or ``"small"``).
        seed: seeds the weight initialisation (the tokenizer is the same for every seed).
        vocab_size: tokenizer (and embedding) size.
        extra_corpus: more tokenizer-training text (e.g. the conversations of an agentic task, so
            its tool names and JSON keys get merges and its sequences get shorter). The vocabulary
            then differs from the default tiny models'.

    Returns:
        ``out_dir`` as a ``Path``.
    """
    _check_choice(arch, preset)
    out_dir = Path(out_dir)
    # The corpus seed is fixed on purpose: every tiny model (any `seed`) shares one vocabulary,
    # so e.g. a policy and a reward model built with different seeds can read each other's ids.
    tokenizer = train_tokenizer(default_corpus(0) + list(extra_corpus or []), vocab_size=vocab_size)
    tokenizer.model_max_length = int(PRESETS[preset]["max_position_embeddings"])
    model = _random_model(arch, preset, tokenizer, seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _make_tokenizer_config_portable(out_dir / "tokenizer_config.json")
    return out_dir


def _make_tokenizer_config_portable(path: Path) -> None:
    """Rewrite transformers-5-only keys so transformers 4.x (and tools pinned to it) can load the tokenizer.

    transformers 5 writes ``tokenizer_class: "TokenizersBackend"`` (a class 4.x lacks) and a list under
    ``extra_special_tokens`` (a dict in 4.x). ``PreTrainedTokenizerFast`` / ``additional_special_tokens``
    mean the same thing to both major versions.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    elif extra is not None:
        config["extra_special_tokens"] = extra
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
