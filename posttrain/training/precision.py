"""Mixed precision for every recipe: what `precision` means, how `auto` is resolved, the autocast context.

`precision` is a top-level key of every training recipe's config (`posttrain sft precision=bf16-mixed`):

- ``fp32``: no autocast; everything runs in the weights' dtype (`model.dtype`, float32 by default).
- ``bf16-mixed``: the model's forward passes run under ``torch.autocast(device, torch.bfloat16)``.
  Autocast computes matmuls (linear layers, attention, the LM head) in bf16 from bf16 *copies* of
  the weights, so the weights themselves, their gradients and AdamW's moments stay float32 (the
  master weights; bf16 has float32's exponent range, so no loss scaling is needed). Elementwise
  ops keep their input dtype: the residual stream and the norms stay float32. What is computed
  from a forward's outputs is float32 as well: logits are cast before every log-softmax
  (`algorithms/logprobs.py`, `entropy.py`, `models/sequence_logprobs.py`, the engine's
  sampler), and the reward / value heads run with autocast off (`models/scalar_head.py`), so
  log-probs, logsumexp and softmax statistics, entropies, KL, losses, values and rewards carry
  no bf16 rounding beyond the logits' own. Recipes wrap their forward passes; backward runs
  outside the region, as PyTorch recommends (its ops follow the dtypes the forward chose).
- ``auto``: bf16-mixed on a CUDA GPU with native bf16. On a CPU only when bf16 matmuls are
  measured clearly faster than float32 (`MIN_CPU_SPEEDUP`): CPUs without native bf16 (AVX2,
  AVX-512 without AVX512-BF16 / AMX) emulate it, and there it is many times slower. Otherwise fp32.

`resolve_precision` gives a `Precision`: the choice, why, and its `autocast()` context. The run
prints `describe()` at start and records `as_dict()` in its config snapshot (`resolved_precision`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import typing
from typing import Any, ContextManager

import torch

from posttrain.config import ConfigError, PrecisionName
from posttrain.models.loading import resolve_device, resolve_dtype

# bf16 is chosen on a CPU only when a bf16 matmul runs at least this many times faster than fp32;
# a smaller gain is not worth bf16's rounding (and can be measurement noise).
MIN_CPU_SPEEDUP = 1.5
_BENCH_SIZE = 512
_BENCH_REPS = 3


@dataclasses.dataclass(frozen=True)
class Precision:
    """A resolved precision: `name` is "fp32" or "bf16-mixed"; `requested` what the config said."""

    name: str
    requested: str
    device_type: str
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.name == "bf16-mixed" else None

    def autocast(self) -> ContextManager[Any]:
        """The region forward passes run in: bf16 autocast for bf16-mixed, nothing for fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        return f"precision {self.name} (requested {self.requested}): {self.reason}"

    def as_dict(self) -> dict:
        return {"precision": self.name, "requested": self.requested, "device": self.device_type,
                "reason": self.reason}


def _time_matmul(dtype: torch.dtype) -> float:
    """Best of a few seconds-per-matmul of two square matrices in `dtype`, on the CPU."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(_BENCH_SIZE, _BENCH_SIZE, generator=generator).to(dtype)
    b = torch.randn(_BENCH_SIZE, _BENCH_SIZE, generator=generator).to(dtype)
    a @ b  # warm-up: first-call dispatch and allocation are not the kernel's speed
    best = float("inf")
    for _ in range(_BENCH_REPS):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup() -> float:
    """How many times faster a 512×512 bf16 matmul is than a float32 one on this CPU (< 1: slower).

    Measured once per process (well under a second, even where bf16 is emulated) at torch's
    current thread count, the one training runs with; every later `auto` reuses the figure, so
    all of a process's runs make the same choice.
    """
    return _time_matmul(torch.float32) / _time_matmul(torch.bfloat16)


def cpu_capability() -> str:
    """torch's CPU kernel level (`DEFAULT`, `AVX2`, `AVX512`, ...); says nothing of AVX512-BF16 or AMX."""
    return str(torch.backends.cpu.get_cpu_capability())


def resolve_precision(requested: str, device: torch.device | str, *,
                      weights_dtype: torch.dtype = torch.float32) -> Precision:
    """`requested` ("fp32", "bf16-mixed" or "auto") for a model on `device` whose weights load
    in `weights_dtype`. Raises ConfigError for an unknown name, and for bf16-mixed over weights
    that are not float32 (there would be no float32 master weights to keep)."""
    device_type = torch.device(device).type
    weights = str(weights_dtype).removeprefix("torch.")
    if requested == "fp32":
        return Precision("fp32", requested, device_type, f"as configured; no autocast, weights in {weights}")
    if requested == "bf16-mixed":
        if weights_dtype != torch.float32:
            raise ConfigError(f"precision: bf16-mixed keeps float32 master weights, but model.dtype loads them in "
                              f"{weights}; set model.dtype=float32 (or precision=fp32 to train in {weights} as is)")
        where = f"CPU capability {cpu_capability()}" if device_type == "cpu" else device_type
        return Precision("bf16-mixed", requested, device_type,
                         f"as configured ({where}); bf16 autocast, float32 weights and optimizer state")
    if requested != "auto":
        raise ConfigError(f"precision must be one of {list(typing.get_args(PrecisionName))}, got {requested!r}")
    if weights_dtype != torch.float32:
        return Precision("fp32", requested, device_type,
                         f"model.dtype loads the weights in {weights}: they compute in it without autocast")
    if device_type == "cuda":
        # Native bf16 only (compute capability >= 8): older GPUs emulate it, slowly.
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision("bf16-mixed", requested, device_type, "a CUDA GPU with native bf16")
        return Precision("fp32", requested, device_type, "this CUDA GPU has no native bf16")
    if device_type != "cpu":
        return Precision("fp32", requested, device_type, f"no bf16 policy for device {device_type!r}")
    speedup = cpu_bf16_speedup()
    measured = (f"CPU capability {cpu_capability()}; a {_BENCH_SIZE}×{_BENCH_SIZE} bf16 matmul ran "
                + (f"{speedup:.2f}× faster than" if speedup >= 1 else f"{1 / speedup:.1f}× slower than")
                + " float32")
    if speedup >= MIN_CPU_SPEEDUP:
        return Precision("bf16-mixed", requested, device_type, f"{measured} (≥ {MIN_CPU_SPEEDUP}×: native bf16)")
    return Precision("fp32", requested, device_type,
                     f"{measured} (< {MIN_CPU_SPEEDUP}×: bf16 is not worth it here, likely emulated)")


def recipe_precision(cfg) -> Precision:
    """The precision of a recipe config: its `precision` key, for its `model.device` and `model.dtype`.

    Cheap to call again (the CPU measurement is cached), so functions that get the config resolve
    it where they need it and always agree with what the run printed."""
    device = resolve_device(cfg.model.device)
    return resolve_precision(cfg.precision, device, weights_dtype=resolve_dtype(cfg.model.dtype, device))
