"""web/runtime.py: /readyz and parses answer 503 while the model loads or after it failed to
load (the reason in the operator log), and 503 `overloaded` when the queue is full. Memory
shedding is test_overload.py, the instance's readiness test_ops.py, the unexpected 500
test_errors.py."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from tests.support.api import parse
from tests.support.engines import SlowStart
from tests.support.model_factory import make_tiny_model


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
