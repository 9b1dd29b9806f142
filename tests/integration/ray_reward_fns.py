"""Reward functions for tests/integration/test_ray_rewards.py, importable by the Ray workers (the
test module puts this directory on their PYTHONPATH) and by the pool processes inside them."""

from __future__ import annotations

import os
import time

from posttrain.verifiers.workers import Outcome


def exact(prompt, completion, answer, **row) -> float:
    """1.0 when the completion is the answer, else 0.0."""
    return float(completion.strip() == str(answer))


def flaky(prompt, completion, **row) -> float | None:
    """By the completion: "raise" raises, "nan" returns NaN, "hang" sleeps past any test timeout,
    "none" is not scorable; else its length."""
    if completion == "raise":
        raise ValueError("flaky was asked to raise")
    if completion == "nan":
        return float("nan")
    if completion == "hang":
        time.sleep(600)
    if completion == "none":
        return None
    return float(len(completion))


class Fragile:
    """A reward with a `batch` method, so it runs in the Ray actor itself (no pool process): a row's
    `fault` column makes the actor exit ("exit"), exit the first time only ("exit_once", keyed on the
    marker file at the row's `marker`) or stall ("stall"); else 1.0."""

    def __call__(self, prompt, completion, **row) -> float:
        return self.batch([prompt], [completion], [row])[0].value

    def batch(self, prompts, completions, rows) -> list[Outcome]:
        for row in rows:
            fault = row.get("fault")
            if fault == "exit" or (fault == "exit_once" and not os.path.exists(row["marker"])):
                if fault == "exit_once":
                    open(row["marker"], "w").close()
                os._exit(1)
            if fault == "stall":
                time.sleep(600)
        return [Outcome("ok", value=1.0) for _ in completions]


fragile = Fragile()
