"""Test-wide set-up: offline, the tiny-model cache inside pytest's temporary directory, and the
seed plumbing of the learning tests.

Learning tests (a model must have learned something) take the ``learning_seed`` argument and so
run once per seed in ``POSTTRAIN_TEST_SEEDS`` (or ``--learning-seeds``): comma-separated seeds
and ranges, e.g. ``0,1,2,3,4`` or ``0-4``; default ``0``, which is what CI runs. They are marked
``learning`` (``-m learning`` selects them) and check their measurements through the
``learning`` fixture, which records each measured value with its threshold (as a pytest
property, and as a JSON line appended to the file named by ``POSTTRAIN_TEST_RECORD`` when set), so
that a sweep over seeds yields a table: ``python tests/seed_sweep.py --seeds 0-4``. Thresholds are
set from that spread: below the worst seed, with a margin that still proves learning.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEEDS_ENV = "POSTTRAIN_TEST_SEEDS"
RECORD_ENV = "POSTTRAIN_TEST_RECORD"
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
}


@pytest.fixture(scope="session", autouse=True)
def _tiny_model_cache(tmp_path_factory):
    """`model.name_or_path: tiny` builds into a per-session cache instead of ~/.cache."""
    previous = os.environ.get("POSTTRAIN_CACHE")
    os.environ["POSTTRAIN_CACHE"] = str(tmp_path_factory.mktemp("posttrain-cache"))
    yield
    if previous is None:
        os.environ.pop("POSTTRAIN_CACHE", None)
    else:
        os.environ["POSTTRAIN_CACHE"] = previous


@pytest.fixture(scope="module")
def one_torch_thread():
    """A module's tiny matmuls on one torch thread (`pytestmark = pytest.mark.usefixtures(...)`):
    they gain nothing from more, and on a shared machine OpenMP threads waiting for a busy core
    made such tests ~20x slower (measured). `make test` already runs at one thread per worker;
    this keeps a plain `pytest` run of the module as fast."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------------------ learning seeds


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` / ``"0-4"`` / ``"0-2,7"`` -> sorted unique seeds; a clear error otherwise."""
    seeds: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            start, stop = (int(low), int(high)) if dash else (int(part), int(part))
        except ValueError:
            start = stop = -1
        if start < 0 or stop < start:
            raise pytest.UsageError(f"learning seeds: {part!r} in {text!r} is not a seed (>= 0) or a range a-b")
        seeds.update(range(start, stop + 1))
    if not seeds:
        raise pytest.UsageError(f"learning seeds: {text!r} names no seed")
    return sorted(seeds)


def pytest_addoption(parser):
    parser.addoption(
        "--learning-seeds", default=None,
        help=f"seeds the learning tests run for, e.g. 0-4 or 0,3 (default: ${SEEDS_ENV}, else 0)",
    )


_SEEDS_KEY = pytest.StashKey[list]()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"learning: asserts that a model learned something; runs once per seed in ${SEEDS_ENV}"
    )
    # Parsed here so that a bad value stops the session at once with a usage error.
    config.stash[_SEEDS_KEY] = parse_seeds(config.getoption("--learning-seeds") or os.environ.get(SEEDS_ENV) or "0")


def pytest_generate_tests(metafunc):
    if "learning_seed" in metafunc.fixturenames:
        seeds = metafunc.config.stash[_SEEDS_KEY]
        metafunc.parametrize("learning_seed", seeds, ids=[f"seed{seed}" for seed in seeds])


def pytest_collection_modifyitems(items):
    for item in items:
        if "learning_seed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.learning)


class LearningChecks:
    """Records a learning test's measurements and checks them against their thresholds.

    ``with learning.checks() as check: check(name, value, op, threshold)`` records every check of
    the block and fails at its end listing all that missed (so a failing seed still reports every
    measurement); ``learning.record(name, value, op=None, threshold=None)`` records without
    asserting.
    """

    def __init__(self, test: str, seed: int, record_property: Callable[[str, Any], None]) -> None:
        self.test = test
        self.seed = seed
        self._record_property = record_property

    def record(self, name: str, value: float, op: str | None = None, threshold: float | None = None) -> bool:
        """Record one measured value (and its threshold); returns whether it meets it (True if none)."""
        if (op is None) != (threshold is None):
            raise ValueError("learning.record: give both op and threshold, or neither")
        if op is not None and op not in _OPS:
            raise ValueError(f"learning.record: op must be one of {sorted(_OPS)}, got {op!r}")
        value = float(value)
        passed = True if op is None else bool(math.isfinite(value) and _OPS[op](value, threshold))
        entry = {"kind": "check", "test": self.test, "seed": self.seed, "name": name,
                 "value": value if math.isfinite(value) else None, "op": op, "threshold": threshold,
                 "passed": passed}
        self._record_property(f"learning:{name}", {k: entry[k] for k in ("value", "op", "threshold", "passed")})
        _append_record(entry)
        return passed

    @contextlib.contextmanager
    def checks(self) -> Iterator[Callable[[str, float, str, float], None]]:
        missed: list[str] = []

        def check(name: str, value: float, op: str, threshold: float) -> None:
            if not self.record(name, value, op, threshold):
                missed.append(f"{name} = {float(value):.4g}, needs {op} {threshold}")

        yield check
        if missed:
            raise AssertionError(f"seed {self.seed}: " + "; ".join(missed))


@pytest.fixture
def learning(request, learning_seed, record_property) -> LearningChecks:
    """Record-and-check helper of a learning test (see LearningChecks); brings ``learning_seed``."""
    return LearningChecks(_test_name(request.node), learning_seed, record_property)


def _test_name(item) -> str:
    """The test's id with its other parameters but not the seed: one name across a sweep's seeds."""
    test = item.nodeid.split("[", 1)[0]
    callspec = getattr(item, "callspec", None)
    others = [str(v) for k, v in (callspec.params.items() if callspec else ()) if k != "learning_seed"]
    return test + ("[" + "-".join(others) + "]" if others else "")


def _append_record(entry: dict[str, Any]) -> None:
    path = os.environ.get(RECORD_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each learning test's outcome per seed goes to the record file too (failures outside the
    checks included: an exception, a structural assertion)."""
    outcome = yield
    report = outcome.get_result()
    callspec = getattr(item, "callspec", None)
    if callspec is None or "learning_seed" not in callspec.params:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        result = report.outcome if report.when == "call" else ("skipped" if report.skipped else "error")
        _append_record({"kind": "outcome", "test": _test_name(item), "seed": callspec.params["learning_seed"],
                        "outcome": result, "seconds": round(report.duration, 1)})
