"""The run directory: config, metrics, TensorBoard/W&B, progress and resume bookkeeping.

A recipe creates one ``Run`` with ``Run.start(...)`` and talks to it; the run owns::

    runs/<name>/config.yaml        resolved config, written at start
    runs/<name>/metrics.jsonl      one JSON object per logged step: {"step": 12, "time": <unix>, "loss": ...}
    runs/<name>/rollouts.jsonl     RL: a few rollouts of each logged step ({"step": 12, "prompt": ..., "reward": ...})
    runs/<name>/tb/                TensorBoard event files
    runs/<name>/checkpoints/       see posttrain.checkpoint
    runs/<name>/model/             final model (the recipe saves it to run.model_dir)
    runs/<name>/summary.json       run.write_summary(dict)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from posttrain import checkpoint as ckpt

REPORTERS = ("tensorboard", "wandb")
# Files whose presence means a directory already holds (part of) a run worth protecting.
_RUN_MARKERS = ("metrics.jsonl", "summary.json", "model", "config.yaml", "checkpoints")


class NonFiniteLossError(RuntimeError):
    """A loss (or other checked metric) became NaN/inf; raised before it can reach the weights."""

    def __init__(self, message: str, *, metric: str, step: int, value: float, last_checkpoint: Path | None):
        super().__init__(message)
        self.metric = metric
        self.step = step
        self.value = value
        self.last_checkpoint = last_checkpoint


def _as_number(key: str, value: Any, step: int) -> int | float:
    """A metric value as a Python int/float (accepts 0-d / 1-element tensors and numpy scalars)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()  # torch tensor, numpy scalar
        except (RuntimeError, ValueError) as err:
            raise TypeError(f"metric {key!r} at step {step}: expected a scalar, got a tensor/array ({err})") from err
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    raise TypeError(f"metric {key!r} at step {step}: expected a number, got {type(value).__name__} {value!r}")


def check_finite(
    step: int,
    metrics: Mapping[str, Any],
    *,
    run_dir: str | os.PathLike | None = None,
    last_checkpoint: Path | None = None,
) -> None:
    """Raise ``NonFiniteLossError`` if any value in ``metrics`` is NaN or infinite.

    Recipes call this with the loss (and e.g. the gradient norm) *before* ``optimizer.step()``,
    so a NaN never reaches the weights. Pass ``run_dir`` (or ``last_checkpoint``) so the message
    can name the checkpoint to resume from; ``Run.check_finite`` does that for you.
    """
    for key, raw in metrics.items():
        value = float(_as_number(key, raw, step))
        if math.isfinite(value):
            continue
        if run_dir is not None and last_checkpoint is None:
            last_checkpoint = ckpt.latest_checkpoint(run_dir)
        if last_checkpoint is not None:
            advice = f"The last checkpoint is {last_checkpoint}: resume from it (resume=true)"
        elif run_dir is not None:
            advice = f"{run_dir} has no checkpoint to resume from yet: start over (overwrite=true)"
        else:
            advice = "Resume from the run's latest checkpoint (resume=true), or start over (overwrite=true)"
        raise NonFiniteLossError(
            f"{key} is {value} at step {step}; stopping before the optimizer step so the weights stay "
            f"finite. {advice}, for example with a lower learning rate or stronger gradient clipping, "
            "or after checking the data of the steps since.",
            metric=key,
            step=step,
            value=value,
            last_checkpoint=last_checkpoint,
        )


# ------------------------------------------------------------------------------------ progress


def _format_postfix(postfix: Mapping[str, Any]) -> str:
    parts = []
    for key, value in postfix.items():
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressHandle:
    """What ``Run.progress`` yields. ``advance(n, **postfix)`` moves it on and shows the postfix."""

    def __init__(self, console: Console, total: int, initial: int, description: str, clock: Any = time.monotonic):
        self.total, self.completed, self.description = total, initial, description
        self._console, self._initial, self._clock = console, initial, clock
        self._start = clock()
        self._live: Progress | None = None
        self._task: Any = None
        # Plain mode prints once per crossed tenth of the total.
        self._last_tenth = self._tenth(initial)

    def _tenth(self, completed: int) -> int:
        return completed * 10 // self.total if self.total > 0 else 10

    def advance(self, n: int = 1, **postfix: Any) -> None:
        self.completed += n
        text = _format_postfix(postfix)
        if self._live is not None:
            self._live.update(self._task, advance=n, **({"postfix": text} if postfix else {}))
            return
        tenth = self._tenth(self.completed)
        if tenth > self._last_tenth:
            self._last_tenth = tenth
            self._console.print(self.plain_line(text), markup=False, highlight=False, soft_wrap=True)

    def plain_line(self, postfix: str = "") -> str:
        """``sft 30/100 (30%) elapsed 0:00:12 eta 0:00:28 loss=0.31``."""
        elapsed = self._clock() - self._start
        done = self.completed - self._initial  # the rate only counts this process's work
        line = f"{self.description} {self.completed}/{self.total}"
        if self.total > 0:
            line += f" ({100 * self.completed // self.total}%)"
        line += f" elapsed {_format_seconds(elapsed)}"
        if done > 0 and self.total > self.completed:
            line += f" eta {_format_seconds(elapsed / done * (self.total - self.completed))}"
        return f"{line} {postfix}".strip()


@contextlib.contextmanager
def open_progress(console: Console, total: int, *, initial: int = 0, description: str = "") -> Iterator[ProgressHandle]:
    """A live rich bar when ``console`` is a terminal, plain lines every ~10% otherwise."""
    if total < 0 or not 0 <= initial <= max(total, 0):
        raise ValueError(f"progress: need 0 <= initial <= total, got initial={initial}, total={total}")
    handle = ProgressHandle(console, total, initial, description)
    if not console.is_terminal:
        yield handle
        return
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[postfix]}"),
    )
    with Progress(*columns, console=console) as live:
        handle._live = live
        handle._task = live.add_task(description, total=total, completed=initial, postfix="")
        yield handle


# ----------------------------------------------------------------------------------- run files


def _plain(value: Any, where: str) -> Any:
    """``value`` with Paths/tuples turned into YAML-safe types; clear error for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"config field {where or '<root>'!r}: {type(value).__name__} cannot be written to config.yaml; "
        "pass plain values (str, numbers, bools, lists, dicts)"
    )


def _json_safe(value: Any) -> Any:
    """Non-finite floats become null so the file stays strict JSON (readable by jq, browsers...)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _truncate_metrics(path: Path, last_step: int) -> int:
    """Keep only the lines with step <= last_step (metrics.jsonl, rollouts.jsonl); returns how
    many lines were dropped.

    A killed run may have logged past its last checkpoint (and may have died mid-line); those
    lines would duplicate the steps the resumed run is about to log again.
    """
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            dropped += 1  # a partial line written when the process was killed
            continue
        if isinstance(step, bool) or not isinstance(step, int):
            dropped += 1  # not a line Run.log wrote (a step of null, text...)
            continue
        # The metric values are not read: a line may lack any metric (no value at that step).
        if step <= last_step:
            kept.append(line)
        else:
            dropped += 1
    _write_atomic(path, "".join(f"{line}\n" for line in kept))
    return dropped


def _holds_run(run_dir: Path) -> bool:
    metrics = run_dir / "metrics.jsonl"
    return (
        (metrics.exists() and metrics.stat().st_size > 0)
        or bool(ckpt.list_checkpoints(run_dir))
        or (run_dir / "summary.json").exists()
        or ((run_dir / "model").is_dir() and any((run_dir / "model").iterdir()))
    )


class Run:
    """One training run and its directory. Create it with ``Run.start``."""

    # Whether this process writes the run directory and evaluates: rank 0 of a data-parallel run
    # (the other ranks hold a `training.distributed.FollowerRun`), and every single-process run.
    is_main = True

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        *,
        report_to: Sequence[str],
        console: Console,
        resume_checkpoint: Path | None,
    ) -> None:
        self.dir = run_dir
        self.name = run_dir.name
        self.config = config
        self.report_to = tuple(report_to)
        self.console = console
        self.resume_checkpoint = resume_checkpoint
        self.resume_step = ckpt.checkpoint_step(resume_checkpoint) if resume_checkpoint else None
        self.started = time.time()  # wall-clock start, for the summary's `seconds`
        self._metrics_file = open(self.metrics_path, "a", encoding="utf-8")
        self._rollouts_file: Any = None  # opened on the first `log_rollouts` (RL runs only)
        self._tb: Any = None
        self._wandb: Any = None
        self._closed = False
        self._noted_non_finite: set[str] = set()  # metrics whose NaN/inf was reported once

    # ------------------------------------------------------------------------------- creation

    @classmethod
    def start(
        cls,
        output_dir: str | os.PathLike,
        name: str,
        config: Mapping[str, Any],
        *,
        resume: bool = False,
        overwrite: bool = False,
        report_to: Sequence[str] = ("tensorboard",),
        wandb_project: str | None = None,
        console: Console | None = None,
    ) -> Run:
        """Create (or resume) ``<output_dir>/<name>/``.

        An existing directory holding a run needs ``resume=True`` (continue from its latest
        checkpoint; with none yet, start fresh) or ``overwrite=True`` (wipe it). ``report_to``
        chooses from "tensorboard" and "wandb"; metrics.jsonl is always written.
        """
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise ValueError(f"run name must be a plain directory name, got {name!r}")
        if resume and overwrite:
            raise ValueError("resume=true and overwrite=true contradict each other; pass one of them")
        unknown = sorted(set(report_to) - set(REPORTERS))
        if unknown:
            raise ValueError(f"report_to: unknown reporter(s) {unknown}; choose from {list(REPORTERS)}")
        plain_config = _plain(dict(config), "")
        console = console or Console(stderr=True)
        run_dir = Path(output_dir) / name

        resume_from: Path | None = None
        if run_dir.exists() and overwrite:
            if any(run_dir.iterdir()) and not any((run_dir / m).exists() for m in _RUN_MARKERS):
                raise ValueError(f"{run_dir} exists but is not a run directory; refusing to overwrite it")
            shutil.rmtree(run_dir)
        elif run_dir.exists() and resume:
            resume_from = ckpt.latest_checkpoint(run_dir)
            if resume_from is None:
                console.print(f"[yellow]{run_dir} has no checkpoint yet; starting from scratch.[/]")
                # Nothing to continue from: earlier metrics/events would collide with the new ones.
                (run_dir / "metrics.jsonl").unlink(missing_ok=True)
                shutil.rmtree(run_dir / "tb", ignore_errors=True)
        elif run_dir.exists() and _holds_run(run_dir):
            raise FileExistsError(
                f"{run_dir} already holds a run; pass resume=true to continue it or overwrite=true to start over"
            )
        elif resume:
            console.print(f"[yellow]{run_dir} does not exist yet; nothing to resume, starting from scratch.[/]")

        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is not None:
            step = ckpt.checkpoint_step(resume_from)
            dropped = _truncate_metrics(run_dir / "metrics.jsonl", step)
            _truncate_metrics(run_dir / "rollouts.jsonl", step)
            console.print(
                f"Resuming {run_dir} from {resume_from.name}"
                + (f" (dropped {dropped} metrics lines logged after it)" if dropped else "")
            )
        _write_atomic(run_dir / "config.yaml", yaml.safe_dump(plain_config, sort_keys=False))

        run = cls(run_dir, plain_config, report_to=report_to, console=console, resume_checkpoint=resume_from)
        try:
            if "tensorboard" in run.report_to:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step hides events a killed run wrote after its last checkpoint.
                purge = run.resume_step + 1 if run.resume_step is not None else None
                run._tb = SummaryWriter(log_dir=str(run.tb_dir), purge_step=purge)
            if "wandb" in run.report_to:
                run._start_wandb(wandb_project, resumed=resume_from is not None)
        except BaseException:
            run.close()
            raise
        return run

    def _start_wandb(self, project: str | None, *, resumed: bool) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ImportError(
                "report_to includes 'wandb' but the wandb package is not installed; "
                "`pip install wandb` (or posttrain[wandb]) or drop 'wandb' from report_to"
            ) from err
        # The W&B run id is kept in the run directory so a resumed run continues the same W&B run.
        id_file = self.dir / "wandb_id.txt"
        if resumed and id_file.exists():
            run_id = id_file.read_text(encoding="utf-8").strip()
        else:
            run_id = wandb.util.generate_id()
            id_file.write_text(run_id + "\n", encoding="utf-8")
        self._wandb = wandb.init(
            project=project, name=self.name, id=run_id, resume="allow", config=self.config, dir=str(self.dir)
        )

    # ------------------------------------------------------------------------------ locations

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def rollouts_path(self) -> Path:
        return self.dir / "rollouts.jsonl"

    @property
    def tb_dir(self) -> Path:
        return self.dir / "tb"

    @property
    def checkpoints_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def model_dir(self) -> Path:
        """Where the recipe saves the final model."""
        return self.dir / "model"

    def latest_checkpoint(self) -> Path | None:
        return ckpt.latest_checkpoint(self.dir)

    # -------------------------------------------------------------------------------- logging

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append one line to metrics.jsonl (flushed) and send the scalars to TensorBoard/W&B.

        Values may be Python numbers, 0-d tensors or numpy scalars. A metric without a value at
        this step is left out of the line (and of TensorBoard/W&B) rather than written as null or
        as a number: ``None`` (the recipe's "no value", e.g. a mean over no kept group) silently,
        NaN/inf with a one-time note per metric on the console, so that a diverging value is not
        invisible. Readers therefore see a metric only at the steps where it had a finite value.
        Use ``check_finite`` to stop on a non-finite loss.
        """
        if self._closed:
            raise RuntimeError(f"run {self.dir} is closed; cannot log step {step}")
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"run.log: step must be an int, got {step!r}")
        reserved = {"step", "time"} & set(metrics)
        if reserved:
            raise ValueError(f"run.log at step {step}: metric names {sorted(reserved)} are reserved")
        values: dict[str, int | float] = {}
        for key, raw in metrics.items():
            if raw is None:
                continue
            value = _as_number(key, raw, step)
            if isinstance(value, float) and not math.isfinite(value):
                if key not in self._noted_non_finite:
                    self._noted_non_finite.add(key)
                    self.console.print(
                        f"metric {key!r} is {value} at step {step}: left out of metrics.jsonl and "
                        "TensorBoard (noted once per metric)", style="yellow", markup=False, highlight=False,
                    )
                continue
            values[key] = value
        record = {"step": step, "time": round(time.time(), 3), **values}
        self._metrics_file.write(json.dumps(record, allow_nan=False) + "\n")
        self._metrics_file.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, float(value), step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def log_rollouts(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        """Append one line per record to rollouts.jsonl (flushed), each ``{"step": step, **record}``.

        Records are plain JSON (texts, rewards, ids); a resumed run drops the lines logged after
        its checkpoint, as it does for metrics.jsonl.
        """
        if self._closed:
            raise RuntimeError(f"run {self.dir} is closed; cannot log rollouts of step {step}")
        if self._rollouts_file is None:
            self._rollouts_file = open(self.rollouts_path, "a", encoding="utf-8")
        for record in records:
            self._rollouts_file.write(json.dumps({"step": step, **record}, allow_nan=False) + "\n")
        self._rollouts_file.flush()

    def check_finite(self, step: int, metrics: Mapping[str, Any]) -> None:
        """``check_finite`` naming this run's latest checkpoint in its message."""
        check_finite(step, metrics, run_dir=self.dir)

    def save_checkpoint(self, step: int, **kwargs: Any) -> Path:
        """``posttrain.checkpoint.save_checkpoint`` into this run's checkpoints/ directory."""
        return ckpt.save_checkpoint(self.dir, step, **kwargs)

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Write summary.json (atomically; non-finite floats become null)."""
        path = self.dir / "summary.json"
        try:
            text = json.dumps(_json_safe(dict(summary)), indent=2, allow_nan=False)
        except TypeError as err:
            raise TypeError(f"write_summary: summary must be JSON-serialisable ({err})") from err
        _write_atomic(path, text + "\n")
        return path

    # ------------------------------------------------------------------------ console/progress

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Print a message through the run's rich console (plays well with the progress bar)."""
        self.console.print(*objects, **kwargs)

    @contextlib.contextmanager
    def progress(self, total: int, *, initial: int = 0, description: str = "") -> Iterator[ProgressHandle]:
        """A progress bar with ETA; yields an object with ``.advance(n=1, **postfix)``.

        On a terminal this is a live rich bar; when stderr is not a TTY (CI, log files) it prints
        a plain line every ~10% instead, so logs are not flooded with redraws.
        """
        with open_progress(self.console, total, initial=initial, description=description) as handle:
            yield handle

    # -------------------------------------------------------------------------------- closing

    def close(self, *, failed: bool = False) -> None:
        """Flush and close every writer. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._metrics_file.close()
        if self._rollouts_file is not None:
            self._rollouts_file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish(exit_code=1 if failed else 0)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(failed=exc_type is not None)
