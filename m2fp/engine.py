"""The inference engine: device, precision, warm-up, and the micro-batcher in front of the model.

The constructor only checks and stores settings (no model, no CUDA); `start()` resolves the
device (the first CUDA touch), loads the model, prepares it for inference, warms it up and
starts the batch thread. The service builds the engine in each gunicorn worker and starts it in
a background thread (web/runtime.py). The model only ever runs in the batch thread, or in
`predict` under the same lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from m2fp import device as device_rules
from m2fp.batching import (
    ClientGone,
    DeadlineExpired,
    EngineNotReady,
    MicroBatcher,
    QueueFull,
    QueueStats,
    Reservation,
    TooSlow,
)
from m2fp.build import load_model
from m2fp.modeling.m2fp import M2FP
from m2fp.optimize import optimize_for_inference
from m2fp.parser import Parser, ParsingResult, PreparedImage

log = logging.getLogger(__name__)

WARMUP_HW = (480, 640)  # a 4:3 photo: the pipeline resizes it to 640x853, the common case


def default_batch_max(device: torch.device) -> int:
    """Batch size for `batch_max=None`: 4 on CUDA, 1 on the CPU, where a batch of two gives no
    more images/s than one at a time but a higher peak RSS (docs/performance.md)."""
    return 4 if device.type == "cuda" else 1


def prepare_model_for_inference(
    model: M2FP, device: torch.device, dtype: torch.dtype, *, optimize: bool = True
) -> M2FP:
    """The one step that readies a loaded model for serving.

    With `optimize` (the default) it returns `m2fp.optimize.optimize_for_inference`'s fast
    copy (folded BatchNorm, channels-last, gather-based deformable attention; fp16/bf16 under
    autocast), which gives the reference's outputs within float rounding in fp32. Without it,
    the reference model itself in eval mode, cast to `dtype`: the path the tests compare
    against, useful to rule the optimizations out when chasing a numerical question.
    """
    if optimize:
        return optimize_for_inference(model, device=device, dtype=dtype)
    model = model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


class InferenceEngine:
    """A served model: owns device, precision, warm-up and the micro-batcher.

    Args:
        model_dir: a ModelScope-style model directory, loaded in `start()`.
        model: an already built model instead of `model_dir` (tests, notebooks).
        weights: called in `start()` for a binary file object holding the checkpoint (e.g. an
            encrypted file decrypted into a BytesIO); closed after loading.
        device: 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.
        precision: 'auto' (fp16 on CUDA, fp32 on CPU), 'fp32', 'fp16' (CUDA only) or 'bf16'.
            Both are checked here and resolved in `start()` by `m2fp.device`.
        batch_max: most images per forward; None: `default_batch_max` of the device (4 on
            CUDA, 1 on the CPU), resolved in `start()`.
        batch_wait_ms, queue_max: how long a lone image waits for company; most images
            waiting or admitted (beyond it `admit` and `parse` raise `QueueFull`).
        latency_target_s: `admit` refuses (`TooSlow`) an image not expected to be done within
            it (the measured seconds per image times the images ahead, plus its own); None:
            admission by count only.
        deadline_s: the longest an admitted image waits for its result, from `admit`; None:
            the latency target.
        service_time_s: seconds per image assumed until the first batch is measured; None:
            the warm-up's time (without warm-up: no refusal by time before a measurement).
        warmup: run one image through before `ready` turns true.
        on_batch: called after each batch with (batch size, seconds), e.g. for metrics.
        parser_options: extra keyword arguments for `Parser` (e.g. short_edge, memory_budget).
        optimize: serve `prepare_model_for_inference`'s optimized copy (default) rather than
            the reference model.

    Raises:
        ValueError: malformed settings (`m2fp.device.DeviceError` for device and precision).
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        model: M2FP | None = None,
        weights: Callable[[], BinaryIO] | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_max: int | None = None,
        batch_wait_ms: float = 5.0,
        queue_max: int = 16,
        latency_target_s: float | None = None,
        deadline_s: float | None = None,
        service_time_s: float | None = None,
        warmup: bool = True,
        on_batch: Callable[[int, float], None] | None = None,
        parser_options: dict | None = None,
        optimize: bool = True,
    ) -> None:
        if (model_dir is None) == (model is None):
            raise ValueError("give exactly one of model_dir and model")
        if weights is not None and model is not None:
            raise ValueError("weights= is only used with model_dir")
        device_rules.check(device, precision)
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self._model = model
        self._weights = weights
        self._device_spec = device
        self._precision = precision
        self._warmup = warmup
        self._parser_options = dict(parser_options or {})
        self._batch_max = batch_max
        self._optimize = optimize
        self._parser: Parser | None = None
        self._lock = threading.Lock()  # held while the model runs
        self._start_lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = False
        self._batcher: MicroBatcher[PreparedImage, ParsingResult] = MicroBatcher(
            self._run_batch,
            max_batch=1 if batch_max is None else batch_max,  # set in start() when None
            max_wait_ms=batch_wait_ms,
            queue_max=queue_max,
            on_batch=on_batch,
            latency_target_s=latency_target_s,
            deadline_s=deadline_s,
            service_time_s=service_time_s or 0.0,
        )
        self._service_time_given = service_time_s is not None
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None

    @property
    def ready(self) -> bool:
        """True once loaded, warmed up and batching; False again after `close()`."""
        return self._ready.is_set()

    @property
    def queue_depth(self) -> int:
        return self._batcher.depth

    def stats(self) -> QueueStats:
        """The queue now: images waiting and running, the batch size, the measured seconds
        per image and the expected wait of an image queued now (cheap; no per-request data)."""
        return self._batcher.stats()

    @property
    def service_time(self) -> float:
        """Seconds per image: a moving average of recent batches (the warm-up before)."""
        return self._batcher.service_time

    @property
    def expected_wait(self) -> float:
        """Seconds until an image admitted now would be done."""
        return self._batcher.expected_wait()

    @property
    def dropped(self) -> dict[str, int]:
        """Images dropped before their forward: "expired" (deadline passed while queued) and
        "gone" (the caller gave up: its client left, or it timed out)."""
        return {"expired": self._batcher.dropped_expired, "gone": self._batcher.dropped_gone}

    @property
    def parser(self) -> Parser:
        """The started engine's parser (for `prepare`-like helpers; do not run it directly).

        Raises:
            EngineNotReady: not started.
        """
        if self._parser is None:
            raise EngineNotReady("the engine is not started")
        return self._parser

    def start(self) -> None:
        """Resolve device and precision, load, prepare, warm up, start batching. Idempotent;
        call it in the process that serves (after a fork).

        Raises:
            RuntimeError, ValueError: device or precision unusable here.
            m2fp.CheckpointError, m2fp.ModelDirError: the model cannot be loaded.
        """
        with self._start_lock:
            if self._closed:
                raise EngineNotReady("a closed engine cannot be started again")
            if self._parser is not None:
                return
            device, dtype = device_rules.resolve(self._device_spec, self._precision)
            model = self._load()
            model = prepare_model_for_inference(model, device, dtype, optimize=self._optimize)
            if self._batch_max is None:
                self._batcher.max_batch = default_batch_max(device)
            parser = Parser(model, **self._parser_options)
            if self._warmup:
                warm_started = time.perf_counter()
                parser.parse(np.full((*WARMUP_HW, 3), 127, dtype=np.uint8))
                # an overestimate (first-call costs): it errs on refusing, and the first
                # measured batches replace it
                if not self._service_time_given:
                    self._batcher.seed_service_time(time.perf_counter() - warm_started)
            self.device, self.dtype = device, dtype
            self._parser = parser
            self._batcher.start()
            self._ready.set()
            log.info("m2fp engine ready on %s (%s)", device, str(dtype).removeprefix("torch."))

    def _load(self) -> M2FP:
        if self._model is not None:
            return self._model
        if self._weights is None:
            return load_model(self.model_dir)
        fileobj = self._weights()
        try:
            return load_model(self.model_dir, weights=fileobj)
        finally:
            fileobj.close()

    def admit(self) -> Reservation:
        """A place in the queue for an image not decoded yet: take it before the expensive
        work, hand it to `parse(..., reservation=)`, or release it (it is a context manager).

        Raises:
            EngineNotReady: not started, or closed.
            QueueFull: `queue_max` images waiting or admitted (`retry_after` on it).
            TooSlow: (a `QueueFull`) the images ahead would not be done within the latency
                target (`retry_after`: until they would).
        """
        if not self.ready:
            raise EngineNotReady("the model is not loaded yet")
        return self._batcher.reserve()

    def parse(
        self,
        image: np.ndarray,
        *,
        timeout: float | None = None,
        timings: dict[str, float] | None = None,
        reservation: Reservation | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> ParsingResult:
        """Parse one (H, W, 3) uint8 RGB image through the micro-batcher.

        The resize runs in the calling thread; the forward in the batch thread, alongside
        other callers' images. `timings`, if given, receives seconds spent on "prepare" (the
        resize), "queue" (waiting for the batch thread) and "batch" (the forward and
        post-processing of the batch this image ran in). `reservation`: the place `admit`
        gave (its deadline bounds the wait too). `alive`: asked while waiting; False drops
        the image if it has not run yet.

        Raises:
            EngineNotReady: not started, or closed.
            QueueFull: too many requests waiting (without a reservation).
            DeadlineExpired: (a TimeoutError) no result within `timeout` seconds or by the
                reservation's deadline.
            ClientGone: `alive()` answered False.
            TypeError, ValueError: not an (H, W, 3) uint8 array.
        """
        if not self.ready:
            raise EngineNotReady("the model is not loaded yet")
        started = time.perf_counter()
        prepared = self.parser.prepare(image)
        if timings is not None:
            timings["prepare"] = time.perf_counter() - started
        return self._batcher.submit(
            prepared, timeout=timeout, timings=timings, reservation=reservation, alive=alive
        )

    def predict(self, images: Sequence[np.ndarray]) -> list[ParsingResult]:
        """Parse images directly (no queue), under the model lock."""
        if not self.ready:
            raise EngineNotReady("the model is not loaded yet")
        parser = self.parser
        prepared = [parser.prepare(image) for image in images]
        results: list[ParsingResult] = []
        for start in range(0, len(prepared), self._batcher.max_batch):
            results += self._run_batch(prepared[start : start + self._batcher.max_batch])
        return results

    def _run_batch(self, prepared: list[PreparedImage]) -> list[ParsingResult]:
        with self._lock:
            return self.parser.run(prepared)

    def close(self) -> None:
        """Stop batching (waiting callers get `EngineNotReady`) and drop the model. A closed
        engine stays closed."""
        with self._start_lock:
            self._closed = True
        self._ready.clear()
        self._batcher.close()
        with self._lock:
            self._parser = None
            self._model = None


__all__ = [
    "ClientGone",
    "DeadlineExpired",
    "EngineNotReady",
    "InferenceEngine",
    "QueueFull",
    "Reservation",
    "TooSlow",
    "prepare_model_for_inference",
]
