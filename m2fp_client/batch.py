"""Batch parsing: many files through `POST /api/v1/parse`, a bounded number at a time.

    plan = plan_batch(["photos/", "extra.jpg"], out_dir="parsed", params={"output": "json"})
    report = BatchRunner(plan, client_factory=lambda: Client(url), concurrency=2).run()

- Inputs: files named on the command line are sent whatever their extension; directories are
  walked (hidden entries and the output directory excluded) for .jpg, .jpeg, .png and .webp,
  everything else there is listed as skipped. `photos/trip/beach.jpg` → `parsed/trip/
  beach-overlay.png` (or `beach.json`, `beach-cutout.webp`): the relative path is kept, the
  name says which output it holds.
- An output that already exists is left alone (and not requested) unless `overwrite`; a file
  is written next to its final name and linked into place, so a half-written file never
  carries the final name.
- Pacing, shared by all workers (`Throttle`): a 429 or 503 with Retry-After, or a response
  saying `X-RateLimit-Remaining: 0`, pauses every worker; after a pause one request goes at a
  time until one is answered, and then no more than the limit's remaining count, so a crowd
  of workers does not wake into the same limit.
- Files the service would refuse as not an image (not JPEG, PNG or WebP by their first bytes)
  are refused here, unsent: refused uploads count towards the service's temporary ban.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests

from m2fp_client.client import (
    RETRY_STATUSES,
    Client,
    ClientError,
    ConnectionFailed,
    ServiceError,
    sniff_image_type,
)

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Output file extension from the response's media type; anything else keeps the predicted one.
EXTENSIONS = {
    "application/json": "json",
    "image/png": "png",
    "image/webp": "webp",
    "image/vnd.adobe.photoshop": "psd",
    "image/openraster": "ora",
}

WAIT_NOTICE_S = 2.0  # pauses at least this long are announced (on_wait)
MAX_CLOCK_SKEW_S = 2.0  # beyond this, the server's Date measures the wait for its rate limit

# Outcome states. Only FAILED makes the batch fail; EXISTS is the resume case.
WRITTEN, EXISTS, FAILED, CANCELLED = "written", "exists", "failed", "cancelled"


@dataclass(frozen=True)
class Job:
    """One input file and the output file it is expected to give."""

    source: Path
    target: Path


@dataclass
class Plan:
    """What a batch will do: the jobs, the files skipped in directories, and jobs refused
    before any request (two inputs that would write the same output)."""

    out_dir: Path
    params: dict[str, str]
    jobs: list[Job] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    conflicts: list[Outcome] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    """What became of one input. `code` and `message` are the API's (or, with `status` None,
    the client's own: `unsupported_media_type` checked here, `unreadable`, `connection_failed`,
    `client_error`, `output_conflict`, `write_failed`, `cancelled`)."""

    source: Path
    state: str
    target: Path | None = None
    status: int | None = None
    code: str | None = None
    message: str | None = None
    request_id: str | None = None

    def describe(self) -> str:
        if self.state == WRITTEN:
            return f"{self.source} → {self.target}"
        if self.state == EXISTS:
            return f"{self.source}: {self.target} exists (--overwrite replaces it)"
        where = f"{self.status} " if self.status is not None else ""
        text = f"{self.source}: {where}{self.code}: {self.message}"
        return text + (f" (request id {self.request_id})" if self.request_id else "")


@dataclass
class Report:
    """Every input's outcome (conflicts first, then in plan order), the files skipped in
    folders, and why the batch ended early, if it did."""

    outcomes: list[Outcome]
    skipped: list[Path]
    seconds: float
    interrupted: bool = False
    stopped_because: str | None = None
    unreachable: bool = False  # stopped because the service could not be reached

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(o.state in (WRITTEN, EXISTS) for o in self.outcomes)


# -- planning ----------------------------------------------------------------------------------


def output_extension(params: Mapping[str, str]) -> str:
    """The extension an output is expected to have: json, or the image `format` (png)."""
    if params.get("output") == "json":
        return "json"
    return params.get("format", "png")


def _check_names(params: Mapping[str, str]) -> None:
    """`output` and `format` become part of file names: plain names only."""
    for key in ("output", "format"):
        if key in params and not _NAME.fullmatch(params[key]):
            raise ClientError(f"{key} must be a plain name such as png or cutout: {params[key]!r}")


def plan_batch(
    inputs: Sequence[str | Path], *, out_dir: str | Path, params: Mapping[str, str]
) -> Plan:
    """Expand `inputs` (files and directories) into jobs writing under `out_dir`.

    Raises ClientError for an input that does not exist."""
    _check_names(params)
    out_dir = Path(out_dir)
    plan = Plan(out_dir=out_dir, params=dict(params))
    output = params.get("output", "overlay")
    # beach.jpg → beach.json, beach-overlay.png, beach-cutout.webp, …
    suffix = ".json" if output == "json" else f"-{output}.{output_extension(params)}"
    exclude = out_dir.resolve()
    pairs: list[tuple[Path, Path]] = []  # (source, path relative to out_dir without suffix)
    for raw in inputs:
        path = Path(raw)
        if path.is_dir() and path.resolve() == exclude:
            raise ClientError(f"--out {out_dir} is an input folder: its results would be inputs")
        if path.is_dir():
            for source in _walk(path, exclude):
                if source.suffix.lower() in IMAGE_SUFFIXES:
                    pairs.append((source, source.relative_to(path).with_suffix("")))
                else:
                    plan.skipped.append(source)
        elif path.exists():
            pairs.append((path, Path(path.stem)))
        else:
            raise ClientError(f"{path} does not exist")
    by_target: dict[Path, list[Path]] = {}
    seen: set[Path] = set()
    for source, stem in pairs:
        if source.resolve() in seen:  # named twice (itself and its folder): once is enough
            continue
        seen.add(source.resolve())
        target = out_dir / stem.parent / (stem.name + suffix)
        by_target.setdefault(target, []).append(source)
    for target, sources in by_target.items():
        if len(sources) == 1:
            plan.jobs.append(Job(sources[0], target))
            continue
        for source in sources:
            others = ", ".join(str(s) for s in sources if s != source)
            plan.conflicts.append(
                Outcome(
                    source,
                    FAILED,
                    target,
                    code="output_conflict",
                    message=f"{others} would write the same {target}; rename one",
                )
            )
    return plan


def _walk(root: Path, exclude: Path) -> Iterable[Path]:
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (here / d).resolve() != exclude
        )
        for name in sorted(files):
            if not name.startswith("."):
                yield here / name


# -- pacing ------------------------------------------------------------------------------------


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


# -- running -----------------------------------------------------------------------------------


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
