"""The model in the worker: built in `create_app`, loaded and warmed up in a background thread.

gunicorn forks workers from a master that must never touch CUDA, so nothing here runs at import
time: `create_app` (in the worker) builds an `InferenceEngine` (cheap, no device work) and
starts a thread that calls `engine.start()` (device, weights, warm-up). Until it finishes,
/readyz and parses answer 503 `not_ready`.

Under gunicorn the master has already checked the model directory, the key, the encrypted
file and the pin before any worker started (gunicorn.conf.py: a failure there stops gunicorn).
What can still fail here: a checkpoint that does not fit its configuration, the device, or
files changed after the master's check (a worker respawned later). Then the worker stays up:
/healthz and /metrics keep working, /readyz and parses answer 503 `not_ready`, and the reason,
with its path, goes to the operator log (stderr) once. Clients never see it. A supervisor or
load balancer watching /readyz keeps traffic away; fix the model and restart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from settings import Settings

log = logging.getLogger("m2fp.model")

LOADING, READY, FAILED = "loading", "ready", "failed"


def build_engine(
    settings: Settings,
    *,
    model: Any = None,
    on_batch: Callable[[int, float], None] | None = None,
) -> Any:
    """The service's `InferenceEngine`: weights from M2FP_MODEL_DIR through
    `security.model_crypto.open_weights` (pinned hash, encrypted `.enc`), or `model` as is."""
    from m2fp.engine import InferenceEngine

    common: dict[str, Any] = {
        "device": settings.device,
        "precision": settings.precision,
        "batch_max": settings.batch_max,
        "batch_wait_ms": settings.batch_wait_ms,
        "queue_max": settings.queue_max,
        "latency_target_s": settings.latency_target_seconds,
        "deadline_s": settings.time_limits.engine_deadline_s,
        "warmup": settings.warmup,
        "on_batch": on_batch,
    }
    if model is not None:
        return InferenceEngine(model=model, **common)
    from security.model_crypto import open_weights

    model_dir = settings.model_dir

    def weights() -> Any:
        return open_weights(
            model_dir,
            key_file=settings.weights_key_file,
            key_text=settings.weights_key,
            expected_sha256=settings.weights_sha256,
        )

    return InferenceEngine(model_dir, weights=weights, **common)


class ModelRuntime:
    """Owns the engine's start in a background thread and reports its state."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._state = LOADING
        self._pid = os.getpid()
        self._fork_reported = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> str:
        """loading | ready | failed. A process forked after `create_app` (gunicorn
        --preload) has neither the loading thread nor the engine's batch thread: failed."""
        if os.getpid() != self._pid:
            if not self._fork_reported:
                self._fork_reported = True
                log.error(
                    "this process was forked after the app was created (gunicorn --preload?):"
                    " the model must load in each worker; run gunicorn without --preload"
                )
            return FAILED
        return self._state

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._load, name="m2fp-model-load", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            self.engine.start()
        except Exception as exc:
            # Any failure to load is reported, never swallowed: the operator log says why, the
            # state makes /readyz and parses answer 503.
            self._state = FAILED
            log.error(
                "model failed to load, the service is not ready: %s: %s",
                type(exc).__name__,
                exc,
                exc_info=not _expected(exc),
            )
        else:
            self._state = READY
            log.info(
                "model ready in %.1f s (device %s, %s)",
                time.perf_counter() - started,
                getattr(self.engine, "device", "?"),
                getattr(self.engine, "dtype", "?"),
            )
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading has finished (either way); False on timeout."""
        return self._done.wait(timeout)

    @property
    def ready(self) -> bool:
        return self.state == READY and bool(self.engine.ready)


def _expected(exc: Exception) -> bool:
    """Configuration problems whose message says everything (no traceback needed)."""
    from m2fp.checkpoint import CheckpointError, ModelDirError
    from security.model_crypto import ModelProtectionError

    known = (CheckpointError, ModelDirError, ModelProtectionError, OSError)
    return isinstance(exc, known)


__all__ = ["FAILED", "LOADING", "READY", "ModelRuntime", "build_engine"]
