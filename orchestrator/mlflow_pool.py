"""MLflow logging off the driver's thread, several runs at once.

A run is a few round trips to the tracking store (create_run, log_batch, artifacts,
set_terminated); logged one after another from one thread, the server sits idle while the
thread waits on each answer, and a sweep's results arrive faster than its runs are logged. A
dispatcher thread sets up the logger (the experiment, the sweep's parent run), then hands each
queued run to a pool of `threads` threads; the logger keeps one job's runs in order
(orchestrator.recorder.MlflowLogger). The first failure is reported once and logging stops (the
caller's `on_error`); what was not logged is left to `circuitry sync`."""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

THREADS_ENV = "CIRCUITRY_MLFLOW_THREADS"


def default_threads(uri: str) -> int:
    """Runs logged at once: $CIRCUITRY_MLFLOW_THREADS, else 8 against a server (their round trips
    overlap), 2 on a store this process writes itself (SQLite takes one writer at a time; the
    second thread prepares the next run meanwhile)."""
    if os.environ.get(THREADS_ENV):
        return max(1, int(os.environ[THREADS_ENV]))
    return 8 if uri.startswith(("http:", "https:", "databricks")) else 2


def size_http_pool(threads: int) -> None:
    """Let every thread keep its connection to the server: MLflow's HTTP session (one per process,
    made at its first request) keeps MLFLOW_HTTP_POOL_MAXSIZE connections, 10 unless set; past
    that, each request of a further thread opens a new TCP connection and drops it."""
    if threads > 10:
        os.environ.setdefault("MLFLOW_HTTP_POOL_MAXSIZE", str(threads))


class LogPool:
    """`put((record, replace))` queues a run; `backlog()` counts those not yet logged;
    `close(status)` logs the rest, ends the parent run with `status` and returns."""

    def __init__(self, make_logger: Callable[[], Any], threads: int, on_error: Callable[[Exception], None]):
        self.make_logger, self.threads, self.on_error = make_logger, threads, on_error
        size_http_pool(threads)
        self.logger = None
        self.failed = False
        self.logged = 0
        self.in_flight = 0  # runs taken off the queue and not yet logged
        self.end_status: str | None = None
        self.q: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(threads)
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._dispatch, name="circuitry-mlflow", daemon=True)
        self.thread.start()

    def put(self, item) -> None:
        self.q.put(item)

    def backlog(self) -> int:
        return 0 if self.failed else self.q.qsize() + self.in_flight

    def close(self, status: str, timeout: float | None = None) -> None:
        self.end_status = status
        self.q.put(None)
        self.thread.join(timeout)

    def _fail(self, e: Exception) -> None:
        with self._lock:
            if self.failed:
                return
            self.failed = True
        self.on_error(e)

    def _dispatch(self) -> None:
        """Hand queued runs to the pool in queue order, at most `threads` at a time (the rest stay
        queued, so `backlog` counts them)."""
        try:
            self.logger = self.make_logger()
        except Exception as e:  # noqa: BLE001 - any MLflow failure is non-fatal
            self._fail(e)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="circuitry-mlflow") as pool:
            while (item := self.q.get()) is not None:
                if self.failed:
                    continue
                with self._lock:  # counted before it waits for a slot, so backlog() never misses it
                    self.in_flight += 1
                self._slots.acquire()
                pool.submit(self._log, item)
        if self.logger is not None and not self.failed and self.end_status:
            try:
                self.logger.end(self.end_status)
            except Exception as e:  # noqa: BLE001
                self._fail(e)

    def _log(self, item) -> None:
        try:
            if not self.failed and self.logger.log_job(*item):
                with self._lock:
                    self.logged += 1
        except Exception as e:  # noqa: BLE001
            self._fail(e)
        finally:
            with self._lock:
                self.in_flight -= 1
            self._slots.release()
