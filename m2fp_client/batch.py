"""Batch parsing: many files through `POST /api/v1/parse`, a bounded number at a time.

    plan = plan_batch(["photos/", "extra.jpg"], out_dir="parsed", params={"output": "json"})
    report = BatchRunner(plan, client_factory=lambda: Client(url), concurrency=2).run()

- Inputs and output names: `plan_batch` (m2fp_client/batch_plan.py); what became of each
  input: `Outcome` and `Report` (m2fp_client/outcomes.py).
- An output that already exists is left alone (and not requested) unless `overwrite`; a file
  is written next to its final name and linked into place, so a half-written file never
  carries the final name.
- Pacing, shared by all workers (`Throttle`, m2fp_client/pacing.py): a Retry-After or an
  exhausted rate limit pauses every worker, then one request probes before the rest follow.
- Files the service would refuse as not an image (not JPEG, PNG or WebP by their first bytes)
  are refused here, unsent: refused uploads count towards the service's temporary ban.
"""

from __future__ import annotations

import errno
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from m2fp_client.batch_plan import EXTENSIONS, Job, Plan, plan_batch
from m2fp_client.client import (
    RETRY_STATUSES,
    Client,
    ClientError,
    ConnectionFailed,
    ServiceError,
    sniff_image_type,
)
from m2fp_client.outcomes import CANCELLED, EXISTS, FAILED, WRITTEN, Outcome, Report
from m2fp_client.pacing import Throttle, rate_limit_wait, remaining_of

WAIT_NOTICE_S = 2.0  # pauses at least this long are announced (on_wait)


class BatchRunner:
    """Workers (daemon threads, each with its own Client) pulling jobs from one queue.

    `run(on_outcome)` returns the Report; a KeyboardInterrupt while it waits cancels the rest:
    no new request starts, in-flight answers are dropped unwritten, and the report marks the
    unfinished files cancelled. A stop for a ban or an unreachable service (`cancel`) starts no
    new request either, but still writes the answers already on their way."""

    def __init__(
        self,
        plan: Plan,
        *,
        client_factory: Callable[[], Client],
        concurrency: int = 2,
        overwrite: bool = False,
        retries: int = 3,
        backoff: float = 0.5,
        max_retry_after: float = 30.0,
    ) -> None:
        if not 1 <= concurrency <= 64:
            raise ClientError("concurrency must be between 1 and 64")
        self.plan = plan
        self.client_factory = client_factory
        self.concurrency = concurrency
        self.overwrite = overwrite
        self.retries = retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.throttle = Throttle()
        self._write_lock = threading.Lock()
        self._stopped_because: str | None = None
        self._unreachable = False
        self._interrupted = False
        self._sessions: list[requests.Session] = []
        self._on_wait: Callable[[float, str], None] = lambda seconds, why: None

    def run(
        self,
        on_outcome: Callable[[Outcome], None] = lambda o: None,
        on_wait: Callable[[float, str], None] = lambda seconds, why: None,
    ) -> Report:
        """Run the plan; `on_outcome` hears of each file as it ends (in this thread),
        `on_wait` of each pause of WAIT_NOTICE_S or more (in a worker's thread)."""
        self._on_wait = on_wait
        started = time.monotonic()
        outcomes: dict[Job, Outcome] = {}
        todo: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        done: queue.SimpleQueue[tuple[Job, Outcome]] = queue.SimpleQueue()
        for job in self.plan.jobs:
            todo.put(job)
        workers = min(self.concurrency, len(self.plan.jobs))
        for _ in range(workers):
            todo.put(None)
        for _ in range(workers):
            client = self.client_factory()
            self._sessions.append(client.session)
            threading.Thread(target=self._work, args=(client, todo, done), daemon=True).start()
        interrupted = False
        try:
            for conflict in self.plan.conflicts:
                on_outcome(conflict)
            while len(outcomes) < len(self.plan.jobs):
                try:
                    job, outcome = done.get(timeout=0.2)
                except queue.Empty:
                    continue
                outcomes[job] = outcome
                on_outcome(outcome)
        except KeyboardInterrupt:
            interrupted = True
            self.interrupt()
        finished = [outcomes.get(job) or _cancelled(job) for job in self.plan.jobs]
        return Report(
            outcomes=[*self.plan.conflicts, *finished],
            skipped=list(self.plan.skipped),
            seconds=time.monotonic() - started,
            interrupted=interrupted,
            stopped_because=self._stopped_because,
            unreachable=self._unreachable,
        )

    def cancel(self, reason: str, *, unreachable: bool = False) -> None:
        """Start no more requests (a ban, an unreachable service); answers to requests already
        sent are still written."""
        if self._stopped_because is None:
            self._stopped_because = reason
            self._unreachable = unreachable
        self.throttle.cancel()

    def interrupt(self) -> None:
        """Ctrl-C: start no more requests and write nothing more; a write in progress finishes
        first, so no file is left half-written."""
        self._interrupted = True
        self.throttle.cancel()
        with self._write_lock:
            pass  # waits for a write in progress
        for session in self._sessions:
            session.close()

    def _work(
        self,
        client: Client,
        todo: queue.SimpleQueue[Job | None],
        done: queue.SimpleQueue[tuple[Job, Outcome]],
    ) -> None:
        while (job := todo.get()) is not None:
            try:
                outcome = _cancelled(job) if self.throttle.cancelled else self._one(client, job)
            except Exception as exc:  # a bug must not leave run() waiting forever: report it
                outcome = Outcome(
                    job.source, FAILED, code="client_error", message=f"{type(exc).__name__}: {exc}"
                )
            done.put((job, outcome))

    def _one(self, client: Client, job: Job) -> Outcome:
        if job.target.exists() and not self.overwrite:
            return Outcome(job.source, EXISTS, job.target)
        try:
            data = job.source.read_bytes()
        except OSError as exc:
            return Outcome(job.source, FAILED, code="unreadable", message=str(exc.strerror))
        try:
            sniff_image_type(data)
        except ClientError:
            return Outcome(
                job.source,
                FAILED,
                code="unsupported_media_type",
                message="not a JPEG, PNG or WebP image by its first bytes; not sent",
            )
        response = self._send(client, job, data)
        if isinstance(response, Outcome):
            return response
        return self._write(job, response)

    def _send(self, client: Client, job: Job, data: bytes) -> requests.Response | Outcome:
        attempt = 0
        while True:
            probe = self.throttle.acquire()
            if probe is None:
                return _cancelled(job)
            try:
                response = client.parse_response(data, self.plan.params, retries=0)
            except ServiceError as error:
                self.throttle.release(
                    probe,
                    answered=error.status not in RETRY_STATUSES,
                    remaining=remaining_of(error.headers),
                )
                wait = self._retry_wait(error, attempt)
                if wait is None:
                    return _failed(job, error)
                self._pause(wait, f"{error.status} {error.code}")
                # Waiting out the rate limit is how a batch keeps pace: it costs no retry.
                attempt += 0 if error.code == "rate_limited" else 1
                continue
            except ConnectionFailed as exc:
                self.throttle.release(probe, answered=False)
                if self.throttle.cancelled:
                    return _cancelled(job)
                failed = Outcome(job.source, FAILED, code="connection_failed", message=str(exc))
                # A certificate refused, or a service still unreachable after the retries, is
                # the same for every file: stop rather than try each. A read timeout is this
                # file's own.
                tls = isinstance(exc.__cause__, requests.exceptions.SSLError)
                if tls or attempt >= self.retries:
                    if isinstance(exc.__cause__, requests.exceptions.ConnectionError):
                        self.cancel(str(exc), unreachable=True)
                    return failed
                self._pause(self._backoff(attempt), "connection failed")
                attempt += 1
                continue
            except ClientError as exc:  # a redirect: the URL is wrong for every file
                self.throttle.release(probe, answered=False)
                self.cancel(str(exc), unreachable=True)
                return Outcome(job.source, FAILED, code="client_error", message=str(exc))
            self.throttle.release(probe, answered=True, remaining=remaining_of(response.headers))
            room = rate_limit_wait(response.headers)
            if room:
                self._pause(min(room, self.max_retry_after), "the rate limit is spent")
            return response

    def _pause(self, seconds: float, why: str) -> None:
        if self.throttle.pause(seconds) and seconds >= WAIT_NOTICE_S:
            self._on_wait(seconds, why)

    def _retry_wait(self, error: ServiceError, attempt: int) -> float | None:
        """Seconds to pause before trying again, or None to give up on this file (and, for a
        429 asking for more than `max_retry_after`, on the batch: a ban or a long limit)."""
        if error.status not in RETRY_STATUSES:
            return None
        if error.retry_after is not None and error.retry_after > self.max_retry_after:
            if error.status == 429:
                self.cancel(
                    f"the service asked to wait {error.retry_after:g} s ({error.code}),"
                    f" more than --max-wait {self.max_retry_after:g} s"
                )
            return None
        if error.code != "rate_limited" and attempt >= self.retries:
            return None
        return error.retry_after if error.retry_after is not None else self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        return self.backoff * (2**attempt) * random.uniform(0.5, 1.0)

    def _write(self, job: Job, response: requests.Response) -> Outcome:
        media = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        target = job.target
        if media in EXTENSIONS and target.suffix != "." + EXTENSIONS[media]:
            target = target.with_suffix("." + EXTENSIONS[media])
        with self._write_lock:
            if self._interrupted:
                return _cancelled(job)
            if target.exists() and not self.overwrite:
                return Outcome(job.source, EXISTS, target)
            try:
                _write_file(target, response.content, overwrite=self.overwrite)
            except FileExistsError:
                return Outcome(job.source, EXISTS, target)
            except OSError as exc:
                return Outcome(
                    job.source, FAILED, target, code="write_failed", message=str(exc.strerror)
                )
        return Outcome(job.source, WRITTEN, target, request_id=response.headers.get("X-Request-ID"))


def _write_file(target: Path, data: bytes, *, overwrite: bool) -> None:
    """Write beside the target, then link (or, with overwrite, rename) it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        part.write_bytes(data)
        if overwrite:
            os.replace(part, target)
            return
        try:
            os.link(part, target)  # FileExistsError rather than replacing
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            with open(target, "xb") as out:  # a filesystem without hard links
                out.write(data)
    finally:
        part.unlink(missing_ok=True)


def _failed(job: Job, error: ServiceError) -> Outcome:
    return Outcome(
        job.source,
        FAILED,
        status=error.status,
        code=error.code,
        message=error.message,
        request_id=error.request_id,
    )


def _cancelled(job: Job) -> Outcome:
    return Outcome(job.source, CANCELLED, code="cancelled", message="not finished")


__all__ = [
    "CANCELLED",
    "EXISTS",
    "FAILED",
    "WRITTEN",
    "BatchRunner",
    "Outcome",
    "Plan",
    "Report",
    "Throttle",
    "plan_batch",
    "rate_limit_wait",
]
