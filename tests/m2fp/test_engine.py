"""The inference engine, with a tiny model: batching of concurrent parses, warm-up, errors,
device and precision, and no CUDA before `start()`."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from m2fp.engine import ClientGone, EngineNotReady, InferenceEngine, QueueFull, TooSlow
from m2fp.parser import Parser
from tests.support.model_factory import make_tiny_model
from tests.support.paths import REPO

NATIVE = {"short_edge": None}  # images at their own size: small, fast forwards


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    sizes = [(60, 80), (50, 70), (90, 90), (64, 64), (100, 60), (61, 83)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


BATCH_SIZES: list[int] = []


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    eng = InferenceEngine(
        model=make_tiny_model(0),
        device="cpu",
        batch_max=4,
        batch_wait_ms=300,
        on_batch=lambda n, seconds: BATCH_SIZES.append(n),
        parser_options=NATIVE,
    )
    eng.start()
    yield eng
    eng.close()


def test_engine_defaults_to_cpu_fp32_here(engine: InferenceEngine) -> None:
    assert engine.ready
    assert engine.device == torch.device("cpu") and engine.dtype == torch.float32
    assert engine.queue_depth == 0
    engine.start()  # idempotent


def test_concurrent_parses_equal_single_parses(engine: InferenceEngine) -> None:
    images = _images()
    reference = Parser(make_tiny_model(0), short_edge=None)
    singles = [reference.parse(image) for image in images]
    results: list = [None] * len(images)

    def call(i: int) -> None:
        results[i] = engine.parse(images[i], timeout=60)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(BATCH_SIZES) == len(images) and max(BATCH_SIZES) > 1  # they were batched
    for single, result in zip(singles, results, strict=True):
        assert result is not None and result.semantic.shape == single.semantic.shape
        assert np.mean(result.semantic != single.semantic) < 1e-3
        assert [i.category_id for i in result.instances] == [
            i.category_id for i in single.instances
        ]
        for a, b in zip(result.instances, single.instances, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)
    direct = engine.predict(images[:2])
    assert [r.semantic.shape for r in direct] == [im.shape[:2] for im in images[:2]]


def test_engine_rejects_bad_images_in_the_calling_thread(engine: InferenceEngine) -> None:
    with pytest.raises(ValueError, match="uint8"):
        engine.parse(np.zeros((10, 10, 3), np.float32))
    assert engine.ready


def test_ready_only_after_warm_up() -> None:
    model = make_tiny_model(0)
    seen: list[tuple[bool, tuple[int, ...]]] = []
    eng = InferenceEngine(model=model, device="cpu", parser_options=NATIVE)
    model.register_forward_pre_hook(lambda m, args: seen.append((eng.ready, args[0].shape)))
    with pytest.raises(EngineNotReady):
        eng.parse(_images()[0])
    assert not eng.ready and eng.device is None
    eng.start()
    assert seen and not any(ready for ready, _ in seen)  # the warm-up ran before ready
    assert eng.ready
    eng.close()
    assert not eng.ready
    with pytest.raises(EngineNotReady):
        eng.parse(_images()[0])
    with pytest.raises(EngineNotReady):
        eng.start()


def test_no_warm_up_when_disabled() -> None:
    model = make_tiny_model(0)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    eng = InferenceEngine(model=model, device="cpu", warmup=False, parser_options=NATIVE)
    eng.start()
    assert eng.ready and calls == []
    eng.close()


def test_engine_queue_full_and_on_batch() -> None:
    model = make_tiny_model(0)
    gate, entered = threading.Event(), threading.Event()
    batches: list[int] = []

    def hold(m: torch.nn.Module, args: tuple) -> None:
        entered.set()
        assert gate.wait(30)

    eng = InferenceEngine(
        model=model,
        device="cpu",
        warmup=False,
        batch_max=1,
        batch_wait_ms=0,
        queue_max=1,
        on_batch=lambda n, s: batches.append(n),
        parser_options=NATIVE,
    )
    eng.start()
    eng.parser.model.register_forward_pre_hook(hold)  # the served (optimized) copy
    image = _images()[3]
    results: list = []
    first = threading.Thread(target=lambda: results.append(eng.parse(image, timeout=60)))
    first.start()
    assert entered.wait(30)  # the batch thread is inside the forward
    second = threading.Thread(target=lambda: results.append(eng.parse(image, timeout=60)))
    second.start()
    deadline = time.monotonic() + 10
    while eng.queue_depth < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert eng.queue_depth == 1
    with pytest.raises(QueueFull):
        eng.parse(image)
    gate.set()
    first.join(60)
    second.join(60)
    assert len(results) == 2 and batches == [1, 1]
    eng.close()


def test_warm_up_is_the_service_time_until_batches_are_measured() -> None:
    eng = InferenceEngine(model=make_tiny_model(0), device="cpu", parser_options=NATIVE)
    assert eng.service_time == 0.0  # nothing known before start
    eng.start()
    warm = eng.service_time
    assert warm > 0 and eng.expected_wait == pytest.approx(warm)
    eng.parse(_images()[0], timeout=60)  # a small image: measured, it replaces the warm-up
    assert 0 < eng.service_time != warm
    eng.close()


def test_admission_by_expected_wait_and_the_dropped_images() -> None:
    model = make_tiny_model(0)
    gate, entered = threading.Event(), threading.Event()
    forwards: list[int] = []

    def hold(m: torch.nn.Module, args: tuple) -> None:
        forwards.append(1)
        entered.set()
        assert gate.wait(30)

    eng = InferenceEngine(
        model=model,
        device="cpu",
        warmup=False,
        batch_max=1,
        batch_wait_ms=0,
        queue_max=8,
        latency_target_s=25,
        service_time_s=10,
        parser_options=NATIVE,
    )
    with pytest.raises(EngineNotReady):
        eng.admit()
    eng.start()
    eng.parser.model.register_forward_pre_hook(hold)
    image = _images()[3]
    results: list = []
    first = threading.Thread(
        target=lambda: results.append(eng.parse(image, reservation=eng.admit()))
    )
    first.start()
    assert entered.wait(30)
    gone: list[BaseException] = []
    connected = threading.Event()
    connected.set()

    def leaves() -> None:
        try:
            eng.parse(image, reservation=eng.admit(), alive=connected.is_set)
        except ClientGone as exc:
            gone.append(exc)

    second = threading.Thread(target=leaves)
    second.start()
    deadline = time.monotonic() + 10
    while eng.queue_depth < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert eng.expected_wait == 30  # 10 s per image: running, queued, its own
    with pytest.raises(TooSlow) as refused:
        eng.admit()
    assert refused.value.retry_after == 5
    connected.clear()
    second.join(10)
    assert len(gone) == 1 and eng.dropped == {"expired": 0, "gone": 1}
    gate.set()
    first.join(60)
    assert len(results) == 1 and forwards == [1]  # the second image never ran
    eng.close()


def test_engine_model_errors_reach_the_caller_and_the_engine_carries_on() -> None:
    model = make_tiny_model(0)
    fail = threading.Event()

    def maybe_fail(m: torch.nn.Module, args: tuple) -> None:
        if fail.is_set():
            raise RuntimeError("out of memory (simulated in the forward)")

    model.register_forward_pre_hook(maybe_fail)
    eng = InferenceEngine(model=model, device="cpu", warmup=False, parser_options=NATIVE)
    eng.start()
    image = _images()[3]
    fail.set()
    with pytest.raises(RuntimeError, match="out of memory"):
        eng.parse(image, timeout=60)
    with pytest.raises(RuntimeError, match="out of memory"):
        eng.predict([image])
    fail.clear()
    assert eng.ready and eng.parse(image, timeout=60).semantic.shape == image.shape[:2]
    eng.close()


def test_engine_loads_a_directory_with_a_weights_callable(tiny_model_dir: Path) -> None:
    opened: list[io.BytesIO] = []

    def weights() -> io.BytesIO:
        opened.append(io.BytesIO((tiny_model_dir / "pytorch_model.pt").read_bytes()))
        return opened[-1]

    # optimize=False serves the loaded model itself, so its weights can be compared exactly
    eng = InferenceEngine(
        tiny_model_dir, weights=weights, device="cpu", warmup=False, optimize=False
    )
    assert opened == []  # nothing loaded before start
    eng.start()
    assert len(opened) == 1 and opened[0].closed
    expected = make_tiny_model(0).state_dict()
    for key, value in eng.parser.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    eng.close()


def test_bf16_on_cpu_is_allowed() -> None:
    eng = InferenceEngine(
        model=make_tiny_model(0), device="cpu", precision="bf16", parser_options=NATIVE
    )
    eng.start()
    assert eng.dtype == torch.bfloat16
    assert eng.parser.model.autocast_dtype == torch.bfloat16  # fp32 weights under autocast
    image = _images()[0]
    result = eng.parse(image, timeout=60)
    assert result.semantic.shape == image.shape[:2] and result.semantic.dtype == np.uint8
    eng.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "cpu", "precision": "fp16"}, "fp16"),
        ({"precision": "fp8"}, "precision"),
        ({"device": "tpu"}, "device"),
        ({"device": "nonsense:x"}, "device"),
        ({"batch_max": 0}, "max_batch"),
    ],
)
def test_invalid_settings_fail_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InferenceEngine(model=make_tiny_model(0), **kwargs)


def test_model_source_must_be_exactly_one(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        InferenceEngine()
    with pytest.raises(ValueError, match="exactly one"):
        InferenceEngine(tiny_model_dir, model=make_tiny_model(0))


def test_unusable_device_fails_at_start() -> None:
    eng = InferenceEngine(model=make_tiny_model(0), device="cuda:99", warmup=False)
    with pytest.raises(RuntimeError, match="cuda:99"):
        eng.start()
    assert not eng.ready


def test_fp16_needs_a_gpu() -> None:
    eng = InferenceEngine(model=make_tiny_model(0), precision="fp16", warmup=False)
    if torch.cuda.is_available():
        eng.start()  # device "auto" picked the GPU
        assert eng.dtype == torch.float16 and eng.device.type == "cuda"
        eng.close()
    else:
        with pytest.raises(ValueError, match="fp16"):
            eng.start()
        assert not eng.ready


CUDA_SPY = """
import sys
import torch
calls = []
for name in ("is_available", "device_count", "init", "_lazy_init", "current_device",
             "is_bf16_supported"):
    real = getattr(torch.cuda, name)
    def spy(*a, _name=name, _real=real, **k):
        calls.append(_name)
        return _real(*a, **k)
    setattr(torch.cuda, name, spy)
import m2fp
from m2fp import InferenceEngine, Parser, CLASS_NAMES
from tests.support.model_factory import make_tiny_model
engine = InferenceEngine(model=make_tiny_model(0), batch_max=2, warmup=False,
                         parser_options={"short_edge": None})
print("before", calls, engine.ready, engine.device)
engine.start()
print("after", sorted(set(calls)), engine.device)
engine.close()
"""


def test_construction_and_import_do_not_touch_cuda() -> None:
    """Building the engine checks its settings but leaves CUDA to start(), which runs in the
    process that serves."""
    out = subprocess.run(
        [sys.executable, "-c", CUDA_SPY], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.strip().splitlines()[-2:]
    assert before == "before [] False None"
    assert "is_available" in after  # device "auto" is resolved in start()


def test_engine_serves_the_optimized_copy_with_the_reference_results() -> None:
    model = make_tiny_model(0)
    eng = InferenceEngine(model=model, device="cpu", warmup=False, parser_options=NATIVE)
    eng.start()
    served = eng.parser.model
    assert served is not model and served.channels_last and served.autocast_dtype is None
    assert eng._batcher.max_batch == 1  # batch_max=None on the CPU
    image = _images()[0]
    got = eng.parse(image, timeout=60)
    want = Parser(model, **NATIVE).parse(image)
    assert [i.category_id for i in got.instances] == [i.category_id for i in want.instances]
    np.testing.assert_allclose(
        [i.score for i in got.instances], [i.score for i in want.instances], atol=1e-5, rtol=0
    )
    # masks may differ only where a logit sits within rounding of 0: none on this image
    assert all(
        np.array_equal(a.mask, b.mask) for a, b in zip(got.instances, want.instances, strict=True)
    )
    np.testing.assert_array_equal(got.semantic, want.semantic)
    eng.close()
