"""/metrics: access control and what the counters say after real requests."""

from __future__ import annotations

import socket
import time

from flask import Response, request
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import EnvironBuilder

from tests.support import images
from tests.support.api import PARSE
from tests.support.engines import SlowStart
from tests.support.model_factory import make_tiny_model


class ServedClient(FlaskClient):
    """Reads each response to its end and closes it, as a WSGI server does: requests are
    counted when their answer has gone out (the plain test client leaves unread bodies open)."""

    def open(self, *args, **kwargs):
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def served(app) -> ServedClient:
    app.test_client_class = ServedClient
    return app.test_client()


def samples(client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    out = {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(data, name, **labels) -> float:
    return data.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_only_from_allowed_networks(make_app):
    app = make_app(metrics_allow=("10.0.0.0/8",))
    client = app.test_client()
    r = client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 403
    assert r.get_json()["error"]["code"] == "forbidden"
    r = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert r.status_code == 200
    assert r.mimetype == "text/plain"


def test_default_allow_is_loopback_and_proxy_headers_count(make_app):
    client = make_app().test_client()
    assert client.get("/metrics").status_code == 200  # 127.0.0.1
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code == 403
    # Behind nginx the client's own address decides, not nginx's.
    proxied = make_app(trusted_proxies=1).test_client()
    r = proxied.get("/metrics", headers={"X-Forwarded-For": "192.0.2.1"})
    assert r.status_code == 403
    assert proxied.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200
    # A forwarded request while no proxy is trusted: the origin is unknown, refused.
    r = client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert r.status_code == 403


def test_counters_after_requests(app):
    client = served(app)
    for _ in range(3):
        assert client.post(PARSE, data=images.png(), content_type="image/png").status_code == 200
    assert client.post(PARSE, data=images.TEXT, content_type="image/png").status_code == 415
    client.get("/nope/1")
    client.get("/nope/2")
    deadline = time.monotonic() + 5
    # The engine reports a batch just after handing out its results: give the hook a moment.
    while value(data := samples(client), "m2fp_batch_size_sum") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (
        value(data, "m2fp_http_requests_total", route="/api/v1/parse", method="POST", status="200")
        == 3
    )
    assert (
        value(data, "m2fp_http_requests_total", route="/api/v1/parse", method="POST", status="415")
        == 1
    )
    # Unknown paths share one label: no label per path a client makes up.
    assert (
        value(data, "m2fp_http_requests_total", route="<unmatched>", method="GET", status="404")
        == 2
    )
    assert value(data, "m2fp_rejections_total", reason="unsupported_media_type") == 1
    assert value(data, "m2fp_rejections_total", reason="not_found") == 2
    assert value(data, "m2fp_stage_duration_seconds_count", stage="decode") == 4
    assert value(data, "m2fp_stage_duration_seconds_count", stage="render") == 3
    for stage in ("resize", "queue", "inference"):
        assert value(data, "m2fp_stage_duration_seconds_count", stage=stage) == 3
    # each image waited for the batch thread and ran in a batch that took real time
    assert value(data, "m2fp_stage_duration_seconds_sum", stage="inference") > 0
    assert value(data, "m2fp_batch_duration_seconds_count") >= 1
    assert value(data, "m2fp_batch_size_count") >= 1
    assert value(data, "m2fp_batch_size_sum") == 3  # every image went through a batch
    assert value(data, "m2fp_http_request_duration_seconds_count", route="/api/v1/parse") == 4
    again = samples(client)  # the scrape itself is counted once it is answered
    assert (
        value(again, "m2fp_http_requests_total", route="/metrics", method="GET", status="200") >= 1
    )
    assert value(data, "m2fp_model_ready") == 1
    assert ("m2fp_queue_depth", ()) in data
    assert 0 < value(data, "m2fp_memory_usage_ratio") < 1
    assert value(data, "process_resident_memory_bytes") > 10e6


def test_a_500_from_a_response_hook_is_counted(make_app):
    """A hook that fails after the view (as flask-limiter's header injection does when its
    storage goes away) turns the answer into a 500 that Flask's after_request hooks never
    see; the count is taken around the WSGI app, so it is there."""
    app = make_app(rate_limit="100 per minute")

    @app.after_request
    def _fails(response):
        if request.path == "/healthz":
            raise RuntimeError("storage went away")
        return response

    client = served(app)
    assert client.get("/healthz").status_code == 500
    data = samples(client)
    assert (
        value(data, "m2fp_http_requests_total", route="/healthz", method="GET", status="500") == 1
    )
    assert value(data, "m2fp_http_request_duration_seconds_count", route="/healthz") == 1


def test_probe_failures_are_not_parse_rejections(make_app):
    """/readyz answering 503 while the model loads is not a refused parse."""
    engine = SlowStart(model=make_tiny_model(), warmup=False)
    app = make_app(engine=engine, wait=False)
    client = served(app)
    for _ in range(3):
        assert client.get("/readyz").status_code == 503
    assert client.post(PARSE, data=images.png(), content_type="image/png").status_code == 503
    engine.go.set()
    data = samples(client)
    assert value(data, "m2fp_http_requests_total", route="/readyz", method="GET", status="503") == 3
    assert value(data, "m2fp_rejections_total", reason="not_ready") == 1  # the parse only


def _gone_client() -> tuple[socket.socket, socket.socket]:
    """A connected pair whose client end has closed: what the server's socket looks like
    when the client left before its answer."""
    server, client = socket.socketpair()
    client.close()
    return server, client


def test_a_client_that_left_is_counted_as_such(app):
    """Under gunicorn the connection is in the WSGI environ: a client whose end is closed
    when the answer is ready never gets it, and is counted `client_closed`, not 200."""
    client = served(app)
    server_end, _ = _gone_client()
    present_end, present_peer = socket.socketpair()
    try:
        r = client.post(
            PARSE,
            data=images.png(),
            content_type="image/png",
            environ_overrides={"gunicorn.socket": server_end},
        )
        # Computed if its forward began before the departure was seen (200), dropped from the
        # queue otherwise (503, web/service.py's client_alive): nobody is there to read either.
        assert r.status_code in (200, 503)
        r = client.post(
            PARSE,
            data=images.png(),
            content_type="image/png",
            environ_overrides={"gunicorn.socket": present_end},
        )
        assert r.status_code == 200
    finally:
        for s in (server_end, present_end, present_peer):
            s.close()
    data = samples(client)
    route = {"route": PARSE, "method": "POST"}
    assert value(data, "m2fp_http_requests_total", status="client_closed", **route) == 1
    assert value(data, "m2fp_http_requests_total", status="200", **route) == 1


def test_a_response_cut_short_is_counted_client_closed(app):
    """The server stopped writing before the last chunk (the client's connection broke
    mid-body, the server closes the body early): client_closed."""

    @app.get("/test-stream")
    def _stream():
        return Response(iter([b"first ", b"second ", b"last"]), mimetype="text/plain")

    def start_response(status, headers, exc_info=None):
        pass

    body = app.wsgi_app(EnvironBuilder(path="/test-stream").get_environ(), start_response)
    assert next(iter(body)) == b"first "  # written; the next write fails, the server closes
    body.close()
    whole = served(app).get("/test-stream")
    assert whole.get_data() == b"first second last"
    data = samples(served(app))
    route = {"route": "/test-stream", "method": "GET"}
    assert value(data, "m2fp_http_requests_total", status="client_closed", **route) == 1
    assert value(data, "m2fp_http_requests_total", status="200", **route) == 1


def test_worker_starts_and_bans_are_counted(make_app):
    """One start per app (a gunicorn worker), and a ban counted once when it is given, apart
    from the requests it then refuses (the alerts tell the two apart)."""
    client = served(make_app(rate_limit="1000 per minute", ban_after=2))
    for _ in range(2):
        assert client.post(PARSE, data=images.TEXT, content_type="image/png").status_code == 415
    for _ in range(3):
        assert client.post(PARSE, data=images.png(), content_type="image/png").status_code == 429
    data = samples(client)
    assert value(data, "m2fp_worker_starts_total") == 1
    assert value(data, "m2fp_bans_total") == 1
    assert value(data, "m2fp_rejections_total", reason="unsupported_media_type") == 2
    assert value(data, "m2fp_rejections_total", reason="temporarily_banned") == 3
