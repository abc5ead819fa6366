"""Admission before the expensive work, and waits bounded by time:
a parse the engine cannot finish within the latency target is refused with 503 `overloaded`
and a Retry-After from the engine's estimate before its upload is read or decoded; an admitted
one waits no longer than the engine's deadline; work whose client left is not computed."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest

from m2fp.engine import InferenceEngine
from tests.support import images
from tests.support.api import PARSE
from tests.support.model_factory import make_tiny_model
from web.service import (
    REQUEST_THREAD_NICE,
    client_alive,
    connection_open,
    yield_to_the_engine,
)


class Gate:
    """Holds a model's forward until released, counting the forwards that started."""

    def __init__(self, model) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.forwards = 0
        self._forward = model.forward
        model.forward = self

    def __call__(self, *args, **kwargs):
        self.forwards += 1
        self.entered.set()
        assert self.release.wait(30)
        return self._forward(*args, **kwargs)


def parse(app, data: bytes | None = None):
    return app.test_client().post(
        PARSE + "?output=json", data=data or images.png(), content_type="image/png"
    )


def decodes(app) -> float:
    """Uploads decoded so far (the decode stage's observations)."""
    registry = app.extensions["m2fp_service"].metrics.registry
    value = registry.get_sample_value("m2fp_stage_duration_seconds_count", {"stage": "decode"})
    return value or 0.0


def in_thread(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args)
    thread.start()
    return thread


def wait_for_depth(engine, depth: int) -> None:
    deadline = time.monotonic() + 10
    while engine.queue_depth < depth and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.queue_depth == depth


@pytest.fixture
def gated_app(make_app):
    """An app whose engine assumes 10 s per image and a 25 s target: with one image running
    and one queued, a third would be done in 30 s."""

    def factory(target: float = 25, **settings):
        engine = InferenceEngine(
            model=make_tiny_model(),
            device="cpu",
            warmup=False,
            batch_max=1,
            batch_wait_ms=0,
            queue_max=settings.pop("queue_max", 8),
            latency_target_s=target,
            service_time_s=10,
        )
        app = make_app(engine=engine, rate_limit="1000 per minute", **settings)
        return app, engine, Gate(engine.parser.model)

    return factory


def test_over_the_target_is_refused_before_the_upload_is_decoded(gated_app):
    app, engine, gate = gated_app(latency_target_seconds=25)
    statuses: list[int] = []
    first = in_thread(lambda: statuses.append(parse(app).status_code))
    assert gate.entered.wait(10)
    second = in_thread(lambda: statuses.append(parse(app).status_code))
    wait_for_depth(engine, 1)
    decoded = decodes(app)
    assert decoded == 2
    large = images.png(1600, 1200)
    started = time.perf_counter()
    r = parse(app, large)
    elapsed = time.perf_counter() - started
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "overloaded"
    # the engine's estimate: 30 s expected, 25 s target
    assert r.headers["Retry-After"] == "5"
    assert decodes(app) == decoded  # refused without decoding
    assert elapsed < 0.5
    gate.release.set()
    first.join(30)
    second.join(30)
    assert statuses == [200, 200]


def test_a_full_queue_is_refused_before_the_upload_is_decoded(gated_app):
    app, engine, gate = gated_app(target=1000, queue_max=1)
    first = in_thread(parse, app)
    assert gate.entered.wait(10)
    second = in_thread(parse, app)
    wait_for_depth(engine, 1)
    r = parse(app)
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "overloaded"
    assert int(r.headers["Retry-After"]) >= 1
    assert decodes(app) == 2
    gate.release.set()
    first.join(30)
    second.join(30)


def test_places_are_held_while_uploads_decode(gated_app):
    """Admitted requests hold their places from before decoding: concurrent uploads cannot all
    decode beyond the queue's room, and a refused or failed upload gives its place back."""
    app, engine, gate = gated_app(target=1000, queue_max=2)
    first = in_thread(parse, app)
    assert gate.entered.wait(10)
    with engine.admit(), engine.admit():  # two requests decoding: the queue's room is taken
        r = parse(app)
        assert r.status_code == 503 and decodes(app) == 1
    assert parse(app, b"not an image").status_code == 415  # admitted, then refused by checks
    with engine.admit(), engine.admit():  # so its place came back
        pass
    gate.release.set()
    first.join(30)


def test_an_admitted_parse_waits_no_longer_than_the_engines_deadline(make_app):
    app = make_app(
        model=make_tiny_model(),
        batch_max=1,
        batch_wait_ms=0,
        latency_target_seconds=1,
        rate_limit="1000 per minute",
    )
    gate = Gate(app.extensions["m2fp"].parser.model)
    answers: list = []
    started = time.perf_counter()
    first = in_thread(lambda: answers.append(parse(app)))
    assert gate.entered.wait(10)
    second = parse(app)  # queued behind the held forward
    assert second.status_code == 503 and second.get_json()["error"]["code"] == "overloaded"
    assert int(second.headers["Retry-After"]) >= 1
    assert time.perf_counter() - started < 5  # a 1.5 s deadline, not a proxy's timeout
    gate.release.set()
    first.join(30)
    assert gate.forwards == 1  # the queued image was dropped, not computed
    assert app.extensions["m2fp"].dropped["expired"] == 1


def test_the_deadline_follows_the_latency_target(make_app):
    app = make_app(latency_target_seconds=8)
    assert app.extensions["m2fp_service"].deadline_s == 12  # 1.5 times the target
    with app.extensions["m2fp"].admit() as place:
        assert 11 < place.remaining <= 12
    assert app.extensions["m2fp"].expected_wait == 0  # no warm-up, nothing measured yet


# -- a client that left -------------------------------------------------------------------------


def test_connection_open_tells_a_closed_peer_from_a_waiting_one():
    ours, theirs = socket.socketpair()
    with ours:
        assert connection_open(ours)
        theirs.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request: still there
        assert connection_open(ours) and connection_open(ours)
        assert ours.recv(64) == b"GET / HTTP/1.1\r\n"  # peeked, not consumed
        theirs.close()
        assert not connection_open(ours)


def test_connection_open_after_a_reset():
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
        with ours:
            assert connection_open(ours)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # RST
            time.sleep(0.05)
            assert not connection_open(ours)


def test_client_alive_asks_gunicorns_socket_only():
    assert client_alive({}) is None  # werkzeug, the test client: nothing to ask
    ours, theirs = socket.socketpair()
    with ours:
        alive = client_alive({"gunicorn.socket": ours})
        assert alive is not None and alive()
        theirs.close()
        assert not alive()


# -- the engine first ---------------------------------------------------------------------------


def nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def test_server_threads_yield_the_cpu_to_the_engine():
    ours = nice_of(threading.get_native_id())
    seen: dict[str, int] = {}

    def serve(environ: dict) -> None:
        tid = threading.get_native_id()
        yield_to_the_engine(environ)
        yield_to_the_engine(environ)  # once per thread, not once per request
        seen[str(environ.get("wsgi.multithread"))] = nice_of(tid)

    for environ in ({"wsgi.multithread": True}, {"wsgi.multithread": False}):
        thread = threading.Thread(target=serve, args=(environ,))
        thread.start()
        thread.join(10)
    assert seen == {"True": min(19, ours + REQUEST_THREAD_NICE), "False": ours}
    assert nice_of(threading.get_native_id()) == ours  # the caller's own thread: untouched


def test_the_test_clients_thread_keeps_its_priority(app):
    before = nice_of(threading.get_native_id())
    parse(app)
    assert nice_of(threading.get_native_id()) == before
