"""A simulated kill for the resume tests: `Run.log` raises KeyboardInterrupt right after it has
logged a given step, as a SIGINT landing between a step's log line and the next step would."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest

from posttrain.run import Run


@contextlib.contextmanager
def killed_after_step(monkeypatch, step: int, metric: str) -> Iterator[None]:
    """The body must be killed once it logs `step` with `metric` (pytest.raises checks it was);
    `Run.log` is restored afterwards, so the resumed run logs normally."""
    original = Run.log

    def log_then_die(self, logged_step, metrics):
        original(self, logged_step, metrics)
        if logged_step == step and metric in metrics:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(Run, "log", log_then_die)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(Run, "log", original)
