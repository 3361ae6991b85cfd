"""One model, one thread, a bounded queue: how generation stays off the event loop without piling up.

Why one thread: the pipeline is not thread-safe and a second copy of the model would double the memory, so
all generation runs on a single worker thread that owns the model. The event loop only enqueues a job and
awaits its future. The queue is bounded: when `max_queue` jobs already wait, `submit` raises
`QueueFullError` at once (the API answers 503 with `Retry-After`) instead of letting latency and memory grow
without limit. Jobs with the same key share one future (a burst of identical requests costs one generation).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The bounded queue is full; `retry_after` is a whole-second estimate of when a slot frees up."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"generation queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class WorkerClosedError(RuntimeError):
    """The worker was closed (the server is shutting down)."""


@dataclass
class _Job:
    key: str
    fn: Callable[[], Any]
    future: Future


class GenerationWorker:
    """A single daemon thread running submitted callables in order, at most `max_queue` of them waiting."""

    def __init__(self, max_queue: int, *, name: str = "icg-generate") -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.max_queue = max_queue
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._pending: dict[str, Future] = {}  # key → future, from submit until its result is set
        self._lock = threading.Lock()
        self._closed = False
        self._busy = False
        self._mean_seconds: float | None = None  # moving average of one job's run time
        self.completed = 0
        self.failed = 0
        self.joined = 0  # submissions that joined a queued or running job of the same key
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- the event loop's side --------------------------------------------------------------------------
    def submit(self, key: str, fn: Callable[[], Any]) -> tuple[Future, bool]:
        """Queue `fn`, or join the queued/running job with the same key → (future, joined).

        QueueFullError when `max_queue` jobs already wait (joining an existing job is always allowed).
        """
        with self._lock:
            if self._closed:
                raise WorkerClosedError("the generation worker is closed")
            existing = self._pending.get(key)
            if existing is not None:
                self.joined += 1
                return existing, True
            future: Future = Future()
            try:
                self._queue.put_nowait(_Job(key, fn, future))
            except queue.Full:
                raise QueueFullError(self._retry_after_locked()) from None
            self._pending[key] = future
            return future, False

    def retry_after(self) -> int:
        with self._lock:
            return self._retry_after_locked()

    def _retry_after_locked(self) -> int:
        """Seconds until the queue has drained one slot: one job's time, at least 1 s."""
        per_job = self._mean_seconds if self._mean_seconds is not None else 1.0
        return max(1, min(600, math.ceil(per_job)))

    @property
    def pending(self) -> int:
        """Jobs waiting in the queue (not counting the one running)."""
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        """True when a new (non-joining) job would be refused: checked before an upload is decoded."""
        return self._queue.full()

    @property
    def busy(self) -> bool:
        return self._busy

    def stats(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "max_queue": self.max_queue,
            "busy": self._busy,
            "completed": self.completed,
            "failed": self.failed,
            "joined": self.joined,
            "mean_seconds": None if self._mean_seconds is None else round(self._mean_seconds, 4),
        }

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, fail the waiting ones, let the running one finish, stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    self._pending.pop(job.key, None)
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(WorkerClosedError("the server is shutting down"))
            self._queue.put_nowait(None)  # the queue is empty now, so this never blocks
        self._thread.join(timeout)

    # --- the worker thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():  # every waiter went away before it started
                with self._lock:
                    self._pending.pop(job.key, None)
                continue
            self._busy = True
            start = time.perf_counter()
            try:
                result = job.fn()
            except BaseException as exc:  # handed to the awaiting request, never kills the thread
                logger.exception("generation job %s failed", job.key[:12])
                self.failed += 1
                self._finish(job, start)
                job.future.set_exception(exc)
            else:
                self.completed += 1
                self._finish(job, start)
                job.future.set_result(result)
            finally:
                self._busy = False

    def _finish(self, job: _Job, start: float) -> None:
        """Forget the key *before* the result is published: a later request then finds the cache instead."""
        seconds = time.perf_counter() - start
        with self._lock:
            self._pending.pop(job.key, None)
            prev = self._mean_seconds
            self._mean_seconds = seconds if prev is None else 0.8 * prev + 0.2 * seconds
