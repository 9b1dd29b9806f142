"""Tests for posttrain.run: the run directory, metrics, resume bookkeeping, progress, NaN guard."""

from __future__ import annotations

import io
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from posttrain import checkpoint as ckpt
from posttrain.run import NonFiniteLossError, ProgressHandle, Run, check_finite


def _console(terminal: bool = False) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=200)


def _output(console: Console) -> str:
    return console.file.getvalue()


def _start(tmp_path: Path, **kwargs) -> Run:
    kwargs.setdefault("console", _console())
    return Run.start(tmp_path / "runs", "x", {"lr": 0.1, "data": {"path": Path("a/b.jsonl")}}, **kwargs)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tb_scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _fake_checkpoint(run: Run, step: int) -> Path:
    """A checkpoint directory as save_checkpoint would leave it (only its name matters to Run)."""
    path = run.checkpoints_dir / ckpt.checkpoint_name(step)
    path.mkdir(parents=True)
    (path / ckpt.TRAINER_STATE).write_text(json.dumps({"step": step}))
    return path


def test_start_writes_config_and_layout(tmp_path):
    with _start(tmp_path) as run:
        assert run.dir == tmp_path / "runs" / "x"
        assert run.model_dir == run.dir / "model"
        assert run.resume_checkpoint is None and run.resume_step is None
        # Paths in the config are written as strings.
        assert yaml.safe_load((run.dir / "config.yaml").read_text()) == {"lr": 0.1, "data": {"path": "a/b.jsonl"}}


def test_log_writes_flushed_jsonl_and_tensorboard(tmp_path):
    run = _start(tmp_path)
    run.log(1, {"loss": 2.5, "tokens": 7})
    run.log(2, {"loss": torch.tensor(1.5), "acc": np.float32(0.25)})
    # Readable before close: each line is flushed.
    lines = _lines(run.metrics_path)
    assert [line["step"] for line in lines] == [1, 2]
    assert lines[0]["loss"] == 2.5 and lines[0]["tokens"] == 7
    assert lines[1]["loss"] == 1.5 and lines[1]["acc"] == 0.25
    assert all(isinstance(line["time"], float) for line in lines)
    run.close()
    assert _tb_scalars(run.tb_dir, "loss") == [(1, 2.5), (2, 1.5)]


def test_metrics_without_a_value_are_left_out_of_the_line_and_tensorboard(tmp_path):
    """None (no value this step, e.g. no group kept) and NaN/inf are omitted, never written as a
    null or a number; the other metrics of the step are written as usual."""
    console = _console()
    with _start(tmp_path, console=console) as run:
        run.log(3, {"loss": float("nan"), "kl": float("inf"), "clip": None, "ok": 1.0,
                    "t_nan": torch.tensor(float("nan")), "np_inf": np.float32("-inf")})
        run.log(4, {"loss": 0.5, "kl": None, "ok": 2.0})
        run.log(5, {"loss": float("nan"), "ok": 3.0})
        text = run.metrics_path.read_text()
        lines = _lines(run.metrics_path)
    assert "null" not in text and "NaN" not in text and "Infinity" not in text
    assert [set(line) - {"time"} for line in lines] == [{"step", "ok"}, {"step", "loss", "ok"}, {"step", "ok"}]
    assert [line["ok"] for line in lines] == [1.0, 2.0, 3.0] and lines[1]["loss"] == 0.5
    assert _tb_scalars(run.tb_dir, "loss") == [(4, 0.5)]
    assert _tb_scalars(run.tb_dir, "ok") == [(3, 1.0), (4, 2.0), (5, 3.0)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run.tb_dir))
    acc.Reload()
    assert not {"kl", "clip", "t_nan", "np_inf"} & set(acc.Tags()["scalars"])
    # A non-finite value is not silent: one note per metric (not per step); None is not noted.
    out = " ".join(_output(console).split())
    assert out.count("'loss' is nan at step 3") == 1 and "step 5" not in out
    assert "'kl' is inf" in out and "'np_inf' is -inf" in out and "'clip'" not in out


def test_resume_truncation_copes_with_lines_missing_values(tmp_path):
    with _start(tmp_path) as run:
        _fake_checkpoint(run, 2)
    # Step 2 has no value for any metric; older versions wrote null (and other tools NaN); two
    # lines have no integer step at all.
    run.metrics_path.write_text(
        '{"step": 1, "time": 1.0, "loss": 1.0, "reward": 0.5}\n{"step": 2, "time": 2.0}\n'
        '{"step": 2, "loss": null, "reward": NaN}\n{"step": null, "loss": 1}\n\n'
        '{"step": 3, "time": 3.0, "loss": 3.0}\n{"step": "4"}\n'
    )
    console = _console()
    with _start(tmp_path, resume=True, console=console) as run:
        lines = _lines(run.metrics_path)
    assert [line["step"] for line in lines] == [1, 2, 2]
    assert set(lines[1]) == {"step", "time"} and lines[2]["loss"] is None
    assert "dropped 3" in _output(console)  # step 3 and the two lines with no integer step


def test_log_rejects_bad_values_naming_key_and_step(tmp_path):
    with _start(tmp_path) as run:
        with pytest.raises(TypeError, match=r"'loss' at step 4"):
            run.log(4, {"loss": "high"})
        with pytest.raises(ValueError, match="reserved"):
            run.log(4, {"step": 1.0})
        with pytest.raises(TypeError, match="scalar"):
            run.log(4, {"loss": torch.ones(3)})


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    with _start(tmp_path) as run:
        run.log(1, {"loss": 1.0})
    with pytest.raises(FileExistsError, match="already holds a run; pass resume=true .* or overwrite=true"):
        _start(tmp_path)
    with pytest.raises(ValueError, match="contradict"):
        _start(tmp_path, resume=True, overwrite=True)


def test_overwrite_wipes_the_run(tmp_path):
    with _start(tmp_path) as run:
        run.log(1, {"loss": 1.0})
        _fake_checkpoint(run, 1)
    with _start(tmp_path, overwrite=True) as run:
        assert run.metrics_path.read_text() == ""
        assert run.latest_checkpoint() is None


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path):
    precious = tmp_path / "runs" / "x"
    precious.mkdir(parents=True)
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="not a run directory"):
        _start(tmp_path, overwrite=True)
    assert (precious / "thesis.tex").exists()


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    with _start(tmp_path) as run:
        run.log(1, {"loss": 1.0})
    console = _console()
    with _start(tmp_path, resume=True, console=console) as run:
        assert run.resume_checkpoint is None
        assert run.metrics_path.read_text() == ""
    assert "no checkpoint yet; starting from scratch" in _output(console)


def test_resume_truncates_metrics_past_the_checkpoint(tmp_path):
    with _start(tmp_path) as run:
        for step in range(1, 5):
            run.log(step, {"loss": float(step)})
        _fake_checkpoint(run, 1)
        path = _fake_checkpoint(run, 2)
    # The killed run died mid-line.
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 5, "lo')
    # Event files are read in name order: events.out.tfevents.<unix time>.<host>.<pid>.<counter>.
    # A real resume is a later process; within one test process, same-second files would be
    # ordered by a counter compared as text, so backdate the killed run's file by 100 s.
    (old,) = run.tb_dir.iterdir()
    stamp = old.name.split(".")[3]
    old.rename(old.with_name(old.name.replace(stamp, f"{int(stamp) - 100:010d}", 1)))

    console = _console()
    with _start(tmp_path, resume=True, console=console) as run:
        assert run.resume_checkpoint == path and run.resume_step == 2
        assert [line["step"] for line in _lines(run.metrics_path)] == [1, 2]
        for step in (3, 4):
            run.log(step, {"loss": 10.0 * step})
    assert "Resuming" in _output(console) and "dropped 3" in _output(console)
    steps = [line["step"] for line in _lines(run.metrics_path)]
    assert steps == [1, 2, 3, 4]  # no duplicates
    # TensorBoard hides the killed run's steps 3 and 4 (purge_step) and keeps the new ones.
    assert _tb_scalars(run.tb_dir, "loss") == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_report_to_validation_and_missing_wandb(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown reporter"):
        _start(tmp_path, report_to=["tensorbored"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError, match="wandb package is not installed"):
        _start(tmp_path, report_to=["wandb"])


def test_wandb_reporting_and_resume_keeps_the_wandb_id(tmp_path, monkeypatch):
    calls: list[tuple] = []

    class FakeWandbRun:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self, exit_code=0):
            calls.append(("finish", exit_code))

    fake = types.ModuleType("wandb")
    fake.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or FakeWandbRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)

    with _start(tmp_path, report_to=["wandb"], wandb_project="proj") as run:
        run.log(1, {"loss": 0.5})
        _fake_checkpoint(run, 1)
    assert not run.tb_dir.exists()  # tensorboard not requested
    init = calls[0][1]
    assert (init["project"], init["name"], init["id"]) == ("proj", "x", "abc123")
    assert calls[1:] == [("log", {"loss": 0.5}, 1), ("finish", 0)]

    fake.util.generate_id = lambda: "different"
    calls.clear()
    with pytest.raises(RuntimeError):
        with _start(tmp_path, report_to=["wandb"], resume=True):
            raise RuntimeError("crash")
    assert calls[0][1]["id"] == "abc123"  # same W&B run continues
    assert calls[-1] == ("finish", 1)  # marked as failed


def test_check_finite_names_metric_step_and_checkpoint(tmp_path):
    check_finite(3, {"loss": 0.5, "grad_norm": torch.tensor(2.0)})  # finite: no error
    with pytest.raises(NonFiniteLossError, match="grad_norm is inf at step 7") as info:
        check_finite(7, {"loss": 0.5, "grad_norm": torch.tensor(float("inf"))})
    assert info.value.metric == "grad_norm" and info.value.step == 7
    assert info.value.last_checkpoint is None and "resume=true" in str(info.value)

    with _start(tmp_path) as run:
        with pytest.raises(NonFiniteLossError, match="has no checkpoint to resume from yet"):
            run.check_finite(1, {"loss": float("-inf")})
        # The module-level function finds the checkpoint too when given the run directory.
        path = _fake_checkpoint(run, 5)
        with pytest.raises(NonFiniteLossError) as info:
            check_finite(6, {"loss": float("nan")}, run_dir=run.dir)
        assert info.value.last_checkpoint == path

    with _start(tmp_path, overwrite=True) as run:
        path = _fake_checkpoint(run, 5)
        with pytest.raises(NonFiniteLossError, match="loss is nan at step 6") as info:
            run.check_finite(6, {"loss": float("nan")})
    assert info.value.last_checkpoint == path
    assert str(path) in str(info.value) and "resume=true" in str(info.value)


def test_write_summary_and_close(tmp_path):
    run = _start(tmp_path)
    path = run.write_summary({"final_loss": 0.25, "diverged": float("nan"), "steps": 10})
    assert json.loads(path.read_text()) == {"final_loss": 0.25, "diverged": None, "steps": 10}
    run.print("hello from the recipe")
    run.close()
    run.close()  # idempotent
    assert "hello from the recipe" in _output(run.console)
    with pytest.raises(RuntimeError, match="closed"):
        run.log(1, {"loss": 1.0})


def test_unsupported_config_value_names_the_field(tmp_path):
    with pytest.raises(TypeError, match=r"'model\.dtype'"):
        Run.start(tmp_path, "y", {"model": {"dtype": torch.float32}}, console=_console())


def test_plain_progress_prints_every_tenth(tmp_path):
    with _start(tmp_path) as run:
        with run.progress(100, description="sft") as bar:
            for i in range(100):
                bar.advance(loss=1.0 / (i + 1))
        lines = [line for line in _output(run.console).splitlines() if line.startswith("sft ")]
    assert len(lines) == 10
    assert lines[0].startswith("sft 10/100 (10%) elapsed") and "loss=0.1" in lines[0]
    assert lines[-1].startswith("sft 100/100 (100%)") and "eta" not in lines[-1]


def test_plain_progress_resumed_counts_from_initial(tmp_path):
    with _start(tmp_path) as run:
        with run.progress(20, initial=10, description="grpo") as bar:
            bar.advance(5)
            bar.advance(5)
    lines = [line for line in _output(run.console).splitlines() if line.startswith("grpo")]
    # From 50%: one line per crossed tenth, 75% -> 7th tenth, 100% -> 10th.
    assert [line.split()[1] for line in lines] == ["15/20", "20/20"]


def test_plain_progress_eta_uses_this_process_rate():
    clock = iter([0.0, 5.0])
    handle = ProgressHandle(_console(), 100, initial=40, description="ppo", clock=lambda: next(clock))
    handle.completed = 50
    # 10 steps done in 5 s -> 0.5 s/step; 50 steps left -> eta 25 s.
    assert handle.plain_line("kl=0.01") == "ppo 50/100 (50%) elapsed 0:00:05 eta 0:00:25 kl=0.01"


def test_terminal_progress_renders_a_bar(tmp_path):
    console = _console(terminal=True)
    with _start(tmp_path, console=console) as run:
        with run.progress(4, description="dpo") as bar:
            for _ in range(4):
                bar.advance(reward=0.5)
    out = _output(console)
    assert "dpo" in out and "4/4" in out and "reward=0.5" in out


def test_progress_rejects_bad_bounds(tmp_path):
    with _start(tmp_path) as run:
        with pytest.raises(ValueError, match="initial <= total"):
            with run.progress(5, initial=6, description="x"):
                pass
