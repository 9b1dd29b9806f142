"""WorkerPool: per-call timeouts by killing processes, ordered results, errors reported."""

import os
import time

import pytest

from posttrain.verifiers.workers import Outcome, WorkerPool


def test_map_keeps_order_and_reports_errors():
    # divmod(i, 7) for i = 0, 9, 20 -> (0, 0), (1, 2), (2, 6); divmod(1, 0) raises.
    with WorkerPool(divmod, num_workers=2, timeout_s=5) as pool:
        outcomes = pool.map([((0, 7), {}), ((9, 7), {}), ((1, 0), {}), ((20, 7), {})])
    assert [o.status for o in outcomes] == ["ok", "ok", "error", "ok"]
    assert [o.value for o in outcomes] == [(0, 0), (1, 2), None, (2, 6)]
    assert "ZeroDivisionError" in outcomes[2].error


def test_hung_call_is_killed_and_the_pool_goes_on():
    with WorkerPool(time.sleep, timeout_s=0.3) as pool:
        start = time.monotonic()
        outcomes = pool.map([((30,), {}), ((0.01,), {})])
        elapsed = time.monotonic() - start
        assert outcomes[0].status == "timeout" and "killed" in outcomes[0].error
        assert outcomes[1] == Outcome("ok", value=None)
        assert pool.restarts == 1
        assert elapsed < 10  # nowhere near the 30 s the call asked for
        assert pool.call(0.0).status == "ok"  # the replacement worker serves later calls


def test_worker_death_is_an_error_not_a_hang():
    with WorkerPool(os._exit, timeout_s=5) as pool:
        outcome = pool.call(3)
    assert outcome.status == "error" and "exit code 3" in outcome.error


def test_unpicklable_function_is_refused_with_a_clear_message():
    with pytest.raises(TypeError, match="module-level function"):
        WorkerPool(lambda x: x)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_workers"):
        WorkerPool(divmod, num_workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        WorkerPool(divmod, timeout_s=0)


def test_empty_map_starts_nothing():
    pool = WorkerPool(divmod)
    assert pool.map([]) == []
    assert pool._workers == []
