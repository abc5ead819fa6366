"""A bounded micro-batching queue: items submitted from many threads run in batches in one
worker thread. Plain Python (no torch): the engine gives it its model's batch function, tests
give it plain functions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(RuntimeError):
    """The request queue is at its bound; try again later (the service answers 503)."""


class EngineNotReady(RuntimeError):
    """The engine is not started yet, or closed (the service answers 503 not_ready)."""


class MicroBatcher(Generic[T, R]):
    """Runs `fn` on batches of items submitted from many threads, in one worker thread.

    The worker takes what is queued, up to `max_batch` items, waiting at most `max_wait_ms`
    after the oldest item arrived for more to come. `fn(items)` returns one result per item, in
    order; if it raises, every caller of that batch gets the exception.

    Args:
        fn: the batch function.
        max_batch: most items per call of `fn`.
        max_wait_ms: how long a lone item may wait for company.
        queue_max: most items waiting (not counting the batch being run); beyond it `submit`
            raises `QueueFull` at once.
        on_batch: called after each batch with (batch size, seconds `fn` took); an error in it
            is logged, never raised.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 4,
        max_wait_ms: float = 5.0,
        queue_max: int = 16,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "m2fp-batcher",
    ) -> None:
        if max_batch < 1 or queue_max < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_max must be >= 1 and max_wait_ms >= 0")
        self._fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_max = queue_max
        self._on_batch = on_batch
        self._name = name
        # (item, future, time queued, the caller's timings dict or None)
        self._items: deque[tuple[T, Future, float, dict | None]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        """Items waiting for the worker."""
        with self._cond:
            return len(self._items)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._closed:
                raise EngineNotReady("the batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def submit_future(self, item: T, *, timings: dict[str, float] | None = None) -> Future:
        """Queue `item`; the future holds its result or the batch's exception. `timings`, if
        given, receives "queue" (seconds waiting for the worker) and "batch" (seconds `fn`
        took for the batch) before the future is resolved.

        Raises:
            QueueFull: `queue_max` items are already waiting.
            EngineNotReady: not started, or closed.
        """
        future: Future = Future()
        with self._cond:
            if self._closed or self._thread is None:
                raise EngineNotReady("the batcher is not running")
            if len(self._items) >= self.queue_max:
                raise QueueFull(f"{len(self._items)} requests already waiting")
            self._items.append((item, future, time.monotonic(), timings))
            self._cond.notify()
        return future

    def submit(
        self, item: T, *, timeout: float | None = None, timings: dict[str, float] | None = None
    ) -> R:
        """Queue `item` and wait for its result (`timings`: as `submit_future`).

        Raises:
            QueueFull, EngineNotReady: as `submit_future`.
            TimeoutError: no result within `timeout` seconds (the item is dropped if the
                worker has not started it yet).
            Exception: whatever `fn` raised for the batch.
        """
        future = self.submit_future(item, timings=timings)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None

    def close(self, *, timeout: float | None = 30.0) -> None:
        """Stop taking items, fail the waiting ones with `EngineNotReady`, let the batch being
        run finish, and join the worker."""
        with self._cond:
            self._closed = True
            pending = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        for _, future, _, _ in pending:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineNotReady("the engine was closed"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _next_batch(self) -> list[tuple[T, Future, dict | None]] | None:
        """Block until a batch is due; None when closed."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._items[0][2] + self.max_wait
            while len(self._items) < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed:
                return None
            taken = [self._items.popleft() for _ in range(min(self.max_batch, len(self._items)))]
        now = time.monotonic()
        batch = []
        for item, fut, queued, timings in taken:
            # a caller that timed out has cancelled its future: skip it
            if fut.set_running_or_notify_cancel():
                if timings is not None:
                    timings["queue"] = now - queued
                batch.append((item, fut, timings))
        return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._run(batch)

    def _run(self, batch: list[tuple[T, Future, dict | None]]) -> None:
        started = time.perf_counter()
        try:
            results = list(self._fn([item for item, _, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch function gave {len(results)} results for {len(batch)}")
        except BaseException as exc:  # every caller of the batch gets it, the worker goes on
            for _, future, _ in batch:
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        elapsed = time.perf_counter() - started
        for (_, future, timings), result in zip(batch, results, strict=True):
            if timings is not None:
                timings["batch"] = elapsed
            future.set_result(result)
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch), elapsed)
            except Exception:
                log.exception("on_batch hook failed")


__all__ = ["EngineNotReady", "MicroBatcher", "QueueFull"]
