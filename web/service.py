"""What a parse needs besides HTTP: admission (readiness, memory, a place in the engine's queue
within the latency target), upload validation with ban strikes, inference through the engine's
queue. One instance per app, in `app.extensions["m2fp_service"]`; the engine itself is
`app.extensions["m2fp"]`."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from m2fp.batching import ClientGone, EngineNotReady, QueueFull, Reservation
from security.abuse import BanList, Identity
from security.decode_budget import DecodeBudget, budget_for
from security.errors import (
    NotReady,
    Overloaded,
    PayloadTooLarge,
    UnprocessableImage,
    UnsupportedMediaType,
)
from security.uploads import DecodedImage, UploadPolicy, load_upload
from settings import Settings
from web.inputs import Upload
from web.metrics import ServiceMetrics
from web.overload import MemoryGuard
from web.runtime import ModelRuntime

log = logging.getLogger("m2fp.service")

# Request threads run at this nice value above the engine's batch thread (Linux nice is per
# thread): under a storm of refusals, decoding and refusing never take the CPU the forward
# needs. CFS weights: nice 0 = 1024, nice 10 = 110, so each busy request thread gets about a
# tenth of what the batch thread gets.
REQUEST_THREAD_NICE = 10
_niced = threading.local()

# Seconds a client is asked to wait where the engine gives no estimate (memory shedding, a
# result past its deadline); a model that is loading needs longer.
RETRY_OVERLOADED = 2
RETRY_NOT_READY = 10
# Longest wait for a result (queue + inference) with the default latency target: the engine's
# deadline, shorter than nginx's read timeout (`http_contract.time_limits`).
ENGINE_TIMEOUT_S = Settings().time_limits.engine_deadline_s
# Longest wait for a decode slot (security.decode_budget); then 503 with Retry-After. A decode
# at the pixel cap takes one to a few seconds on a busy CPU (docs/performance.md).
DECODE_WAIT_S = 10.0


@dataclass
class ParseService:
    runtime: ModelRuntime
    policy: UploadPolicy
    memory: MemoryGuard
    metrics: ServiceMetrics
    bans: BanList
    deadline_s: float = ENGINE_TIMEOUT_S  # M2FP_LATENCY_TARGET_SECONDS's engine deadline
    # None: M2FP_DECODE_SLOTS and M2FP_DECODE_MEMORY_MB (auto: the CPUs, a quarter of the limit
    # memory shedding watches)
    decode_budget: DecodeBudget | None = field(default=None)

    def __post_init__(self) -> None:
        if self.decode_budget is None:
            self.decode_budget = budget_for(
                slots=self.policy.decode_slots,
                memory_bytes=self.policy.decode_memory,
                memory_limit=self.memory.reading().limit,
            )

    @property
    def engine(self) -> Any:
        return self.runtime.engine

    def admit(self) -> Reservation:
        """A place in the engine's queue, taken before any body is read or decoded; hand it to
        `infer`, or leave its `with` block to give it back.

        Raises:
            NotReady: the model is not loaded.
            Overloaded: memory is short, the queue is full, or the work ahead would not be
                done within the latency target (Retry-After: the engine's estimate).
        """
        if not self.runtime.ready:
            raise NotReady(retry_after=RETRY_NOT_READY)
        if self.memory.shedding:
            raise Overloaded(
                "The server is low on memory; try again shortly.", retry_after=RETRY_OVERLOADED
            )
        try:
            return self.engine.admit()
        except QueueFull as exc:
            raise Overloaded(retry_after=exc.retry_after) from None
        except EngineNotReady:
            raise NotReady(retry_after=RETRY_NOT_READY) from None

    def decode(
        self, upload: Upload, identity: Identity | None, *, full_size: bool = False
    ) -> DecodedImage:
        """`security.uploads.load_upload`; each rejection counts towards a ban of `identity`
        (None: a request the abuse gate did not identify, which earns no strike). `full_size`
        keeps the photo's own size (no working-copy downscale; the pixel cap still holds)."""
        started = time.perf_counter()
        # no side of an image within the pixel cap is longer than the cap itself
        policy = replace(self.policy, max_side=self.policy.max_pixels) if full_size else self.policy
        try:
            return load_upload(
                upload.data,
                declared_type=upload.declared_type,
                filename=upload.filename,
                policy=policy,
                budget=self.decode_budget,
                wait_s=DECODE_WAIT_S,
            )
        except (UnsupportedMediaType, UnprocessableImage, PayloadTooLarge):
            # The byte cap was checked before; a 413 from here is the pixel cap or an image
            # whose decode would need more than the whole decode budget. Waiting too long for
            # a slot (503) is not the client's fault.
            if identity is not None and self.bans.strike(identity.subject):
                self.metrics.bans.inc()
            raise
        finally:
            self.metrics.stage.labels("decode").observe(time.perf_counter() - started)

    def infer(
        self,
        pixels: Any,
        reservation: Reservation | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> tuple[Any, float]:
        """The engine's result for `pixels` and the seconds it waited in the engine's queue,
        in the place `reservation` holds (from `admit`). A full queue, a result past the
        deadline, or a client that left (`alive()` False: the image is dropped unless it is
        already running) is 503 `overloaded`."""
        timings: dict[str, float] = {}
        try:
            result = self.engine.parse(
                pixels,
                timeout=self.deadline_s,
                timings=timings,
                reservation=reservation,
                alive=alive,
            )
        except QueueFull as exc:
            raise Overloaded(retry_after=exc.retry_after) from None
        except EngineNotReady:
            raise NotReady(retry_after=RETRY_NOT_READY) from None
        except TimeoutError:
            raise Overloaded(retry_after=RETRY_OVERLOADED) from None
        except ClientGone:
            raise Overloaded(
                "The client closed the connection; the image was not parsed.",
                retry_after=RETRY_OVERLOADED,
            ) from None
        finally:
            # the engine fills in what it got through: resize, queue wait, the batch's run
            for stage, key in (("resize", "prepare"), ("queue", "queue"), ("inference", "batch")):
                if key in timings:
                    self.metrics.stage.labels(stage).observe(timings[key])
        return result, timings.get("queue", 0.0)


def yield_to_the_engine(environ: Mapping[str, Any]) -> None:
    """Lower the CPU priority of the server thread serving this request below the engine's,
    once per thread. Only a multithreaded server's own threads (`wsgi.multithread`: gunicorn's
    gthread pool), never a caller's thread (the test client). Where the system has no
    per-thread nice nothing changes, said once in the log."""
    if not environ.get("wsgi.multithread") or getattr(_niced, "done", False):
        return
    _niced.done = True
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + REQUEST_THREAD_NICE))
    except (AttributeError, OSError) as exc:
        if not getattr(yield_to_the_engine, "reported", False):
            yield_to_the_engine.reported = True  # type: ignore[attr-defined]
            log.warning("request threads keep the engine's CPU priority: %s", exc)


def client_alive(environ: Mapping[str, Any]) -> Callable[[], bool] | None:
    """Whether the client of this request is still connected, asked while it waits: gunicorn
    puts the connection in `environ["gunicorn.socket"]`; None where there is no plain socket
    to ask (werkzeug's servers, the test client, TLS terminated by gunicorn itself)."""
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return None
    return lambda: connection_open(sock)


def connection_open(sock: socket.socket) -> bool:
    """False once the peer has closed `sock` (end of stream or reset). The request's body has
    been read, so what is readable is either the peer's close or a pipelined request (peeked,
    not consumed: still open). Never blocks."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:  # nothing to read: still connected
        return True
    except (OSError, ValueError):  # reset, or closed on our side
        return False


__all__ = [
    "ENGINE_TIMEOUT_S",
    "REQUEST_THREAD_NICE",
    "ParseService",
    "client_alive",
    "connection_open",
    "yield_to_the_engine",
]
