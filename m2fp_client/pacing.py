"""Pacing shared by every worker of a batch: a 429 or 503 with Retry-After, or a response saying
`X-RateLimit-Remaining: 0`, pauses every worker; after a pause one request goes at a time until
one is answered, and then no more than the limit's remaining count, so a crowd of workers does
not wake into the same limit.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

MAX_CLOCK_SKEW_S = 2.0  # beyond this, the server's Date measures the wait for its rate limit


class Throttle:
    """The pacing every worker shares: a pause, and a budget of requests.

    `pause(seconds)` holds every worker until then; afterwards one request goes at a time (the
    probe) until one is answered with something other than "wait". The budget is the rate
    limit's `X-RateLimit-Remaining` from the latest answer, less the requests still on their
    way: no request is sent that the limit is known to refuse. `acquire()` blocks until a
    request may go and says whether it is the probe (None once cancelled); `release()` hands
    back the outcome."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._until = 0.0
        self._probing = False
        self._in_flight = 0
        self._budget: int | None = None  # None: unknown (first requests, after a pause)
        self._cancelled = False

    def pause(self, seconds: float) -> bool:
        """Hold every worker for `seconds`; True when that ends later than the pause already
        in force (False: another worker's pause covers it)."""
        with self._cond:
            until = self._clock() + seconds
            longer = until > self._until
            self._until = max(self._until, until)
            self._probing = True
            self._budget = None
            self._cond.notify_all()
            return longer

    def acquire(self) -> bool | None:
        with self._cond:
            while not self._cancelled:
                delay = self._until - self._clock()
                if delay > 0:
                    self._cond.wait(delay)
                elif self._in_flight and (self._probing or self._budget_spent()):
                    self._cond.wait()  # a release or a pause wakes us
                else:
                    self._in_flight += 1
                    if self._budget is not None:
                        self._budget -= 1
                    return self._probing
            return None

    def _budget_spent(self) -> bool:
        return self._budget is not None and self._budget <= 0

    def release(self, probe: bool, *, answered: bool, remaining: int | None = None) -> None:
        """`answered`: the service took the request (anything but 429, 502, 503, 504 or no
        connection); `remaining`: its X-RateLimit-Remaining, when it sent one."""
        with self._cond:
            self._in_flight -= 1
            if probe and answered:
                self._probing = False
            if remaining is not None and self._clock() >= self._until:
                self._budget = remaining - self._in_flight
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    @property
    def cancelled(self) -> bool:
        return self._cancelled


def remaining_of(headers: Mapping[str, str] | None) -> int | None:
    """X-RateLimit-Remaining as a number, when the answer has one."""
    value = (headers or {}).get("X-RateLimit-Remaining", "")
    return int(value) if value.strip().isdigit() else None


def rate_limit_wait(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds until the rate limit has room again when the answer says none is left
    (`X-RateLimit-Remaining: 0`), from `X-RateLimit-Reset` (Unix time, whole seconds).

    This machine's clock measures it unless the answer's `Date` (whole seconds) disagrees by
    more than 2 s: then the server's clock, which set the reset, is the one to trust."""
    if headers.get("X-RateLimit-Remaining", "").strip() != "0":
        return None
    try:
        reset = float(headers["X-RateLimit-Reset"])
    except (KeyError, ValueError):
        return None
    now = time.time() if now is None else now
    with contextlib.suppress(KeyError, TypeError, ValueError):
        server_now = parsedate_to_datetime(headers["Date"]).timestamp()
        if abs(server_now - now) > MAX_CLOCK_SKEW_S:
            now = server_now
    return max(0.0, reset - now)
