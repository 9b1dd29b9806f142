"""A small pool of worker processes that run one function with a timeout per call.

Why processes and not threads or signals: a Python thread cannot be stopped from outside, and
`signal.alarm` timeouts (what `math_verify` uses by default) only work in the main thread and
cannot interrupt C code such as a long SymPy simplification. A worker process can always be
killed. Killing is the only way a hung call ends here: the worker is SIGKILLed, the call is
reported as ``"timeout"`` and a fresh worker takes its place.

Cost, measured on a 2-core CPU machine: starting a worker with the default ``"spawn"`` method
costs a new interpreter plus whatever the function imports (~0.1 s bare, ~0.5-1 s with SymPy
and math_verify); a call then costs a pickle round trip over a pipe (~0.1 ms) on top of the
function itself. Workers are started once and reused for every call, so the start-up is paid
once per pool, plus once for each worker recycled after a timeout.

``"spawn"`` (the default) needs the function to be picklable: a module-level function, not a
lambda or closure. ``"fork"`` accepts anything importable from the parent but may deadlock
when the parent runs threads (PyTorch does), so it is opt-in.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import pickle
import signal
import threading
import time
import traceback
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

Status = Literal["ok", "timeout", "error"]


@dataclass(frozen=True)
class Outcome:
    """What came of one call.

    Attributes:
        status: "ok" (``value`` holds the return value), "timeout" (the worker was killed) or
            "error" (the function raised, or its worker died; ``error`` says why).
        value: the function's return value when status is "ok", else None.
        error: a traceback or a one-line reason when status is not "ok".
    """

    status: Status
    value: Any = None
    error: str | None = None


Call = tuple[tuple, dict]  # (args, kwargs) of one call


def _worker_main(conn, fn: Callable[..., Any], initializer: Callable[[], None] | None) -> None:
    """Worker loop: answer ``(args, kwargs)`` requests with ``(status, payload)`` replies."""
    # Ctrl-C reaches the whole process group; let the parent decide what to do about it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer()
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        if message is None:
            return
        args, kwargs = message
        try:
            reply = ("ok", fn(*args, **kwargs))
        except BaseException:  # noqa: BLE001 - report everything, SystemExit from user code too
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except Exception:  # noqa: BLE001 - e.g. an unpicklable return value
            conn.send(("error", "the return value could not be sent back:\n" + traceback.format_exc()))


class _Worker:
    """One process, its pipe end, and the call it is working on."""

    def __init__(self, ctx, fn, initializer) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child_conn, fn, initializer), daemon=True)
        self.process.start()
        child_conn.close()  # so that the worker's death reads as EOF here
        self.started_at = time.monotonic()
        self.ready = False
        self.task: int | None = None
        self.deadline = float("inf")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        """Ask politely, then kill."""
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=1)
        self.kill()


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()
    workers.clear()


class WorkerPool:
    """Run ``fn`` in ``num_workers`` reusable processes, each call limited to ``timeout_s``.

    Args:
        fn: the function every call runs (picklable under "spawn").
        num_workers: processes; calls of one `map` run in parallel across them.
        timeout_s: seconds one call may take, counted from when a ready worker receives it
            (worker start-up does not count against it).
        initializer: run once in each new worker before its first call (e.g. heavy imports).
        start_timeout_s: seconds a new worker may take to become ready before the pool gives up.
        mp_context: multiprocessing start method: "spawn" (default, safe with threads),
            "forkserver" or "fork".

    Workers start on first use. `close()` (or leaving a ``with`` block, or garbage collection)
    stops them. One `map` runs at a time; concurrent callers wait for each other.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        num_workers: int = 1,
        timeout_s: float = 5.0,
        initializer: Callable[[], None] | None = None,
        start_timeout_s: float = 120.0,
        mp_context: str = "spawn",
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if mp_context != "fork":
            try:
                pickle.dumps(fn)
            except Exception as err:  # noqa: BLE001 - any pickling failure means the same thing
                raise TypeError(
                    f"{fn!r} cannot be sent to a worker process ({err}); use a module-level "
                    f"function, or mp_context='fork'"
                ) from err
        self.fn = fn
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.initializer = initializer
        self.start_timeout_s = float(start_timeout_s)
        self._ctx = multiprocessing.get_context(mp_context)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.restarts = 0  # workers killed after a timeout or found dead
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop all workers; a later call starts fresh ones."""
        with self._lock:
            _stop_all(self._workers)

    def call(self, *args: Any, **kwargs: Any) -> Outcome:
        """Run ``fn(*args, **kwargs)`` in a worker."""
        return self.map([(args, kwargs)])[0]

    def map(self, calls: Sequence[Call]) -> list[Outcome]:
        """Run every ``(args, kwargs)`` in `calls`; outcomes come back in the same order."""
        with self._lock:
            try:
                return self._map(list(calls))
            except BaseException:
                # Interrupted (Ctrl-C, a worker that would not start): busy workers would
                # answer a later map with this map's results, so they go.
                for worker in [w for w in self._workers if w.task is not None]:
                    self._recycle(worker)
                raise

    def _map(self, calls: list[Call]) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(calls)
        pending = deque(range(len(calls)))
        wanted = min(self.num_workers, len(calls))
        while pending or any(w.task is not None for w in self._workers):
            while len(self._workers) < wanted:
                self._workers.append(_Worker(self._ctx, self.fn, self.initializer))
            for worker in self._workers:
                if worker.ready and worker.task is None and pending:
                    self._dispatch(worker, pending.popleft(), calls, results)
            self._wait_and_collect(results)
        return results  # type: ignore[return-value]  # every slot is filled by now

    def _dispatch(self, worker: _Worker, index: int, calls: list[Call], results: list) -> None:
        try:
            worker.conn.send(calls[index])
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            results[index] = Outcome("error", error=f"arguments could not be sent to the worker: {err!r}")
            return
        worker.task = index
        worker.deadline = time.monotonic() + self.timeout_s

    def _wait_and_collect(self, results: list) -> None:
        now = time.monotonic()
        deadlines = [w.deadline for w in self._workers if w.task is not None]
        deadlines += [w.started_at + self.start_timeout_s for w in self._workers if not w.ready]
        wait_s = max(0.0, min(deadlines) - now) if deadlines else None
        ready = multiprocessing.connection.wait([w.conn for w in self._workers], timeout=wait_s)
        for worker in [w for w in self._workers if w.conn in ready]:
            try:
                kind, payload = worker.conn.recv()
            except (EOFError, OSError):
                self._replace_dead(worker, results)
                continue
            if kind == "ready":
                worker.ready = True
            else:
                results[worker.task] = Outcome("ok", value=payload) if kind == "ok" else Outcome("error", error=payload)
                worker.task, worker.deadline = None, float("inf")
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.task is not None and now >= worker.deadline:
                results[worker.task] = Outcome(
                    "timeout", error=f"no result after {self.timeout_s:g} s; worker process killed"
                )
                self._recycle(worker)
            elif not worker.ready and now >= worker.started_at + self.start_timeout_s:
                self._recycle(worker)
                raise RuntimeError(f"a worker process for {self.fn!r} did not start within {self.start_timeout_s:g} s")

    def _replace_dead(self, worker: _Worker, results: list) -> None:
        self._recycle(worker)  # joins the process, so its exit code is known below
        exitcode = worker.process.exitcode
        if not worker.ready:
            raise RuntimeError(
                f"a worker process for {self.fn!r} exited during start-up (exit code {exitcode}); "
                "its traceback, if any, is on stderr"
            )
        results[worker.task] = Outcome("error", error=f"worker process died (exit code {exitcode})")

    def _recycle(self, worker: _Worker) -> None:
        worker.kill()
        self._workers.remove(worker)
        self.restarts += 1
