"""What a parse needs besides HTTP: admission (readiness, memory), upload validation with ban
strikes, inference through the engine's queue. One instance per app, in
`app.extensions["m2fp_service"]`; the engine itself is `app.extensions["m2fp"]`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from m2fp.engine import EngineNotReady, QueueFull
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
from web.inputs import Upload
from web.metrics import ServiceMetrics
from web.overload import MemoryGuard
from web.runtime import ModelRuntime

# Seconds a client is asked to wait: the queue drains in about a batch time; a model that is
# loading needs longer.
RETRY_OVERLOADED = 2
RETRY_NOT_READY = 10
# Longest wait for a result (queue + inference). On CPU the full model takes seconds per image;
# beyond this the request gives up with 503 rather than holding its thread forever.
ENGINE_TIMEOUT_S = 120.0
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

    def admit(self) -> None:
        """Raises NotReady / Overloaded before any body is read."""
        if not self.runtime.ready:
            raise NotReady(retry_after=RETRY_NOT_READY)
        if self.memory.shedding:
            raise Overloaded(
                "The server is low on memory; try again shortly.", retry_after=RETRY_OVERLOADED
            )

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
            if identity is not None:
                self.bans.strike(identity.subject)
            raise
        finally:
            self.metrics.stage.labels("decode").observe(time.perf_counter() - started)

    def infer(self, pixels: Any) -> tuple[Any, float]:
        """The engine's result for `pixels` and the seconds it waited in the engine's queue;
        a full queue or a slow one is 503 `overloaded`."""
        timings: dict[str, float] = {}
        try:
            result = self.engine.parse(pixels, timeout=ENGINE_TIMEOUT_S, timings=timings)
        except QueueFull:
            raise Overloaded(retry_after=RETRY_OVERLOADED) from None
        except EngineNotReady:
            raise NotReady(retry_after=RETRY_NOT_READY) from None
        except TimeoutError:
            raise Overloaded(retry_after=RETRY_OVERLOADED) from None
        finally:
            # the engine fills in what it got through: resize, queue wait, the batch's run
            for stage, key in (("resize", "prepare"), ("queue", "queue"), ("inference", "batch")):
                if key in timings:
                    self.metrics.stage.labels(stage).observe(timings[key])
        return result, timings.get("queue", 0.0)


__all__ = ["DECODE_WAIT_S", "ENGINE_TIMEOUT_S", "ParseService"]
