"""`GET /api/v1/queue`: a snapshot of the engine's queue for the pages' progress card. The real
engine and the tiny model; the model's forward waits at a gate the test opens, so images are
seen waiting and running for as long as the test looks."""

from __future__ import annotations

import copy
import threading
import time

import pytest

from m2fp.engine import InferenceEngine
from tests.support import images

QUEUE = "/api/v1/queue"
PARSE = "/api/v1/parse?output=json"


@pytest.fixture
def gated(tiny_model):
    """An engine whose model waits at `engine.gate` before each forward."""
    model = copy.deepcopy(tiny_model)
    gate = threading.Event()
    model.register_forward_pre_hook(lambda module, args: gate.wait(30) and None)
    # optimize=False: the hook is on the model the engine runs, not on an optimized copy
    engine = InferenceEngine(model=model, device="cpu", warmup=False, optimize=False)
    engine.gate = gate
    yield engine
    gate.set()


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_idle_engine_before_any_parse(client):
    r = client.get(QUEUE)
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert r.get_json() == {
        "ready": True,
        "in_flight": 0,
        "queued": 0,
        "running": 0,
        "capacity": 1,  # the CPU's default batch size
        "service_seconds": None,
        "expected_wait_seconds": None,
    }
    assert r.headers["Cache-Control"] == "no-store"


def test_waiting_and_running_images_then_the_measured_service_time(make_app, gated):
    app = make_app(engine=gated, rate_limit="1000 per minute")
    answers: list[int] = []

    def send():
        answers.append(
            app.test_client()
            .post(PARSE, data=images.png(64, 48), content_type="image/png")
            .status_code
        )

    senders = [threading.Thread(target=send) for _ in range(3)]
    for sender in senders:
        sender.start()
    client = app.test_client()
    wait_for(lambda: gated.stats().queued == 2 and gated.stats().running == 1)
    busy = client.get(QUEUE).get_json()
    assert busy == {
        "ready": True,
        "in_flight": 3,  # the three parses, each waiting for its answer
        "queued": 2,
        "running": 1,
        "capacity": 1,
        "service_seconds": None,  # nothing has finished yet: no estimate rather than a guess
        "expected_wait_seconds": None,
    }

    gated.gate.set()
    for sender in senders:
        sender.join(30)
    assert answers == [200, 200, 200]
    idle = client.get(QUEUE).get_json()
    assert idle["in_flight"] == 0 and idle["queued"] == 0 and idle["running"] == 0
    assert idle["service_seconds"] > 0
    # an image sent now waits for nothing but its own forward
    assert idle["expected_wait_seconds"] == pytest.approx(idle["service_seconds"], abs=0.002)


def test_expected_wait_counts_the_images_ahead(make_app, gated):
    app = make_app(engine=gated, rate_limit="1000 per minute")
    gated.gate.set()
    client = app.test_client()
    assert client.post(PARSE, data=images.png(64, 48), content_type="image/png").status_code == 200
    gated.gate.clear()
    senders = [
        threading.Thread(
            target=lambda: app.test_client().post(
                PARSE, data=images.png(64, 48), content_type="image/png"
            )
        )
        for _ in range(2)
    ]
    for sender in senders:
        sender.start()
    wait_for(lambda: gated.stats().queued == 1 and gated.stats().running == 1)
    body = client.get(QUEUE).get_json()
    # one running, one waiting, and the newcomer's own forward
    assert body["expected_wait_seconds"] == pytest.approx(3 * body["service_seconds"], abs=0.003)
    gated.gate.set()
    for sender in senders:
        sender.join(30)


def test_not_rate_limited_and_no_per_request_data(make_app):
    app = make_app(rate_limit="2 per minute")
    client = app.test_client()
    for _ in range(6):
        r = client.get(QUEUE)
        assert r.status_code == 200
        assert not any(h.lower().startswith("x-ratelimit") for h, _ in r.headers.items())
    assert set(r.get_json()) == {
        "ready",
        "in_flight",
        "queued",
        "running",
        "capacity",
        "service_seconds",
        "expected_wait_seconds",
    }


def test_refused_and_failed_parses_leave_no_count_behind(make_app):
    app = make_app(rate_limit="3 per minute")
    client = app.test_client()
    bodies = [images.png(64, 48), b"not an image", images.png(64, 48), images.png(64, 48)]
    statuses = [
        client.post(PARSE, data=body, content_type="image/png").status_code for body in bodies
    ]
    assert statuses == [200, 415, 200, 429]  # parsed, refused by the checks, by the limit
    assert client.get(QUEUE).get_json()["in_flight"] == 0


def test_not_ready_while_the_model_loads(make_app, tiny_model):
    engine = InferenceEngine(model=tiny_model, device="cpu", warmup=False)
    go = threading.Event()
    real_start = engine.start

    def slow_start():
        go.wait(30)
        real_start()

    engine.start = slow_start
    app = make_app(engine=engine, wait=False)
    try:
        body = app.test_client().get(QUEUE).get_json()
        assert body["ready"] is False and body["queued"] == 0 and body["running"] == 0
    finally:
        go.set()
