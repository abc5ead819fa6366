"""The micro-batcher, driven with plain functions."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from m2fp.batching import (
    SERVICE_TIME_WEIGHT,
    ClientGone,
    DeadlineExpired,
    EngineNotReady,
    MicroBatcher,
    QueueFull,
    TooSlow,
)
from tests.support.paths import REPO


def _submit_in_threads(batcher: MicroBatcher, items: list) -> tuple[list, list]:
    results: list = [None] * len(items)
    errors: list = [None] * len(items)

    def call(i: int) -> None:
        try:
            results[i] = batcher.submit(items[i], timeout=10)
        except Exception as exc:
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return results, errors


class Gate:
    """A batch function that blocks until released, recording the batches it gets."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list] = []

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.entered.set()
        assert self.open.wait(10)
        return [x * 10 for x in items]


def test_batches_concurrent_items_up_to_max_batch() -> None:
    sizes: list[tuple[int, float]] = []
    batches: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        batches.append(items)
        time.sleep(0.02)
        return [x * 2 for x in items]

    batcher = MicroBatcher(
        fn, max_batch=3, max_wait_ms=200, queue_max=16, on_batch=lambda n, s: sizes.append((n, s))
    )
    batcher.start()
    results, errors = _submit_in_threads(batcher, list(range(7)))
    batcher.close()
    assert errors == [None] * 7
    assert results == [x * 2 for x in range(7)]
    assert sorted(x for b in batches for x in b) == list(range(7))
    assert max(len(b) for b in batches) == 3  # grouped, and never above max_batch
    assert len(batches) <= 4
    assert [n for n, _ in sizes] == [len(b) for b in batches]
    assert all(s >= 0.02 for _, s in sizes)


def test_lone_item_waits_at_most_max_wait() -> None:
    batcher = MicroBatcher(lambda items: items, max_batch=8, max_wait_ms=30, queue_max=4)
    batcher.start()
    started = time.perf_counter()
    assert batcher.submit("x", timeout=5) == "x"
    assert time.perf_counter() - started < 2.0
    batcher.close()


def test_timings_report_the_wait_and_the_batch_run() -> None:
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch=1, max_wait_ms=0, queue_max=4)
    batcher.start()
    first_timings: dict[str, float] = {}
    second_timings: dict[str, float] = {}
    first = batcher.submit_future(1, timings=first_timings)
    assert gate.entered.wait(10)  # the worker holds item 1 until released
    second = batcher.submit_future(2, timings=second_timings)
    time.sleep(0.2)
    gate.open.set()
    assert (first.result(10), second.result(10)) == (10, 20)
    # item 2 waited behind item 1's run; item 1 ran for the 0.2 s the gate was shut
    assert second_timings["queue"] >= 0.15 and first_timings["queue"] >= 0
    assert first_timings["batch"] >= 0.15 and second_timings["batch"] >= 0
    batcher.close()


def test_full_queue_raises_at_once() -> None:
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch=1, max_wait_ms=0, queue_max=2)
    batcher.start()
    running = batcher.submit_future(1)
    assert gate.entered.wait(5)  # the worker holds item 1
    waiting = [batcher.submit_future(2), batcher.submit_future(3)]
    assert batcher.depth == 2
    started = time.perf_counter()
    with pytest.raises(QueueFull):
        batcher.submit(4)
    assert time.perf_counter() - started < 0.5
    gate.open.set()
    assert running.result(5) == 10
    assert [f.result(5) for f in waiting] == [20, 30]
    assert batcher.submit(5, timeout=5) == 50  # room again
    batcher.close()


def test_errors_reach_every_caller_of_the_batch_and_the_worker_goes_on() -> None:
    def fn(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("bad batch")
        return items

    batcher = MicroBatcher(fn, max_batch=4, max_wait_ms=300, queue_max=8)
    batcher.start()
    results, errors = _submit_in_threads(batcher, [13, 1, 2])
    failed = [e for e in errors if e is not None]
    assert failed and all(isinstance(e, ValueError) for e in failed)
    assert isinstance(errors[0], ValueError)
    assert batcher.submit(7, timeout=5) == 7
    batcher.close()


def test_wrong_number_of_results_is_an_error() -> None:
    batcher = MicroBatcher(lambda items: [], max_batch=1, max_wait_ms=0, queue_max=2)
    batcher.start()
    with pytest.raises(RuntimeError, match="0 results for 1"):
        batcher.submit(1, timeout=5)
    batcher.close()


def test_on_batch_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def hook(n: int, seconds: float) -> None:
        raise RuntimeError("metrics down")

    batcher = MicroBatcher(lambda items: items, max_batch=1, max_wait_ms=0, on_batch=hook)
    batcher.start()
    assert batcher.submit(3, timeout=5) == 3
    batcher.close()
    assert "on_batch hook failed" in caplog.text


def test_timeout_drops_the_item_before_it_runs() -> None:
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch=1, max_wait_ms=0, queue_max=4)
    batcher.start()
    first = batcher.submit_future(1)
    assert gate.entered.wait(5)
    with pytest.raises(TimeoutError):
        batcher.submit(2, timeout=0.05)
    gate.open.set()
    assert first.result(5) == 10
    assert batcher.submit(3, timeout=5) == 30
    assert gate.batches == [[1], [3]]  # the abandoned item never ran
    batcher.close()


def test_close_fails_pending_callers_and_refuses_new_ones() -> None:
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch=1, max_wait_ms=0, queue_max=4)
    with pytest.raises(EngineNotReady):
        batcher.submit(0)  # not started
    batcher.start()
    running = batcher.submit_future(1)
    assert gate.entered.wait(5)
    pending = batcher.submit_future(2)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    with pytest.raises(EngineNotReady, match="closed"):
        pending.result(5)
    gate.open.set()  # the running batch still completes
    assert running.result(5) == 10
    closer.join(5)
    assert not closer.is_alive() and not batcher.running
    with pytest.raises(EngineNotReady):
        batcher.submit(3)


# -- admission by count and by time --------------------------------------------------------------


def test_reservations_count_against_the_queue_bound_until_taken_or_released() -> None:
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch=1, max_wait_ms=0, queue_max=2)
    batcher.start()
    running = batcher.submit_future(1)
    assert gate.entered.wait(5)
    first, second = batcher.reserve(), batcher.reserve()  # nothing queued yet: both decoding
    with pytest.raises(QueueFull) as refused:
        batcher.reserve()
    assert refused.value.retry_after >= 1
    with pytest.raises(QueueFull):
        batcher.submit_future(9)  # nor without a reservation
    second.release()
    second.release()  # idempotent: gives back one place, not two
    with batcher.reserve():  # the place given back; left unused, given back again
        pass
    queued = batcher.submit_future(2, reservation=first)
    with pytest.raises(ValueError):
        batcher.submit_future(3, reservation=first)  # a reservation holds one place
    assert batcher.depth == 1
    gate.open.set()
    assert (running.result(5), queued.result(5)) == (10, 20)
    batcher.close()


def test_service_time_is_a_moving_average_of_seconds_per_item() -> None:
    delays = iter([0.2, 0.05])

    def fn(items: list[int]) -> list[int]:
        time.sleep(next(delays))
        return items

    batcher = MicroBatcher(fn, max_batch=2, max_wait_ms=0, queue_max=4, service_time_s=9.0)
    assert batcher.service_time == 9.0  # the prior, before any measurement
    batcher.start()
    batcher.submit(1, timeout=5)
    first = batcher.service_time
    assert 0.2 <= first < 0.5  # the first measurement replaces the prior
    batcher.seed_service_time(7.0)  # a prior no longer applies once measured
    assert batcher.service_time == first
    batcher.submit(2, timeout=5)
    # the second batch (0.05 s) moves the average by its weight, no further
    floor = first * (1 - SERVICE_TIME_WEIGHT) + 0.05 * SERVICE_TIME_WEIGHT
    assert floor <= batcher.service_time < first
    batcher.close()


def test_admission_refuses_what_would_not_be_done_within_the_target() -> None:
    gate = Gate()
    # 1 s per item assumed; a target of 2.5 s: the running item, one queued, then the third
    # would be done in 3 s.
    batcher = MicroBatcher(
        gate, max_batch=1, max_wait_ms=0, queue_max=8, latency_target_s=2.5, service_time_s=1.0
    )
    batcher.start()
    assert batcher.expected_wait() == 1.0  # idle: its own forward
    running = batcher.submit_future(1, reservation=batcher.reserve())
    assert gate.entered.wait(5)
    assert batcher.expected_wait() == 2.0
    queued = batcher.submit_future(2, reservation=batcher.reserve())
    assert batcher.expected_wait() == 3.0
    started = time.perf_counter()
    with pytest.raises(TooSlow) as refused:
        batcher.reserve()
    assert time.perf_counter() - started < 0.1
    assert isinstance(refused.value, QueueFull)  # callers that map QueueFull to 503 keep working
    assert refused.value.retry_after == 1  # 3 s expected - 2.5 s target, in whole seconds
    gate.open.set()
    assert (running.result(5), queued.result(5)) == (10, 20)
    batcher.close()


def test_retry_after_is_the_time_until_the_work_ahead_would_fit_the_target() -> None:
    gate = Gate()
    batcher = MicroBatcher(
        gate, max_batch=1, max_wait_ms=0, queue_max=8, latency_target_s=13, service_time_s=4.0
    )
    batcher.start()
    futures = [batcher.submit_future(1, reservation=batcher.reserve())]
    assert gate.entered.wait(5)
    futures.append(batcher.submit_future(2, reservation=batcher.reserve()))
    held = batcher.reserve()  # done in 12 s; then decoding, it counts as work ahead too
    with pytest.raises(TooSlow) as refused:
        batcher.reserve()  # 3 ahead and its own at 4 s each: 16 s
    assert refused.value.retry_after == 16 - 13
    held.release()
    gate.open.set()
    assert [f.result(5) for f in futures] == [10, 20]
    batcher.close()


def test_the_next_item_is_admitted_even_when_one_forward_exceeds_the_target() -> None:
    batcher = MicroBatcher(
        lambda items: items, max_batch=1, latency_target_s=1.0, service_time_s=5.0
    )
    batcher.start()
    with batcher.reserve() as place:  # nobody waits ahead of it: refusing it serves nobody
        assert place.deadline is not None
    batcher.close()


def test_an_item_whose_deadline_passed_in_the_queue_is_dropped_not_computed() -> None:
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch=1, max_wait_ms=0, queue_max=4, latency_target_s=0.2)
    batcher.start()
    running = batcher.submit_future(1)
    assert gate.entered.wait(5)
    place = batcher.reserve()
    assert 0 < place.remaining <= 0.2
    expired = batcher.submit_future(2, reservation=place)  # deadline: 0.2 s after reserve()
    later = batcher.submit_future(3)  # no deadline
    time.sleep(0.3)
    gate.open.set()
    assert running.result(5) == 10
    with pytest.raises(DeadlineExpired):
        expired.result(5)
    assert later.result(5) == 30
    assert gate.batches == [[1], [3]]
    assert batcher.dropped_expired == 1
    batcher.close()


def test_a_waiting_caller_gives_up_at_its_reservations_deadline() -> None:
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch=1, max_wait_ms=0, queue_max=4, latency_target_s=0.2)
    batcher.start()
    running = batcher.submit_future(1)
    assert gate.entered.wait(5)
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        batcher.submit(2, timeout=30, reservation=batcher.reserve())
    assert 0.15 <= time.perf_counter() - started < 1.0  # the deadline, not the 30 s timeout
    gate.open.set()
    assert running.result(5) == 10
    assert batcher.submit(3, timeout=5) == 30
    assert gate.batches == [[1], [3]]
    assert batcher.dropped_expired == 1
    batcher.close()


def test_an_item_whose_client_left_is_dropped_not_computed() -> None:
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch=1, max_wait_ms=0, queue_max=4)
    batcher.start()
    running = batcher.submit_future(1)
    assert gate.entered.wait(5)
    connected = threading.Event()
    connected.set()
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            batcher.submit(2, timeout=30, alive=connected.is_set)
        except ClientGone as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.4)
    assert waiter.is_alive() and batcher.depth == 1
    connected.clear()  # the client hangs up
    waiter.join(5)
    assert not waiter.is_alive() and len(outcome) == 1
    gate.open.set()
    assert running.result(5) == 10
    assert batcher.submit(3, timeout=5) == 30
    assert gate.batches == [[1], [3]]
    assert batcher.dropped_gone == 1
    batcher.close()


def test_invalid_bounds() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, queue_max=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, latency_target_s=0)


def test_the_batcher_imports_no_torch() -> None:
    code = "import sys, m2fp.batching; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_an_item_whose_client_left_while_it_was_prepared_is_never_queued() -> None:
    """An idle worker would run an item the moment it is queued, before any poll of `alive`:
    a client gone during the upload or the decode is caught at the door."""
    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [x * 10 for x in items]

    batcher = MicroBatcher(run, max_batch=1, max_wait_ms=0)
    batcher.start()
    with pytest.raises(ClientGone):
        batcher.submit(1, timeout=5, alive=lambda: False)
    assert batcher.dropped_gone == 1 and batcher.depth == 0
    assert batcher.submit(2, timeout=5, alive=lambda: True) == 20
    assert seen == [[2]]  # the first never reached the worker
    batcher.close()
