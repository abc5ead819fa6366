"""/healthz, /readyz and the 503s: model loading, model failures, a full queue, memory
shedding, and unexpected errors (500 with the request id only)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from m2fp.engine import InferenceEngine
from tests.support import images
from tests.support.model_factory import make_tiny_model
from web.overload import MemoryReading, default_probe

PARSE = "/api/v1/parse"


def parse(client):
    return client.post(PARSE + "?output=json", data=images.png(), content_type="image/png")


class SlowStart(InferenceEngine):
    """The real engine, whose start waits for the test to let it go."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.go = threading.Event()

    def start(self):
        self.go.wait(30)
        super().start()


def test_not_ready_until_the_model_is_loaded(make_app):
    engine = SlowStart(model=make_tiny_model(), warmup=False)
    app = make_app(engine=engine, wait=False)
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    for r in (client.get("/readyz"), parse(client)):
        assert r.status_code == 503
        assert r.get_json()["error"]["code"] == "not_ready"
        assert int(r.headers["Retry-After"]) > 0
    engine.go.set()
    assert app.extensions["m2fp_service"].runtime.wait(30)
    assert client.get("/readyz").get_json() == {"status": "ready"}
    assert parse(client).status_code == 200


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"model_dir": "missing-model-dir"}, "missing-model-dir"),
        ({"weights_sha256": "0" * 64}, "ModelIntegrityError"),
    ],
    ids=["missing-dir", "wrong-pinned-hash"],
)
def test_model_failure_is_503_with_the_reason_in_the_operator_log(
    make_app, tiny_model_dir, tmp_path, caplog, capfd, overrides, reason
):
    if overrides.get("model_dir"):
        overrides = {"model_dir": tmp_path / overrides["model_dir"]}
    else:
        overrides = {"model_dir": tiny_model_dir, **overrides}
    with caplog.at_level(logging.INFO, logger="m2fp"):
        app = make_app(**overrides)
    client = app.test_client()
    assert app.extensions["m2fp_service"].runtime.state == "failed"
    assert client.get("/healthz").status_code == 200
    ready, parsed = client.get("/readyz"), parse(client)
    for r in (ready, parsed):
        assert r.status_code == 503
        assert r.get_json()["error"]["code"] == "not_ready"
        text = r.get_data(as_text=True)
        assert reason not in text and str(tmp_path) not in text and "sha256" not in text
    _, err = capfd.readouterr()
    assert reason in err
    assert "model failed to load" in err


class BlockingForward:
    """Makes a model's forward wait until released (and say when it started)."""

    def __init__(self, model):
        self.entered = threading.Event()
        self.release = threading.Event()
        self._forward = model.forward
        model.forward = self

    def __call__(self, *args, **kwargs):
        self.entered.set()
        self.release.wait(30)
        return self._forward(*args, **kwargs)


def test_full_queue_is_503_overloaded(make_app):
    app = make_app(
        model=make_tiny_model(),
        batch_max=1,
        queue_max=1,
        batch_wait_ms=0,
        rate_limit="100 per minute",
    )
    engine = app.extensions["m2fp"]
    gate = BlockingForward(engine.parser.model)  # the copy the engine serves
    results: dict[str, int] = {}

    def send(name):
        results[name] = parse(app.test_client()).status_code

    first = threading.Thread(target=send, args=("first",))
    first.start()
    assert gate.entered.wait(10)  # the batch thread is busy with the first image
    second = threading.Thread(target=send, args=("second",))
    second.start()
    deadline = time.monotonic() + 10
    while engine.queue_depth < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.queue_depth == 1  # the second waits in the queue
    r = parse(app.test_client())
    assert r.status_code == 503
    assert r.get_json()["error"]["code"] == "overloaded"
    assert int(r.headers["Retry-After"]) >= 1
    gate.release.set()
    first.join(30)
    second.join(30)
    assert results == {"first": 200, "second": 200}


def test_memory_shedding(make_app):
    app = make_app(memory_limit_mb=1, rate_limit="100 per minute")
    client = app.test_client()
    for r in (client.get("/readyz"), parse(client)):
        assert r.status_code == 503
        assert r.get_json()["error"]["code"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
    assert client.get("/healthz").status_code == 200
    # Usage drops (here: the limit grows): parses are accepted again.
    memory = app.extensions["m2fp_service"].memory
    memory.probe = default_probe(1 << 50)
    memory.refresh()
    assert client.get("/readyz").status_code == 200
    assert parse(client).status_code == 200


def test_memory_guard_threshold():
    from web.overload import MemoryGuard

    reading = MemoryReading(used=90, limit=100)
    guard = MemoryGuard(0.9, probe=lambda: reading)
    assert not guard.shedding  # at the threshold, not above
    guard = MemoryGuard(0.89, probe=lambda: reading)
    assert guard.shedding


def test_unexpected_error_is_500_with_only_the_request_id(make_app, capfd):
    model = make_tiny_model()
    secret = "SECRET-LOCAL-VALUE"

    def broken(images, **kwargs):
        local_with_secret = secret  # a local variable that must not reach any log
        raise RuntimeError("boom in forward " + str(len(local_with_secret)))

    model.forward = broken
    client = make_app(model=model).test_client()
    capfd.readouterr()
    r = parse(client)
    assert r.status_code == 500
    assert r.get_json() == {
        "error": {
            "code": "internal_error",
            "message": "The server could not complete the request.",
            "request_id": r.headers["X-Request-ID"],
        }
    }
    out, err = capfd.readouterr()
    assert "Traceback" in err and "boom in forward" in err
    assert r.headers["X-Request-ID"] in err
    assert secret not in out + err
    assert "boom" not in r.get_data(as_text=True)
