"""What the engine's queue looks like right now, for people waiting on it: images waiting,
images being run, and the measured seconds per image (a moving average of recent batches).

Read-only and cheap: a snapshot under one lock, no per-request data. The engine wraps its
batch function with `ServiceClock.timed` and answers `stats()` from it (m2fp/engine.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Weight of the newest batch in the moving average of seconds per image.
SERVICE_TIME_WEIGHT = 0.3


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of the engine's queue.

    Attributes:
        queued: images waiting for the batch thread.
        running: images in the batch being run now.
        capacity: most images run together (the batch size).
        service_seconds: measured seconds per image (batch seconds / batch size, a moving
            average); None before the first batch.
        expected_wait_seconds: seconds until an image queued now would be done: the images
            ahead (queued and running) and its own, at `service_seconds` each; None before
            the first batch.
    """

    queued: int
    running: int
    capacity: int
    service_seconds: float | None
    expected_wait_seconds: float | None


class ServiceClock:
    """Counts the images being run and measures seconds per image, around a batch function."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._per_image: float | None = None

    def timed(self, fn: Callable[[list[T]], Sequence[R]]) -> Callable[[list[T]], Sequence[R]]:
        """`fn`, counted while it runs and timed when it succeeds."""

        def run(items: list[T]) -> Sequence[R]:
            with self._lock:
                self._running += len(items)
            started = time.perf_counter()
            try:
                results = fn(items)
            finally:
                with self._lock:
                    self._running -= len(items)
            self._measure((time.perf_counter() - started) / max(1, len(items)))
            return results

        return run

    def _measure(self, per_image: float) -> None:
        with self._lock:
            if self._per_image is None:
                self._per_image = per_image
            else:
                self._per_image += SERVICE_TIME_WEIGHT * (per_image - self._per_image)

    def stats(self, *, queued: int, capacity: int) -> QueueStats:
        """The snapshot, given what only the queue knows (`queued`, `capacity`)."""
        with self._lock:
            running, per_image = self._running, self._per_image
        expected = None if per_image is None else per_image * (queued + running + 1)
        return QueueStats(
            queued=queued,
            running=running,
            capacity=capacity,
            service_seconds=per_image,
            expected_wait_seconds=expected,
        )


__all__ = ["QueueStats", "ServiceClock"]
