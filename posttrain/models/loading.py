"""Load and save Hugging Face causal LMs and tokenizers (local directory or hub id), with optional LoRA.

posttrain never subclasses model classes: whatever ``AutoModelForCausalLM`` returns is the policy,
and ``save_model`` writes the standard safetensors layout that transformers and vLLM read back.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = [
    "LoraSettings",
    "ModelNotFoundError",
    "count_parameters",
    "from_pretrained",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "save_model",
]

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# "owner/name" with the characters the Hugging Face hub allows in repo ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_dtype(name: str | torch.dtype, device: torch.device | str | None = None) -> torch.dtype:
    """Map a dtype name to a ``torch.dtype``.

    Accepts "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16" (case-insensitive), a
    ``torch.dtype`` (returned as is), or "auto": bfloat16 when the target device is a CUDA GPU that
    supports it, else float32. ``device`` (default: "auto" device) only matters for "auto", so a
    CPU run on a GPU machine still gets float32.
    """
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower()
    if key == "auto":
        dev = resolve_device("auto") if device is None else torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(_DTYPES) + ['auto']}")
    return _DTYPES[key]


def resolve_device(name: str | torch.device) -> torch.device:
    """Map "auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:N" to a ``torch.device``.

    Raises ValueError for other names, and for CUDA devices on a machine without them.
    """
    if isinstance(name, torch.device):
        return name
    key = str(name).strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", key)
    if match is None:
        raise ValueError(f"unknown device {name!r}; choose 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(key)


class ModelNotFoundError(FileNotFoundError):
    """``name_or_path`` is neither an existing local directory nor a hub model that can be loaded.

    The message names the absolute local path that was looked for, and why the hub did not help
    (offline and not cached, no such repository, unreachable). A `FileNotFoundError`, so the CLI
    reports it as an error (exit code 1) without a traceback.
    """


def _local_hint(path: Path) -> str:
    """', though <dir> exists' for the nearest existing parent directory when that is not the
    working directory: the name is then most likely a mistyped local path."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return f", though {parent} exists" if parent not in (Path.cwd(), parent.parent) else ""


def _in_hub_cache(repo_id: str) -> bool:
    """True when the hub cache (``HF_HUB_CACHE``) holds a snapshot of model `repo_id`."""
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _is_network_error(err: BaseException) -> bool:
    """A connection / DNS / timeout failure, whichever HTTP client huggingface_hub uses."""
    if isinstance(err, (ConnectionError, TimeoutError, OSError)):
        return True
    return any(cls.__name__ in ("TransportError", "RequestError", "Timeout", "ConnectTimeout")
               for cls in type(err).__mro__)


def _hub_problem(repo_id: str) -> str | None:
    """Why hub id `repo_id` cannot be loaded, found with at most one quick request; None when it
    may load (cached, exists, or an answer that only `from_pretrained` can judge).

    One ``model_info`` request (no retries; at most ``HF_HUB_ETAG_TIMEOUT`` seconds, 10 by
    default) replaces the ~50 s `from_pretrained` spends on an unreachable hub: huggingface_hub's
    HTTP back-off retries each file 5 times, 1-8 s apart, and transformers asks for several files.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if _in_hub_cache(repo_id):
        return None
    if constants.is_offline_mode():
        return (f"a hub model in the local cache ({constants.HF_HUB_CACHE}): offline mode is on "
                "(HF_HUB_OFFLINE), so the hub was not asked")
    try:
        HfApi(endpoint=constants.ENDPOINT).model_info(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except GatedRepoError:
        return None  # it exists; from_pretrained says how to get access
    except RepositoryNotFoundError:
        return (f"a model on the Hugging Face hub ({constants.ENDPOINT} has no model {repo_id!r}, or it is "
                "private and no token grants access)")
    except HfHubHTTPError:
        return None  # e.g. a 5xx: from_pretrained retries and reports it
    except Exception as err:  # noqa: BLE001 - only network failures are judged here
        if _is_network_error(err):
            return (f"a reachable hub model (the hub at {constants.ENDPOINT} could not be reached: "
                    f"{type(err).__name__}: {err}; HF_HUB_OFFLINE=1 uses cached models only)")
        return None
    return None


def _check_source(name_or_path: str | Path, what: str) -> str:
    """Return ``name_or_path`` as a string if it is an existing local directory or a loadable
    "owner/name" hub id (cached, or found on the hub with one quick request).

    Raises `ModelNotFoundError` naming the absolute local path otherwise, within seconds,
    instead of the hub client's retries and long "is not a valid model identifier" message for
    what is almost always a typo in a local path.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{what} path {text!r} is a file; expected a model directory")
        return str(path)
    local = path.absolute()
    if not _HUB_ID.match(text):
        raise ModelNotFoundError(
            f"{what} path {text!r} does not exist (no local directory {local}{_local_hint(local)}) and is not "
            f"a Hugging Face hub id of the form 'owner/name'"
        )
    problem = _hub_problem(text)
    if problem is not None:
        raise ModelNotFoundError(
            f"{what} {text!r} was found neither as a local directory ({local} does not exist"
            f"{_local_hint(local)}) nor as {problem}"
        )
    return text


def from_pretrained(loader: Callable[..., Any], name_or_path: str | Path, what: str, **kwargs: Any) -> Any:
    """``loader(source, **kwargs)`` (e.g. ``AutoModelForSequenceClassification.from_pretrained``)
    for a local directory or a hub id, checked first by `_check_source` (`ModelNotFoundError`
    within seconds). When a hub id passes the check but loading it fails (an OSError: no
    config.json, gated, the network went), the error is re-raised as a `ModelNotFoundError` that
    also says no local directory of that name exists."""
    return _load_checked(loader, _check_source(name_or_path, what), what, **kwargs)


def _load_checked(loader: Callable[..., Any], source: str, what: str, **kwargs: Any) -> Any:
    """`from_pretrained` for a `source` that `_check_source` returned."""
    try:
        return loader(source, **kwargs)
    except OSError as err:
        if Path(source).is_dir():
            raise
        local = Path(source).expanduser().absolute()
        raise ModelNotFoundError(f"{what} {source!r}: no local directory {local} exists, so it was loaded "
                                 f"as a Hugging Face hub id, which failed: {type(err).__name__}: {err}") from err


def load_tokenizer(name_or_path: str | Path, *, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer with ``AutoTokenizer``; if it has no pad token, use EOS as pad (with a warning).

    Reusing EOS as pad is safe in posttrain because masks are always built from lengths, never by
    comparing ids with the pad id. Padding side is left to the caller.
    """
    source = _check_source(name_or_path, "tokenizer")  # before importing transformers: fails fast
    from transformers import AutoTokenizer

    tokenizer = _load_checked(AutoTokenizer.from_pretrained, source, "tokenizer", trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {source!r} has neither a pad token nor an eos token; set one explicitly")
        logger.warning("tokenizer %r has no pad token; using eos token %r as pad", source, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

    The update to a frozen weight W is (alpha / r) * B @ A with A: (r, in), B: (out, r).
    ``target_modules`` is a list of module-name suffixes or peft's "all-linear" (every linear layer
    except the output head).
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] | str = field(default="all-linear")

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"LoraSettings.r must be positive, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoraSettings.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSettings.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoraSettings.target_modules must name at least one module (or be 'all-linear')")


def load_causal_lm(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    lora: LoraSettings | None = None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> torch.nn.Module:
    """Load a causal LM onto ``device``, optionally wrapped with peft LoRA (then only LoRA params train).

    Args:
        name_or_path: local model directory or "owner/name" hub id.
        dtype: see :func:`resolve_dtype` ("auto" picks bf16 only when ``device`` is a bf16-capable GPU).
        device: see :func:`resolve_device`.
        lora: when given, wrap with ``peft.get_peft_model``; base weights are frozen.
        gradient_checkpointing: recompute activations in backward (non-reentrant, which also works
            with frozen embeddings under LoRA); disables the KV cache, which it is incompatible with.
        trust_remote_code: passed to transformers.
        attn_implementation: e.g. "eager", "sdpa", "flash_attention_2"; None lets transformers choose.
    """
    source = _check_source(name_or_path, "model")  # before importing transformers: fails fast
    from transformers import AutoModelForCausalLM

    target = resolve_device(device)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, target), "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = _load_checked(AutoModelForCausalLM.from_pretrained, source, "model", **kwargs)
    model.to(target)

    if gradient_checkpointing:
        # transformers >= 5 renamed the method; the old name still works but warns.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False

    if lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            # peft still calls transformers' deprecated `is_gradient_checkpointing`; not ours to fix.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, config)
    return model


def _is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but a plain model never needs it
        return False
    return isinstance(model, PeftModel)


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """Deep copy of ``model`` whose parameters and buffers live on the CPU.

    Pre-seeding deepcopy's memo with CPU clones means GPU tensors are never duplicated on the GPU,
    so saving a merged model mid-training needs no extra accelerator memory. Tied weights stay tied
    because the memo is keyed by tensor identity.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo)


def save_model(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path, *, merge_lora: bool = True) -> Path:
    """Save ``model`` and ``tokenizer`` in standard Hugging Face format (safetensors).

    A plain model goes to ``out_dir``. A peft model's adapter goes to ``out_dir/adapter``; with
    ``merge_lora`` a merged full model (W + alpha/r * B @ A) also goes to ``out_dir``, built from a
    CPU copy so the training model keeps its adapters. The tokenizer is saved next to every
    loadable artefact. Returns ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _is_peft(model):
        adapter_dir = out / "adapter"
        model.save_pretrained(adapter_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(adapter_dir)
        if merge_lora:
            merged = _cpu_copy(model).merge_and_unload()
            merged.save_pretrained(out)  # safetensors is the default
            del merged
    else:
        model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (tied weights counted once); only ``requires_grad`` ones if ``trainable_only``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _base_forward_parameters(model):
    base = getattr(model, "peft_model", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return inspect.signature(base.forward).parameters


def cache_keyword(model) -> str:
    """The forward keyword a KV cache goes in by: `cache` where the model's forward names it
    (transformers 5.2x, which deprecates `past_key_values` and warns on it), else `past_key_values`
    (older releases, and custom modules written for them). Looks through a peft wrapper."""
    return "cache" if "cache" in _base_forward_parameters(model) else "past_key_values"


def returned_cache(output):
    """The KV cache a forward with `use_cache=True` returned, under either release's field name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (Llama, Qwen2, Mistral, ... in recent
    transformers: an int keeps the last positions, a boolean (B, T) mask the marked ones), so a
    caller can skip the LM head on positions whose logits it never reads. Looks through a peft
    wrapper, and through a module that holds one as `peft_model` (the RL reference with adapters off)."""
    return "logits_to_keep" in _base_forward_parameters(model)
