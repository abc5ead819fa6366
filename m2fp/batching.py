"""A bounded micro-batching queue: items submitted from many threads run in batches in one
worker thread. Plain Python (no torch): the engine gives it its model's batch function, tests
give it plain functions.

Admission is by count and by time. `reserve()` holds a place before the caller does its own
expensive work (decoding an upload) and refuses at once when the queue is full or when the
work ahead would not finish within the latency target: the expected wait is the measured
seconds per item (a moving average of recent batches) times the items ahead (queued, reserved
and running) plus the caller's own. Items whose deadline passed, or whose caller gave up (its
client left), are dropped before they run.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


# Weight of the newest batch in the moving average of seconds per item.
SERVICE_TIME_WEIGHT = 0.3
# How often a waiting caller asks whether its client is still there.
ALIVE_POLL_S = 0.25


class QueueFull(RuntimeError):
    """The request queue is at its bound; try again later (the service answers 503).

    `retry_after`: seconds until the queue is expected to have room (at least 1)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class TooSlow(QueueFull):
    """The work ahead would not finish within the latency target (the service answers 503)."""


class DeadlineExpired(TimeoutError):
    """The item's deadline passed while it waited; it was dropped, not computed."""


class ClientGone(RuntimeError):
    """The caller's client left while the item waited; it was dropped, not computed."""


class EngineNotReady(RuntimeError):
    """The engine is not started yet, or closed (the service answers 503 not_ready)."""


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of the queue, for people waiting on it (no per-request data).

    Attributes:
        queued: items ahead of a newcomer that are not running: waiting for the worker, or
            admitted and still being prepared (reserved).
        running: items in the batch being run now.
        capacity: most items run together (the batch size).
        service_seconds: seconds per item (the moving average of recent batches, or the prior
            before the first); None while there is neither.
        expected_wait_seconds: seconds until an item admitted now would be done (the work
            ahead and its own at `service_seconds` each); None with no `service_seconds`.
    """

    queued: int
    running: int
    capacity: int
    service_seconds: float | None
    expected_wait_seconds: float | None


class MicroBatcher(Generic[T, R]):
    """Runs `fn` on batches of items submitted from many threads, in one worker thread.

    The worker takes what is queued, up to `max_batch` items, waiting at most `max_wait_ms`
    after the oldest item arrived for more to come. `fn(items)` returns one result per item, in
    order; if it raises, every caller of that batch gets the exception.

    Args:
        fn: the batch function.
        max_batch: most items per call of `fn`.
        max_wait_ms: how long a lone item may wait for company.
        queue_max: most items waiting or reserved (not counting the batch being run); beyond
            it `reserve` and `submit` raise `QueueFull` at once.
        on_batch: called after each batch with (batch size, seconds `fn` took); an error in it
            is logged, never raised.
        latency_target_s: `reserve` refuses (`TooSlow`) an item not expected to be done
            within it; None: admission by count only.
        deadline_s: a reserved item's deadline, counted from its reservation; None: the
            latency target (no deadline without one).
        service_time_s: seconds per item assumed until the first batch is measured (e.g. the
            engine's warm-up); 0: no refusal by time before a measurement.
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
        latency_target_s: float | None = None,
        deadline_s: float | None = None,
        service_time_s: float = 0.0,
    ) -> None:
        if max_batch < 1 or queue_max < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_max must be >= 1 and max_wait_ms >= 0")
        if latency_target_s is not None and not latency_target_s > 0:
            raise ValueError("latency_target_s must be positive")
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError("deadline_s must be positive")
        self._fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_max = queue_max
        self._on_batch = on_batch
        self._name = name
        self.latency_target_s = latency_target_s
        self.deadline_s = latency_target_s if deadline_s is None else deadline_s
        self._service_time = service_time_s
        self._measured = False
        self._items: deque[_Entry[T]] = deque()
        self._reserved = 0  # admitted, not yet submitted (decoding)
        self._running = 0  # items in the batch being run
        self.dropped_expired = 0  # items dropped because their deadline passed
        self.dropped_gone = 0  # items dropped because their caller gave up (client left)
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

    @property
    def service_time(self) -> float:
        """Seconds per item: the moving average of recent batches (seconds / batch size), or
        the prior given at construction (or `seed_service_time`) before the first batch."""
        with self._cond:
            return self._service_time

    def seed_service_time(self, seconds: float) -> None:
        """Use `seconds` per item until the first batch is measured (the engine's warm-up)."""
        with self._cond:
            if not self._measured:
                self._service_time = max(0.0, seconds)

    def expected_wait(self) -> float:
        """Seconds until a new item would be done: the work ahead (queued, reserved and
        running items) and its own, at the measured seconds per item."""
        with self._cond:
            return self._expected_wait()

    def stats(self) -> QueueStats:
        """The queue now, read under one lock."""
        with self._cond:
            known = self._measured or self._service_time > 0
            return QueueStats(
                queued=len(self._items) + self._reserved,
                running=self._running,
                capacity=self.max_batch,
                service_seconds=self._service_time if known else None,
                expected_wait_seconds=self._expected_wait() if known else None,
            )

    def _expected_wait(self) -> float:
        ahead = len(self._items) + self._reserved + self._running
        return self._service_time * (ahead + 1)

    def reserve(self) -> Reservation:
        """Admit one item before it exists: a place in the queue, held until `submit` takes
        it or the reservation is released (use it as a context manager).

        Raises:
            QueueFull: `queue_max` items are already waiting or reserved.
            TooSlow: the work ahead would not be done within `latency_target_s`; its
                `retry_after` is how long until enough of it is done.
            EngineNotReady: not started, or closed.
        """
        with self._cond:
            self._check_open()
            waiting = len(self._items) + self._reserved
            if waiting >= self.queue_max:
                # a place frees when the next batch is taken: about one batch from now
                raise QueueFull(
                    f"{waiting} requests already waiting",
                    retry_after=self._service_time * self.max_batch,
                )
            expected = self._expected_wait()
            target = self.latency_target_s
            # With nobody waiting the item is next, whatever the estimate: refusing it would
            # refuse everything when one forward takes longer than the target.
            if target is not None and waiting and expected > target:
                raise TooSlow(
                    f"expected wait {expected:.1f} s is over the target {target:g} s",
                    retry_after=expected - target,
                )
            self._reserved += 1
        wait = self.deadline_s
        return Reservation(self, None if wait is None else time.monotonic() + wait)

    def _release(self) -> None:
        with self._cond:
            self._reserved -= 1

    def _check_open(self) -> None:
        if self._closed or self._thread is None:
            raise EngineNotReady("the batcher is not running")

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._closed:
                raise EngineNotReady("the batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def submit_future(
        self,
        item: T,
        *,
        timings: dict[str, float] | None = None,
        reservation: Reservation | None = None,
        deadline: float | None = None,
    ) -> Future:
        """Queue `item`; the future holds its result or the batch's exception. `timings`, if
        given, receives "queue" (seconds waiting for the worker) and "batch" (seconds `fn`
        took for the batch) before the future is resolved. With a `reservation` (from
        `reserve`) the item takes its place and its deadline; `deadline` (a
        `time.monotonic()` value) may only make that earlier. An item still queued at its
        deadline is dropped: its future fails with `DeadlineExpired`.

        Raises:
            QueueFull: without a reservation, `queue_max` items are already waiting.
            EngineNotReady: not started, or closed.
            ValueError: a reservation already used or released.
        """
        future: Future = Future()
        if reservation is not None:
            reservation.take(self)
            if reservation.deadline is not None:
                deadline = min(reservation.deadline, deadline or reservation.deadline)
        with self._cond:
            if self._closed or self._thread is None:
                raise EngineNotReady("the batcher is not running")
            if reservation is None and len(self._items) + self._reserved >= self.queue_max:
                raise QueueFull(
                    f"{len(self._items)} requests already waiting",
                    retry_after=self._service_time * self.max_batch,
                )
            self._items.append(_Entry(item, future, time.monotonic(), timings, deadline))
            self._cond.notify()
        return future

    def submit(
        self,
        item: T,
        *,
        timeout: float | None = None,
        timings: dict[str, float] | None = None,
        reservation: Reservation | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> R:
        """Queue `item` and wait for its result (`timings`, `reservation`: as
        `submit_future`). `alive`, if given, is asked every `ALIVE_POLL_S` while waiting;
        once it answers False the item is dropped (if it has not started) and `ClientGone`
        raised.

        Raises:
            QueueFull, EngineNotReady: as `submit_future`.
            TimeoutError: no result within `timeout` seconds or by the reservation's deadline
                (the item is dropped if the worker has not started it yet).
            ClientGone: `alive()` answered False.
            Exception: whatever `fn` raised for the batch.
        """
        if alive is not None and not alive():
            # gone while its item was being prepared: an idle worker would run it at once
            self._count_drop(gone=True)
            raise ClientGone("the client left before its item was queued")
        deadline = None if timeout is None else time.monotonic() + timeout
        future = self.submit_future(
            item, timings=timings, reservation=reservation, deadline=deadline
        )
        if reservation is not None and reservation.deadline is not None:
            deadline = min(reservation.deadline, deadline or reservation.deadline)
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if alive is not None:
                wait = ALIVE_POLL_S if wait is None else min(wait, ALIVE_POLL_S)
            try:
                return future.result(timeout=wait)
            except FutureTimeout:
                pass
            if alive is not None and not alive():
                if future.cancel():
                    self._count_drop(gone=True)
                raise ClientGone("the client left before the result")
            if deadline is not None and time.monotonic() >= deadline:
                if future.cancel():
                    self._count_drop(gone=False)
                elif future.done():  # finished a moment ago: the result is still good
                    return future.result()
                raise DeadlineExpired("no result by the deadline")

    def _count_drop(self, *, gone: bool) -> None:
        with self._cond:
            if gone:
                self.dropped_gone += 1
            else:
                self.dropped_expired += 1

    def close(self, *, timeout: float | None = 30.0) -> None:
        """Stop taking items, fail the waiting ones with `EngineNotReady`, let the batch being
        run finish, and join the worker."""
        with self._cond:
            self._closed = True
            pending = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        for entry in pending:
            future = entry.future
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineNotReady("the engine was closed"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _next_batch(self) -> list[_Entry[T]] | None:
        """Block until a batch is due; None when closed. Items cancelled by their caller or
        past their deadline are dropped here, before they cost a forward."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._items[0].queued + self.max_wait
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
            for entry in taken:
                if entry.deadline is not None and now >= entry.deadline:
                    if entry.future.set_running_or_notify_cancel():
                        self.dropped_expired += 1
                        entry.future.set_exception(
                            DeadlineExpired("the deadline passed while the item was queued")
                        )
                    continue
                # a caller that gave up (timed out, client left) has cancelled its future
                if entry.future.set_running_or_notify_cancel():
                    if entry.timings is not None:
                        entry.timings["queue"] = now - entry.queued
                    batch.append(entry)
            self._running = len(batch)
        return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Entry[T]]) -> None:
        started = time.perf_counter()
        try:
            results = list(self._fn([entry.item for entry in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch function gave {len(results)} results for {len(batch)}")
        except BaseException as exc:  # every caller of the batch gets it, the worker goes on
            self._done_running()
            for entry in batch:
                entry.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        elapsed = time.perf_counter() - started
        self._done_running(elapsed / len(batch))
        for entry, result in zip(batch, results, strict=True):
            if entry.timings is not None:
                entry.timings["batch"] = elapsed
            entry.future.set_result(result)
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch), elapsed)
            except Exception:
                log.exception("on_batch hook failed")

    def _done_running(self, per_item: float | None = None) -> None:
        with self._cond:
            self._running = 0
            if per_item is None:
                return
            if self._measured:
                self._service_time += SERVICE_TIME_WEIGHT * (per_item - self._service_time)
            else:
                self._service_time, self._measured = per_item, True


class _Entry(Generic[T]):
    """One queued item: its future, when it was queued (`time.monotonic()`), the caller's
    timings dict, and its deadline (`time.monotonic()`; None: none)."""

    __slots__ = ("deadline", "future", "item", "queued", "timings")

    def __init__(
        self, item: T, future: Future, queued: float, timings: dict | None, deadline: float | None
    ) -> None:
        self.item, self.future, self.queued = item, future, queued
        self.timings, self.deadline = timings, deadline


class Reservation:
    """A place in a `MicroBatcher`'s queue, held from `reserve()` until `submit` takes it or
    `release()` (also on leaving a `with` block) gives it back. `deadline`: when the item's
    wait ends (`time.monotonic()`), counted from the reservation; None: no deadline."""

    def __init__(self, batcher: MicroBatcher, deadline: float | None) -> None:
        self._batcher: MicroBatcher | None = batcher
        self.deadline = deadline
        self._lock = threading.Lock()

    def take(self, batcher: MicroBatcher) -> None:
        """Hand the place to the item being submitted (called by `submit_future`)."""
        with self._lock:
            if self._batcher is not batcher:
                raise ValueError("this reservation is used, released, or another queue's")
            self._batcher = None
        batcher._release()

    def release(self) -> None:
        """Give the place back unused (idempotent; nothing once `submit` has taken it)."""
        with self._lock:
            batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher._release()

    @property
    def remaining(self) -> float | None:
        """Seconds left until the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


__all__ = [
    "QueueStats",
    "ClientGone",
    "DeadlineExpired",
    "EngineNotReady",
    "MicroBatcher",
    "QueueFull",
    "Reservation",
    "TooSlow",
]
