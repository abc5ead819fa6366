"""The inference engine: device, precision, warm-up, and a bounded micro-batching queue.

`InferenceEngine` is built in the web server's master process and started in each worker: the
constructor only stores settings (no model, no CUDA), `start()` resolves the device (the first
CUDA touch), loads the model, prepares it for inference, warms it up and starts the batch thread.
The model only ever runs in that thread, or in `predict` under the same lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

import numpy as np
import torch

from m2fp.build import load_model
from m2fp.modeling.m2fp import M2FP
from m2fp.optimize import optimize_for_inference
from m2fp.parser import Parser, ParsingResult, PreparedImage

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WARMUP_HW = (480, 640)  # a 4:3 photo: the pipeline resizes it to 640x853, the common case


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


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available else CPU; 'cpu', 'cuda', 'cuda:N' checked against what
    this machine has. This is where CUDA is first touched.

    Raises:
        RuntimeError: CUDA asked for but not available, or no such GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available here")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise RuntimeError(f"device {device!r} requested but only {count} GPU(s) are visible")
    return resolved


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """'auto' → fp16 on CUDA, fp32 on CPU; 'fp32', 'fp16', 'bf16' checked for the device.

    Raises:
        ValueError: fp16 on the CPU (slow and unsupported by several CPU kernels), or bf16 on
            a GPU without bf16 support.
    """
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype = PRECISIONS[precision]
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("precision 'fp16' is not supported on the CPU: use 'fp32' or 'bf16'")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bf16' is not supported by {device}: use 'fp16' or 'fp32'")
    return dtype


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
        batch_max: most images per forward; None: `default_batch_max` of the device (4 on
            CUDA, 1 on the CPU), resolved in `start()`.
        batch_wait_ms, queue_max: how long a lone image waits for company; most images
            waiting (beyond it `parse` raises `QueueFull`).
        warmup: run one image through before `ready` turns true.
        on_batch: called after each batch with (batch size, seconds), e.g. for metrics.
        parser_options: extra keyword arguments for `Parser` (e.g. short_edge, memory_budget).
        optimize: serve `prepare_model_for_inference`'s optimized copy (default) rather than
            the reference model.
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
        warmup: bool = True,
        on_batch: Callable[[int, float], None] | None = None,
        parser_options: dict | None = None,
        optimize: bool = True,
    ) -> None:
        if (model_dir is None) == (model is None):
            raise ValueError("give exactly one of model_dir and model")
        if weights is not None and model is not None:
            raise ValueError("weights= is only used with model_dir")
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        if device != "auto":
            try:
                parsed = torch.device(device)  # syntax only: does not touch CUDA
            except RuntimeError as exc:
                raise ValueError(f"invalid device {device!r}: {exc}") from exc
            if parsed.type not in ("cpu", "cuda"):
                raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
            if parsed.type == "cpu" and precision == "fp16":
                raise ValueError("precision 'fp16' is not supported on the CPU: use fp32 or bf16")
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
        )
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None

    @property
    def ready(self) -> bool:
        """True once loaded, warmed up and batching; False again after `close()`."""
        return self._ready.is_set()

    @property
    def queue_depth(self) -> int:
        return self._batcher.depth

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
            device = resolve_device(self._device_spec)
            dtype = resolve_dtype(self._precision, device)
            model = self._load()
            model = prepare_model_for_inference(model, device, dtype, optimize=self._optimize)
            if self._batch_max is None:
                self._batcher.max_batch = default_batch_max(device)
            parser = Parser(model, **self._parser_options)
            if self._warmup:
                parser.parse(np.full((*WARMUP_HW, 3), 127, dtype=np.uint8))
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

    def parse(
        self,
        image: np.ndarray,
        *,
        timeout: float | None = None,
        timings: dict[str, float] | None = None,
    ) -> ParsingResult:
        """Parse one (H, W, 3) uint8 RGB image through the micro-batcher.

        The resize runs in the calling thread; the forward in the batch thread, alongside
        other callers' images. `timings`, if given, receives seconds spent on "prepare" (the
        resize), "queue" (waiting for the batch thread) and "batch" (the forward and
        post-processing of the batch this image ran in).

        Raises:
            EngineNotReady: not started, or closed.
            QueueFull: too many requests waiting.
            TimeoutError: no result within `timeout` seconds.
            TypeError, ValueError: not an (H, W, 3) uint8 array.
        """
        if not self.ready:
            raise EngineNotReady("the model is not loaded yet")
        started = time.perf_counter()
        prepared = self.parser.prepare(image)
        if timings is not None:
            timings["prepare"] = time.perf_counter() - started
        return self._batcher.submit(prepared, timeout=timeout, timings=timings)

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
