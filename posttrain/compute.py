"""The compute ledger: where did the FLOPs and the wall-clock time go?

Every recipe records each forward/backward pass it makes, per *stage* ("sft", "rollout",
"reference", "scoring", "update", "eval", ...), so that runs can be compared at equal compute
and the end-of-run summary shows which stage dominated.

FLOP convention (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1):
a forward pass costs ``2·N`` FLOPs per token and a backward pass ``4·N`` (gradients with respect
to both activations and weights), where ``N`` is the number of parameters that take part in
matrix multiplies. Attention-score FLOPs (quadratic in context length) are ignored, as in the paper;
they are small next to ``2·N`` for the short contexts of post-training.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def matmul_params(model: nn.Module) -> int:
    """Number of parameters ``N`` that take part in matmuls, for the ``2·N`` FLOPs/token rule.

    Every distinct parameter is counted once (so a tied input/output embedding counts once, as
    the output projection). Embedding tables that are *only* looked up (``nn.Embedding`` weights
    not shared with any other module: an untied input embedding, learned position embeddings)
    are excluded, because a lookup is not a matmul. Norm gains and biases are kept: they are
    a vanishing fraction of ``N`` and excluding them would need per-architecture knowledge.

    Works for transformers models, peft-wrapped models (LoRA matrices are counted too, since
    they do matmuls) and plain ``nn.Module``s.
    """
    embedding_weights: set[int] = set()
    used_elsewhere: set[int] = set()
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False)]
        if isinstance(module, nn.Embedding):
            embedding_weights.update(id(p) for p in own)
        else:
            used_elsewhere.update(id(p) for p in own)
    # model.parameters() already de-duplicates shared (tied) parameters.
    return sum(
        p.numel()
        for p in model.parameters()
        if id(p) not in embedding_weights or id(p) in used_elsewhere
    )


def _check_count(stage: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"compute ledger, stage {stage!r}: {name} must be a non-negative int, got {value!r}"
        )


class ComputeLedger:
    """Accumulates tokens, FLOPs and wall seconds per stage.

    Stages are free strings. The state is plain ints/floats, so ``state_dict()`` can go straight
    into a checkpoint's ``trainer_state.json`` and a resumed run keeps its totals.
    """

    def __init__(self) -> None:
        # stage -> {"tokens": int, "flops": int, "seconds": float}; insertion-ordered so the
        # summary table lists stages in the order the recipe first used them.
        self._stages: dict[str, dict[str, Any]] = {}

    def _stage(self, stage: str) -> dict[str, Any]:
        if not isinstance(stage, str) or not stage or "/" in stage:
            raise ValueError(
                f"compute ledger: stage must be a non-empty string without '/', got {stage!r}"
            )
        return self._stages.setdefault(stage, {"tokens": 0, "flops": 0, "seconds": 0.0})

    def record(self, stage: str, *, tokens: int, params: int, backward: bool = False) -> None:
        """Add ``tokens`` processed by a model of ``params`` matmul parameters.

        FLOPs added: ``2·params·tokens`` for the forward pass, plus ``4·params·tokens`` when
        ``backward`` is true. Python ints are used so the totals never overflow or lose precision.
        """
        _check_count(stage, "tokens", tokens)
        _check_count(stage, "params", params)
        entry = self._stage(stage)
        entry["tokens"] += tokens
        entry["flops"] += (6 if backward else 2) * params * tokens

    def add_seconds(self, stage: str, seconds: float) -> None:
        """Add wall-clock seconds to ``stage`` (for callers that time things themselves)."""
        if not seconds >= 0:
            raise ValueError(f"compute ledger, stage {stage!r}: seconds must be >= 0, got {seconds!r}")
        self._stage(stage)["seconds"] += float(seconds)

    @contextlib.contextmanager
    def timed(self, stage: str, *, synchronize: bool = True) -> Iterator[None]:
        """Context manager adding the wall seconds of its body to ``stage``.

        CUDA kernels run asynchronously, so without a synchronize the time of a GPU stage would
        leak into whichever stage happens to wait for it next; ``synchronize`` (on by default)
        waits for the GPU on entry and exit when CUDA is in use. It costs nothing on CPU.
        """
        self._stage(stage)  # validate the name before running the body
        sync = synchronize and torch.cuda.is_available() and torch.cuda.is_initialized()
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize()
            self._stages[stage]["seconds"] += time.perf_counter() - start

    @property
    def stages(self) -> list[str]:
        return list(self._stages)

    def metrics(self) -> dict[str, float]:
        """Flat metrics for ``run.log``.

        Keys: ``compute/<stage>/tokens``, ``/flops``, ``/seconds``, ``/tokens_per_s`` for each
        stage, plus ``compute/total/tokens`` and ``compute/total/flops``. ``tokens_per_s`` is only
        present once the stage has been timed (it is undefined for zero seconds). No total
        seconds: stages may be timed inside each other, so their seconds need not add up.
        """
        out: dict[str, float] = {}
        for stage, entry in self._stages.items():
            prefix = f"compute/{stage}"
            out[f"{prefix}/tokens"] = entry["tokens"]
            out[f"{prefix}/flops"] = entry["flops"]
            out[f"{prefix}/seconds"] = entry["seconds"]
            if entry["seconds"] > 0:
                out[f"{prefix}/tokens_per_s"] = entry["tokens"] / entry["seconds"]
        out["compute/total/tokens"] = sum(e["tokens"] for e in self._stages.values())
        out["compute/total/flops"] = sum(e["flops"] for e in self._stages.values())
        return out

    @classmethod
    def merged(cls, states: list[dict[str, Any]]) -> "ComputeLedger":
        """One ledger for several ranks' ``state_dict()`` snapshots (data parallel): per stage the
        tokens and FLOPs summed (Python ints: exact) and the seconds the slowest rank's, since the
        ranks run a stage side by side and its wall-clock is the longest of theirs. Stages keep
        the order in which the ranks (rank 0 first) first used them."""
        out = cls()
        for state in states:
            part = cls()
            part.load_state_dict(state)
            for stage, entry in part._stages.items():
                total = out._stage(stage)
                total["tokens"] += entry["tokens"]
                total["flops"] += entry["flops"]
                total["seconds"] = max(total["seconds"], entry["seconds"])
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot of all totals."""
        return {"stages": {stage: dict(entry) for stage, entry in self._stages.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the totals with a snapshot from ``state_dict()``."""
        try:
            stages = state["stages"]
            restored = {
                str(stage): {
                    "tokens": int(entry["tokens"]),
                    "flops": int(entry["flops"]),
                    "seconds": float(entry["seconds"]),
                }
                for stage, entry in stages.items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(
                "compute ledger: load_state_dict expects the dict written by state_dict(), "
                f"i.e. {{'stages': {{stage: {{'tokens', 'flops', 'seconds'}}}}}}; got {state!r}"
            ) from err
        self._stages = restored

    def table(self, title: str = "Compute") -> Any:
        """A ``rich.table.Table`` summarising every stage and the totals."""
        from rich.table import Table

        total_flops = sum(e["flops"] for e in self._stages.values())
        table = Table(title=title)
        table.add_column("stage")
        for column in ("tokens", "FLOPs", "share", "seconds", "tokens/s"):
            table.add_column(column, justify="right")
        for stage, entry in self._stages.items():
            share = entry["flops"] / total_flops if total_flops else 0.0
            rate = entry["tokens"] / entry["seconds"] if entry["seconds"] > 0 else None
            table.add_row(
                stage,
                f"{entry['tokens']:,}",
                f"{entry['flops']:.3e}",
                f"{share:.1%}",
                f"{entry['seconds']:.1f}",
                f"{rate:,.0f}" if rate is not None else "-",
            )
        table.add_section()
        table.add_row(
            "total",
            f"{sum(e['tokens'] for e in self._stages.values()):,}",
            f"{total_flops:.3e}",
            "100.0%" if total_flops else "-",
            "",
            "",
        )
        return table
