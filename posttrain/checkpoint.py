"""Atomic, resumable training checkpoints.

Layout of one checkpoint, ``<run>/checkpoints/step-00000100/``::

    model.safetensors | adapter_model.safetensors (+ configs)   model weights (peft: the adapter only)
    tokenizer files                                              when a tokenizer is given
    optimizer.pt, scheduler.pt                                   optimizer / LR-scheduler state
    rng.pt                                                       python, numpy, torch CPU and CUDA RNG states
    trainer_state.json                                           whatever the recipe needs to continue

A checkpoint is written into ``checkpoints/.tmp-step-XXXXXXXX/`` and only then renamed to its
final name with ``os.replace``. A rename within one filesystem is atomic, so a run killed mid-write
leaves a ``.tmp-*`` directory that ``latest_checkpoint`` ignores, never a half checkpoint that
looks complete.

Deleting is the same in reverse: a checkpoint that is pruned (or replaced) is first renamed to
``.deleting-step-XXXXXXXX/`` and only then removed, so a run killed while deleting leaves a
``.deleting-*`` directory (ignored, and removed by the next save), never a listed checkpoint with
half its files gone.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
TRAINER_STATE = "trainer_state.json"
# Prefix of a checkpoint directory renamed out of the way to be deleted (never listed).
_DELETING = ".deleting-"


def checkpoints_root(run_dir_or_ckpt_root: str | os.PathLike) -> Path:
    """``<run>/checkpoints`` given either the run directory or the checkpoints directory itself."""
    path = Path(run_dir_or_ckpt_root)
    return path if path.name == "checkpoints" else path / "checkpoints"


def checkpoint_name(step: int) -> str:
    """``step-00000100`` for step 100 (zero-padded so names sort like numbers)."""
    return f"step-{step:08d}"


def checkpoint_step(ckpt_dir: str | os.PathLike) -> int:
    """The step number encoded in a checkpoint directory name."""
    match = _STEP_DIR.match(Path(ckpt_dir).name)
    if match is None:
        raise ValueError(f"{ckpt_dir} is not a checkpoint directory (expected a name like step-00000100)")
    return int(match.group(1))


def list_checkpoints(run_dir_or_ckpt_root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first.

    ``.tmp-*`` (interrupted writes) and ``.deleting-*`` (interrupted deletions) are never listed.
    """
    root = checkpoints_root(run_dir_or_ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=checkpoint_step)


def _discard(directory: Path) -> None:
    """Delete a checkpoint directory so that no kill can leave it half-deleted under its own name.

    It is renamed (atomically) to ``.deleting-<name>`` first, which ``list_checkpoints`` ignores,
    and only then removed; a leftover from a kill during the removal goes at the next save.
    """
    trash = directory.with_name(_DELETING + directory.name)
    if trash.exists():  # left over from an earlier kill
        shutil.rmtree(trash)
    os.replace(directory, trash)
    shutil.rmtree(trash)


def _remove_leftover_deletions(root: Path) -> None:
    """Finish deletions that a killed process started (``.deleting-*`` directories)."""
    for path in root.iterdir():
        if path.name.startswith(_DELETING) and path.is_dir():
            shutil.rmtree(path)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------- RNG


def _numpy() -> Any | None:
    try:
        import numpy
    except ImportError:  # numpy is optional for this module
        return None
    return numpy


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors/tuples loadable with weights_only=True."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np = _numpy()
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        # Stored as a tensor + plain scalars rather than a numpy array so that loading needs no
        # pickled numpy objects (torch.load(weights_only=True) refuses them).
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states written by ``rng_state``."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    np = _numpy()
    if np is not None and "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        # A resume on fewer/more GPUs restores what it can; the rest keep their own seeds.
        for device in range(min(len(saved), torch.cuda.device_count())):
            torch.cuda.set_rng_state(saved[device], device)


# -------------------------------------------------------------------------------------- weights


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def _quiet_transformers_progress() -> Iterator[None]:
    """Hide transformers' "Writing model shards" bar: one per checkpoint would clutter run logs."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _save_weights(model: nn.Module, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    if hasattr(model, "save_pretrained"):
        kwargs: dict[str, Any] = {} if state is None else {"state_dict": dict(state)}  # a copy: HF pops from it
        # transformers >= 5 may rename weights back to an "original" checkpoint layout on save;
        # a resume checkpoint must hold the keys of model.state_dict() so load_checkpoint can
        # restore it in place, so that conversion is switched off where it exists.
        if "save_original_format" in inspect.signature(model.save_pretrained).parameters:
            kwargs["save_original_format"] = False
        with _quiet_transformers_progress():
            model.save_pretrained(directory, **kwargs)
    else:
        # A plain module (e.g. a policy + value-head wrapper): safetensors' save_model drops
        # duplicate views of shared (tied) tensors, which save_file would refuse.
        from safetensors.torch import save_model

        save_model(model, str(directory / "model.safetensors"))


def _read_safetensors(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(ckpt_dir.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{ckpt_dir}: no model*.safetensors file; is this a checkpoint written by save_checkpoint?"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:  # one file, or the shards of a large model
        state.update(load_file(str(file)))
    return state


def _load_plain_weights(model: nn.Module, ckpt_dir: Path) -> None:
    saved = _read_safetensors(ckpt_dir)
    expected = model.state_dict()
    unexpected = sorted(set(saved) - set(expected))
    missing = set(expected) - set(saved)
    # Tied weights are written once; a missing key is fine when it shares storage with a
    # key that was loaded (e.g. lm_head.weight tied to embed_tokens.weight).
    loaded_ptrs = {expected[k].data_ptr() for k in saved if k in expected}
    missing = sorted(k for k in missing if expected[k].data_ptr() not in loaded_ptrs)
    if unexpected or missing:
        raise ValueError(
            f"{ckpt_dir}: checkpoint weights do not match the model "
            f"(missing: {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected: {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}); "
            "was it saved from a different model or with a different peft config?"
        )
    # load_state_dict copies into the existing tensors, keeping their device and dtype.
    model.load_state_dict(saved, strict=False)


def _load_peft_weights(model: nn.Module, ckpt_dir: Path) -> None:
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    for adapter in model.peft_config:
        # peft writes the "default" adapter at the top level and any other adapter in a
        # sub-directory named after it.
        path = ckpt_dir if adapter == "default" else ckpt_dir / adapter
        if not path.is_dir():
            raise FileNotFoundError(f"{ckpt_dir}: no weights for peft adapter {adapter!r} (looked in {path})")
        weights = load_peft_weights(str(path), device="cpu")
        result = set_peft_model_state_dict(model, weights, adapter_name=adapter)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{path}: adapter weights not in the model: {sorted(unexpected)[:5]}")


# ------------------------------------------------------------------------------- save and load


def _fsync_tree(directory: Path) -> None:
    """Flush file contents to disk so the rename that follows cannot outrun the data."""
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def save_checkpoint(
    run_dir_or_ckpt_root: str | os.PathLike,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    tokenizer: Any | None = None,
    trainer_state: dict[str, Any],
    keep_last: int | None = 2,
    model_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint atomically and prune old ones; returns its directory.

    ``model_state`` / ``optimizer_state``: what to write instead of ``model.state_dict()`` /
    ``optimizer.state_dict()`` (a sharded model's, gathered: ``Ranks.full_state``).

    ``trainer_state`` must be JSON-serialisable (step, data position, epoch, ledger snapshot...);
    it is checked before anything is written. ``keep_last`` keeps the newest that many
    checkpoints (None keeps all).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"save_checkpoint: step must be a non-negative int, got {step!r}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"save_checkpoint: keep_last must be >= 1 or None, got {keep_last!r}")
    try:
        # The step argument is authoritative (it names the directory); it goes first for readers.
        state = {"step": step, **{k: v for k, v in trainer_state.items() if k != "step"}}
        state_text = json.dumps(state, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"save_checkpoint: trainer_state must be JSON-serialisable with finite numbers ({err})"
        ) from err

    root = checkpoints_root(run_dir_or_ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftover_deletions(root)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}"
    if tmp.exists():  # left over from a write that was killed
        shutil.rmtree(tmp)
    tmp.mkdir()

    if model_state is not None and not hasattr(model, "save_pretrained"):
        raise ValueError("save_checkpoint: model_state needs a model with save_pretrained")
    _save_weights(model, tmp, model_state)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / TRAINER_STATE).write_text(state_text + "\n", encoding="utf-8")
    _fsync_tree(tmp)

    if final.exists():
        # Re-saving a step (e.g. after a resume): move the old copy aside first, because
        # os.replace cannot overwrite a non-empty directory.
        old = root / f".old-{final.name}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        _discard(old)
    else:
        os.replace(tmp, final)

    if keep_last is not None:
        for stale in list_checkpoints(root)[:-keep_last]:
            _discard(stale)
    return final


def load_checkpoint(
    ckpt_dir: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    load_states: Callable[[dict[str, torch.Tensor], dict[str, Any] | None], None] | None = None,
) -> dict[str, Any]:
    """Restore weights (in place), optimizer, scheduler and RNG states; return trainer_state.

    The model must already be built the same way as when it was saved (same architecture and,
    for peft, the same adapter config): only the weights are loaded. ``load_states(weights,
    optimizer_state)``: how they go in instead (a sharded model: ``Ranks.load_full_state``).
    """
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"{ckpt_dir}: not a complete checkpoint (no {TRAINER_STATE}); "
            "use latest_checkpoint(run_dir) to find the newest complete one"
        )
    if load_states is not None:
        optimizer_state = None
        if optimizer is not None:
            optimizer_state = torch.load(ckpt_dir / "optimizer.pt", map_location="cpu", weights_only=True)
        load_states(_read_safetensors(ckpt_dir), optimizer_state)
    elif _is_peft(model):
        _load_peft_weights(model, ckpt_dir)
    else:
        _load_plain_weights(model, ckpt_dir)

    if optimizer is not None and load_states is None:
        # map_location cpu: Optimizer.load_state_dict moves each state tensor to its parameter's device.
        optimizer.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", map_location="cpu", weights_only=True))
    if scheduler is not None:
        path = ckpt_dir / "scheduler.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{ckpt_dir}: a scheduler was passed but the checkpoint has no scheduler.pt")
        scheduler.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if restore_rng:
        set_rng_state(torch.load(ckpt_dir / "rng.pt", map_location="cpu", weights_only=True))

    try:
        return json.loads((ckpt_dir / TRAINER_STATE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{ckpt_dir / TRAINER_STATE}: invalid JSON ({err})") from err
